"""`streamlab run`: pick device and backend, build buffers, check the layout against serial,
and on a GPU measure it; print the report and write results atomically."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console

from streamlab.errors import EXIT_BAD_INPUT, Failure
from streamlab.exec.buffers import Buffers, describe_bytes
from streamlab.exec.eager import StreamSet, bind_layer
from streamlab.exec.verify import compare_with_serial
from streamlab.io import write_json_atomic
from streamlab.scenario import Scenario

CPU_LAYERS = 2  # two layers catch hazards across the layer boundary


@dataclass(frozen=True)
class Target:
    device: torch.device
    backend: str

    @property
    def gpu(self) -> bool:
        return self.device.type == "cuda"


def pick_target(scen: Scenario, device: str, backend: str | None) -> Target:
    if device not in ("auto", "cpu", "cuda"):
        raise Failure(f"--device must be auto, cpu or cuda, got {device!r}", EXIT_BAD_INPUT)
    has_gpu = torch.cuda.is_available()
    if device == "cuda" and not has_gpu:
        raise Failure("--device cuda: no CUDA/HIP GPU is visible to torch "
                      f"(torch {torch.__version__}, built for {'HIP' if torch.version.hip else 'CUDA' if torch.version.cuda else 'CPU only'})")
    dev = torch.device("cuda" if (device == "cuda" or (device == "auto" and has_gpu)) else "cpu")
    choice = backend or scen.backend
    if choice == "auto":
        choice = auto_backend() if dev.type == "cuda" else "reference"
    if choice == "aiter":
        from streamlab.kernels.aiter import require_aiter
        require_aiter()
    if choice != "reference" and dev.type != "cuda":
        raise Failure(f"backend {choice!r} needs a GPU; on the CPU use --backend reference")
    return Target(dev, choice)


def auto_backend() -> str:
    """aiter on ROCm where it loads, else the portable Triton kernels."""
    if torch.version.hip:
        try:
            from streamlab.kernels.aiter import require_aiter
            require_aiter()
            return "aiter"
        except Failure:
            return "triton"
    return "triton"


def run_scenario(scen: Scenario, console: Console, *, backend: str | None, device: str,
                 layers: int | None, out: Path) -> dict:
    target = pick_target(scen, device, backend)
    n_layers = layers or (scen.measure.layers if target.gpu else min(scen.measure.layers, CPU_LAYERS))
    if n_layers <= 0:
        raise Failure("--layers must be positive", EXIT_BAD_INPUT)
    s = scen.shape
    console.print(f"[bold]{scen.name}[/]  {scen.model.name}  batch {s.batch}  context {s.context}  "
                  f"tp {s.tp}  page {s.page_size}  kv {s.kv_cache}  |  {n_layers} layers on "
                  f"{_device_name(target.device)}, backend {target.backend}")
    t0 = time.perf_counter()
    try:
        buffers = Buffers(scen.layer, n_layers, target.device)
    except torch.OutOfMemoryError:
        raise Failure(f"out of GPU memory allocating {n_layers} layers at batch {s.batch}, "
                      f"context {s.context}: lower --layers, --batch or --context") from None
    console.print(f"buffers: {describe_bytes(buffers.nbytes)} (weights in FP8 with block scales, "
                  f"caches filled for context {s.context}) in {time.perf_counter() - t0:.1f} s")
    overrides = collective_overrides(scen, target)
    bound = bind_layer(scen.layer, target.backend, overrides)
    streams = StreamSet(target.device)
    diffs = compare_with_serial(scen.layer, scen.program, buffers, bound, streams)
    bad = [d for d in diffs if not d.identical]
    if bad:
        worst = max(bad, key=lambda d: d.mismatched)
        console.print(f"[bold red]layout differs from serial[/] in {len(bad)} tensors, e.g. "
                      f"{worst.tensor}: {worst.mismatched}/{worst.total} elements, max |diff| "
                      f"{worst.max_abs:.3g}")
    else:
        console.print(f"[green]layout computes exactly what serial computes[/]: {len(diffs)} tensors "
                      f"bitwise equal after {n_layers} layers")
    result = {
        "scenario": scen.name, "path": scen.path, "model": scen.model.name, "shape": vars(s),
        "variant": vars(scen.variant), "layers": n_layers, "device": _device_name(target.device),
        "versions": versions(), "backend": {b.node.name: b.backend for b in bound.values()},
        "equal_to_serial": not bad,
        "differences": [vars(d) for d in bad],
    }
    if target.gpu:
        from streamlab.exec.measure import measure_and_report
        result.update(measure_and_report(scen, buffers, bound, streams, console, out))
    else:
        console.print("[yellow]no GPU here:[/] the reference kernels checked correctness only; "
                      "timings need a GPU. `streamlab graph` shows the schedule and its "
                      "roofline critical path.")
    path = out / f"{scen.name}-b{s.batch}-{target.device.type}.json"
    write_json_atomic(path, result)
    console.print(f"result: {path}")
    if bad:
        raise Failure(f"{scen.name}: the layout's outputs differ from the serial layout's", 1)
    return result


def collective_overrides(scen: Scenario, target: Target) -> dict:
    """The all-reduce implementation for a one-process run."""
    if not target.gpu:
        return {}
    from streamlab.collective.emulated import EmulatedAllReduce
    if scen.collective.impl not in ("auto", "emulated"):
        raise Failure(f"collective.impl {scen.collective.impl!r} needs a multi-process run; "
                      f"one GPU runs the emulated all-reduce (collective.impl: emulated)")
    return {"allreduce": EmulatedAllReduce(scen.collective.emulated_us, target.device)}


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


def versions() -> dict:
    import platform
    out = {"python": platform.python_version(), "torch": torch.__version__}
    if torch.version.cuda:
        out["cuda"] = torch.version.cuda
    if torch.version.hip:
        out["hip"] = torch.version.hip
    try:
        import triton
        out["triton"] = triton.__version__
    except ImportError:
        pass
    return out
