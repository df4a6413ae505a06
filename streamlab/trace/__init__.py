"""Traces: Timelines to and from Chrome trace / Perfetto JSON."""

from streamlab.trace.chrome import from_chrome, read_chrome, to_chrome, write_chrome

__all__ = ["from_chrome", "read_chrome", "to_chrome", "write_chrome"]
