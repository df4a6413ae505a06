"""A raw PyTorch-profiler (Kineto) trace of our own layer on this GPU, the input of the trace
benchmark (bench/trace_bench.py repeats it to 1 GB): eager layers (CPU ops, runtime calls,
flow events, kernels on two streams) followed by graph replays (one cudaGraphLaunch, many kernels).

    python bench/kineto_trace.py OUT.json.gz [--scenario a_v4_moe_dual] [--batch 4]
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from layer_graph import LayerGraph


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--scenario", default="a_v4_moe_dual")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--eager", type=int, default=4, help="eager passes of the layers")
    ap.add_argument("--replays", type=int, default=20, help="graph replays")
    args = ap.parse_args()
    lg = LayerGraph.build(args.scenario, args.batch)
    graph = lg.capture()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(args.eager):
            lg.run()
        for _ in range(args.replays):
            graph.replay()
        torch.cuda.synchronize()
    fd, raw = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        prof.export_chrome_trace(raw)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with open(raw, "rb") as src, gzip.open(args.out, "wb") as dst:
            shutil.copyfileobj(src, dst)
        print(f"{args.out}: {os.path.getsize(raw) / 1e6:.1f} MB uncompressed")
    finally:
        os.unlink(raw)


if __name__ == "__main__":
    main()
