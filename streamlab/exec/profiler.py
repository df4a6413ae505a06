"""Device activity of a piece of work, from the PyTorch profiler (CUPTI on NVIDIA, roctracer on
ROCm): every kernel, memcpy and memset with its stream, grid and timing."""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
from torch.profiler import ProfilerActivity, profile

__all__ = ["DeviceEvent", "device_events"]

GPU_CATEGORIES = {"kernel": "kernel", "gpu_memcpy": "memcpy", "gpu_memset": "memset"}


@dataclass(frozen=True)
class DeviceEvent:
    name: str
    stream: str
    start: float  # us
    end: float
    kind: str  # kernel | memcpy | memset
    grid: tuple[int, ...] = ()

    @property
    def identity(self) -> tuple[str, tuple[int, ...]]:
        """What tells two kernels apart when nodes share a kernel: name and launch grid.

        A copy or fill may show as a memcpy/memset record or as the driver kernel that
        implements a graph memcpy node (`memcpy32_post`), depending on how it was launched;
        all copies are one identity, and all fills another."""
        low = self.name.lower()
        for kind in ("memcpy", "memset"):
            if self.kind == kind or kind in low:
                return kind, ()
        return self.name, self.grid


def device_events(work: Callable[[], None], device: torch.device) -> list[DeviceEvent]:
    """Run `work` under the profiler and return its device activity sorted by start."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Profiler clears events at the end of each cycle"
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            work()
            torch.cuda.synchronize(device)
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        prof.export_chrome_trace(path)
        with open(path) as f:
            trace = json.load(f)
    finally:
        os.unlink(path)
    out = []
    for ev in trace.get("traceEvents", []):
        kind = GPU_CATEGORIES.get(ev.get("cat", ""))
        if kind is None or ev.get("ph") != "X":
            continue
        args = ev.get("args", {})
        start = float(ev["ts"])
        out.append(DeviceEvent(ev["name"], str(args.get("stream", ev.get("tid", "?"))), start,
                               start + float(ev.get("dur", 0.0)), kind,
                               tuple(args.get("grid", ()))))
    out.sort(key=lambda e: (e.start, e.end))
    return out
