"""Rendering, and nothing else: results (streamlab.results) as rich tables, matplotlib plots and
Markdown.

- `result`: one run (`print_result`);
- `compare`: layouts side by side (`layer_table`, `node_table`, `markdown`, `export` writes the
  report folder);
- `allreduce`: multi-rank runs, all-reduce sweeps, and a folder's summary of them;
- `plots`: per-stream timelines, latency bars, slowdowns, the waterfall of a difference;
- `schedule_view`: a schedule's lanes, overlaps, HIP streams and critical path (`streamlab graph`).
"""

__all__ = ["allreduce", "compare", "plots", "result", "schedule_view"]
