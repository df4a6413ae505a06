"""Traces: Timelines to and from Chrome trace / Perfetto JSON, and the readers of profiler traces
(Kineto, rocprofv3 JSON / CSV / rocpd, Perfetto, Nsight Systems) into the same Timeline.

Levels: `load_trace` (any format, told from the content) -> `summary.summarize_trace` (the
numbers of the steady layers) -> `explain.summarize_traces` (with what the dependency graph
says: results.TraceSummary, what `streamlab trace summary` prints)."""

from streamlab.trace.chrome import from_chrome, read_chrome, to_chrome, write_chrome
from streamlab.trace.formats import FORMATS, load_trace

__all__ = ["FORMATS", "from_chrome", "load_trace", "read_chrome", "to_chrome", "write_chrome"]
