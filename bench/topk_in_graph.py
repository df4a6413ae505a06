"""idx_topk inside the serial layer's graph with 8, 16 and 32 warps: exact against the reference,
its kernel time in the graph, and the layer's latency. Why 16 warps (the instruction fetch of
the unrolled kernel, not its work, sets its time in the graph):
bench/results/h100-2026-11-21/topk_and_warmup.txt.

    python bench/topk_in_graph.py 4,64,1
"""

import functools
import statistics
import sys

import torch

from layer_graph import LayerGraph
from streamlab.exec.measure import time_graph
from streamlab.exec.profile import device_events
from streamlab.kernels import Bound
from streamlab.kernels import reference as ref
from streamlab.kernels.triton import indexer as ix


def _topk(*, logits, block_table, seq_lens, out, warps):
    ix._topk_launch(logits, block_table, seq_lens, out, num_warps=warps)


def main(batches: list[int]) -> None:
    dev = torch.device("cuda")
    for batch in batches:
        lg = LayerGraph.build("serial", batch)
        t = lg.buffers.tensors(0)
        args = dict(logits=t["idx_logits"], block_table=t["block_table"], seq_lens=t["seq_lens"])
        topk = lg.bound["idx_topk"]
        for warps in (8, 16, 32):
            lg.bound["idx_topk"] = Bound(topk.node, "triton", functools.partial(_topk, warps=warps))
            graph = lg.capture()
            want, got = torch.empty_like(t["topk_slots"]), torch.empty_like(t["topk_slots"])
            ref.topk_slots(**args, out=want)
            _topk(**args, out=got, warps=warps)
            exact = torch.equal(got.sort(1).values, want.sort(1).values)
            layer = statistics.median(time_graph(graph, 4, 20, 50, 5).repeat_medians)
            events = device_events(lambda: [graph.replay() for _ in range(5)], dev)
            in_graph = statistics.median(e.end - e.start for e in events if "topk_slots" in e.name)
            print(f"b{batch} warps {warps}: exact {exact}; layer {layer:.1f} us; "
                  f"topk in-graph {in_graph:.1f} us", flush=True)


if __name__ == "__main__":
    main([int(b) for b in sys.argv[1].split(",")])
