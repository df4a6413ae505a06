"""All-reduce implementations captured inside the layer graph."""
