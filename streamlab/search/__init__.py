"""Search the layout space of a decode layer for the fastest stream layout."""
