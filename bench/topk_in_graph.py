"""idx_topk inside the serial layer's graph, path by path: one program a row (16 warps, and 8 or
32), and rows cut into chunks (the default, and its tunings). For each: exact against the
reference, the top-k kernels' time in the graph (summed over their launches), and the layer's
latency. Why 16 warps for one program (the instruction fetch of the unrolled kernel, not its
work, sets its time in the graph) and why chunks: bench/results/h100-2026-11-21/
topk_and_warmup.txt and the results beside it.

    python bench/topk_in_graph.py 4,64,1
"""

import functools
import statistics
import sys

import torch

from layer_graph import LayerGraph
from streamlab.exec.measure import time_graph
from streamlab.exec.profiler import device_events
from streamlab.kernels import Bound
from streamlab.kernels import reference as ref
from streamlab.kernels.triton import topk

PATHS = {
    "one program, 16 warps": dict(chunk=0),
    "one program, 8 warps": dict(chunk=0, num_warps=8),
    "chunks of 1024 (default)": {},
    "chunks of 1024, pairwise ranks": dict(pick_rounds=False),
    "chunks of 1024, 512 bins": dict(chunk_bins=512),
    "chunks of 1024, 8 warps": dict(chunk_warps=8),
    "chunks of 512": dict(chunk=512),
    "chunks of 2048": dict(chunk=2048),
}
KERNELS = ("_topk_slots_kernel", "_chunk_bounds_kernel", "_chunk_hist_kernel",
           "_chunk_select_kernel")


def _topk(*, logits, block_table, seq_lens, out, tuning):
    topk._topk_launch(logits, block_table, seq_lens, out, **tuning)


def main(batches: list[int]) -> None:
    dev = torch.device("cuda")
    for batch in batches:
        lg = LayerGraph.build("serial", batch)
        t = lg.buffers.tensors(0)
        args = dict(logits=t["idx_logits"], block_table=t["block_table"], seq_lens=t["seq_lens"])
        node = lg.bound["idx_topk"].node
        for name, tuning in PATHS.items():
            fn = functools.partial(_topk, tuning=tuning)
            lg.bound["idx_topk"] = Bound(node, "triton", fn)
            graph = lg.capture()
            want, got = torch.empty_like(t["topk_slots"]), torch.empty_like(t["topk_slots"])
            ref.topk_slots(**args, out=want)
            fn(**args, out=got)
            exact = torch.equal(got.sort(1).values, want.sort(1).values)
            timing = time_graph(graph, lg.scen.measure, per_replay=lg.buffers.layers)
            layer = statistics.median(timing.repeat_medians)
            replays = 5
            events = device_events(lambda: [graph.replay() for _ in range(replays)], dev)
            ours = sum(e.end - e.start for e in events if any(k in e.name for k in KERNELS))
            print(f"b{batch} {name}: exact {exact}; layer {layer:.1f} us; "
                  f"topk kernels in-graph {ours / (replays * lg.buffers.layers):.1f} us per layer",
                  flush=True)


if __name__ == "__main__":
    main([int(b) for b in sys.argv[1].split(",")])
