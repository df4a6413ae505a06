"""Traces: Timelines to and from Chrome trace / Perfetto JSON."""

from streamlab.trace.chrome import from_chrome, read_chrome, to_chrome, write_chrome
from streamlab.trace.kineto import load_trace

__all__ = ["from_chrome", "load_trace", "read_chrome", "to_chrome", "write_chrome"]
