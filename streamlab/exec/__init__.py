"""The executor: a layer on a GPU (or its outputs on the CPU), returning raw measurements that
streamlab.runs turns into results.

- `target`: device, backend and one-process all-reduce for a run; the versions it records;
- `buffers`, `eager`: every tensor allocated once; a schedule dispatched on real streams;
- `verify`: a layout's outputs against the serial layout's, bitwise;
- `measure`: the one replay-timing harness, at three levels: `replay_block` -> `time_graph` /
  `time_graphs` (warm-up and interleaved blocks under a `scenario.Measure` protocol) ->
  `measure` (a scenario's layer: timing, profiled Timeline, nodes alone, ceilings);
- `profiler`, `attribute`: the torch profiler's device activity, each kernel attributed to its node.

Kept free of imports here: each module pulls in only what it needs (torch, triton).
"""

__all__ = ["attribute", "buffers", "eager", "measure", "profiler", "target", "verify"]
