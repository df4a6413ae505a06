"""`python -m streamlab` is the `streamlab` command (for machines where it is not installed)."""

from streamlab.cli import app

app(prog_name="streamlab")
