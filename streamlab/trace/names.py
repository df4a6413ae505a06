"""What runtime-API names say, the same for every trace format: which API calls launch a
captured graph, and which capture one (HIP, CUDA runtime, CUDA driver and PyTorch spellings,
with or without Nsight Systems' `_v10000` version suffix). Which kernels are all-reduces is
analysis.is_allreduce_kernel's to say."""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["CAPTURE", "GRAPH_LAUNCH", "KERNEL_LAUNCH", "MARKS", "capture_calls",
           "graph_launch_names"]

GRAPH_LAUNCH = re.compile(r"graphlaunch", re.IGNORECASE)  # hipGraphLaunch, cudaGraphLaunch, ...
# the calls of a graph capture: begin / end capture on a stream, instantiating the graph
CAPTURE = re.compile(r"^(hip|cuda|cu)(Stream)?(BeginCapture|EndCapture)|^(hip|cuda|cu)GraphInstantiate",
                     re.IGNORECASE)
# names of CPU-side events (annotations, Python functions) that mark a graph capture or a
# warm-up, counted where they occur in a trace: what each means
MARKS = {b"CUDAGraphNode.record": "capture",  # torch.compile's CUDA-graph trees recording
         b"_dummy_run": "warm-up", b"warmup": "warm-up", b"warm_up": "warm-up"}
# kernel launch calls (not graph launches): what a capture records instead of running kernels
KERNEL_LAUNCH = re.compile(r"Launch(Cooperative)?Kernel|ModuleLaunchKernel|^cuLaunchKernel",
                           re.IGNORECASE)


def graph_launch_names(names: Iterable[str]) -> list[str]:
    return [n for n in names if GRAPH_LAUNCH.search(str(n))]


def capture_calls(runtime_by_name: dict[str, int]) -> dict[str, int]:
    """The capture calls among API calls counted by name."""
    return {n: c for n, c in runtime_by_name.items() if CAPTURE.search(str(n))}
