"""What kernel and runtime-API names say, the same for every trace format: which kernels are
all-reduces, which API calls launch a captured graph, and which capture one (HIP, CUDA runtime,
CUDA driver and PyTorch spellings, with or without Nsight Systems' `_v10000` version suffix)."""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["ALLREDUCE", "CAPTURE", "CAPTURE_MARKS", "GRAPH_LAUNCH", "capture_calls",
           "graph_launch_names"]

ALLREDUCE = re.compile(r"all_?reduce|cross_device_reduce", re.IGNORECASE)
GRAPH_LAUNCH = re.compile(r"graphlaunch", re.IGNORECASE)  # hipGraphLaunch, cudaGraphLaunch, ...
# the calls of a graph capture: begin / end capture on a stream, instantiating the graph
CAPTURE = re.compile(r"^(hip|cuda|cu)(Stream)?(BeginCapture|EndCapture)|^(hip|cuda|cu)GraphInstantiate",
                     re.IGNORECASE)
# names of CPU-side events that mark a capture or warm-up where API calls are not recorded
CAPTURE_MARKS = (b"CUDAGraphNode.record",)


def graph_launch_names(names: Iterable[str]) -> list[str]:
    return [n for n in names if GRAPH_LAUNCH.search(str(n))]


def capture_calls(runtime_by_name: dict[str, int]) -> dict[str, int]:
    """The capture calls among API calls counted by name."""
    return {n: c for n, c in runtime_by_name.items() if CAPTURE.search(str(n))}
