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
from streamlab.kernels import binding_summary
from streamlab.scenario import Scenario

CPU_LAYERS = 2  # two layers catch hazards across the layer boundary


@dataclass(frozen=True)
class Target:
    device: torch.device
    backend: str
    note: str = ""  # why `--backend auto` chose what it chose, where that is news

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
    choice, note = backend or scen.backend, ""
    if choice == "auto":
        choice, note = auto_backend() if dev.type == "cuda" else ("reference", "")
    if choice == "aiter":
        from streamlab.kernels.aiter import require_aiter
        require_aiter()
    if choice != "reference" and dev.type != "cuda":
        raise Failure(f"backend {choice!r} needs a GPU; on the CPU use --backend reference")
    return Target(dev, choice, note)


def auto_backend() -> tuple[str, str]:
    """aiter on ROCm where it loads, else the portable Triton kernels; with the reason aiter
    was passed over on ROCm."""
    if torch.version.hip:
        from streamlab.kernels.aiter import require_aiter
        try:
            require_aiter()
            return "aiter", ""
        except Failure as e:
            return "triton", f"backend auto: triton, aiter not used ({e})"
    return "triton", ""


REDUCED = dict(model="tiny", tp=1, batch=2, context=256, page_size=64)  # fast CPU output check


def run_scenario(scen: Scenario, console: Console, *, backend: str | None, device: str,
                 layers: int | None, out: Path, profile: str = "mi355x",
                 verify_full: bool = False, collective=None) -> dict:
    """On a GPU: check outputs against serial, then measure. Without one: check outputs with the
    reference kernels (at a reduced shape unless `verify_full`), then simulate on `profile`.

    `collective`: the all-reduce of a multi-process run (streamlab.collective.impls.choose), bound
    to the layer's all-reduce nodes on the GPU and on the CPU alike; None: the one-process choice."""
    target = pick_target(scen, device, backend)
    n_layers = layers or scen.measure.layers
    if n_layers <= 0:
        raise Failure("--layers must be positive", EXIT_BAD_INPUT)
    s = scen.shape
    where = (f"{_device_name(target.device)}, backend {target.backend}" if target.gpu else
             f"no GPU: simulated on profile {profile}, outputs checked with the reference kernels")
    console.print(f"[bold]{scen.name}[/]  {scen.model.name}  batch {s.batch}  context {s.context}  "
                  f"tp {s.tp}  page {s.page_size}  kv {s.kv_cache}  |  {n_layers} layers, {where}")
    if target.note:
        console.print(target.note, markup=False)
    checked = scen if target.gpu or verify_full else scen.override(**REDUCED)
    check_layers = n_layers if target.gpu else min(n_layers, CPU_LAYERS)
    buffers, bound, streams = _prepare(checked, target, check_layers, console, collective)
    bad = _check_outputs(checked, buffers, bound, streams, console, reduced=checked is not scen)
    result = {
        "scenario": scen.name, "path": scen.path, "model": scen.model.name, "shape": vars(s),
        "variant": vars(scen.variant), "layers": n_layers, "device": _device_name(target.device),
        "versions": versions(), "backend": {b.node.name: b.backend for b in bound.values()},
        "equal_to_serial": not bad, "differences": [vars(d) for d in bad],
    }
    if target.gpu:
        from streamlab.exec.measure import measure_and_report
        result.update(measure_and_report(scen, buffers, bound, streams, console, out))
    else:
        result.update(simulate_and_report(scen, profile, n_layers, console, out))
    path = out / f"{scen.name}-b{s.batch}-{target.device.type}.json"
    write_json_atomic(path, result)
    console.print(f"result: {path}")
    if bad:
        raise Failure(f"{scen.name}: the layout's outputs differ from the serial layout's", 1)
    return result


def _prepare(scen: Scenario, target: Target, layers: int, console: Console, collective=None):
    t0 = time.perf_counter()
    try:
        buffers = Buffers(scen.layer, layers, target.device)
    except torch.OutOfMemoryError:
        raise Failure(f"out of GPU memory allocating {layers} layers at batch {scen.shape.batch}, "
                      f"context {scen.shape.context}: lower --layers, --batch or --context") from None
    if target.gpu:
        console.print(f"buffers: {describe_bytes(buffers.nbytes)} (weights in FP8 with block scales, "
                      f"caches filled for context {scen.shape.context}) in {time.perf_counter() - t0:.1f} s")
    overrides = ({"allreduce": collective} if collective is not None
                 else collective_overrides(scen, target))
    bound = bind_layer(scen.layer, target.backend, overrides)
    if target.backend == "aiter":
        for line in binding_summary(bound):
            console.print(line, markup=False)
    return buffers, bound, StreamSet(target.device)


def _check_outputs(scen, buffers, bound, streams, console, reduced: bool) -> list:
    diffs = compare_with_serial(scen.layer, scen.program, buffers, bound, streams)
    bad = [d for d in diffs if not d.identical]
    at = (f" (at a reduced shape: {scen.model.name} model, batch {scen.shape.batch}, context "
          f"{scen.shape.context}; --verify-full checks the real shape)" if reduced else "")
    if bad:
        worst = max(bad, key=lambda d: d.mismatched)
        console.print(f"[bold red]layout differs from serial[/] in {len(bad)} tensors, e.g. "
                      f"{worst.tensor}: {worst.mismatched}/{worst.total} elements, max |diff| "
                      f"{worst.max_abs:.3g}{at}")
    else:
        console.print(f"[green]layout computes exactly what serial computes[/]: {len(diffs)} tensors "
                      f"bitwise equal after {buffers.layers} layers{at}")
    return bad


def simulate_and_report(scen: Scenario, profile_name: str, layers: int, console: Console,
                        out: Path) -> dict:
    from streamlab.report.result import print_result
    from streamlab.sim.profile import load_profile
    from streamlab.sim.run import simulate_scenario
    from streamlab.trace import write_chrome

    result, timeline = simulate_scenario(scen, load_profile(profile_name), layers)
    trace_path = out / f"{scen.name}-b{scen.shape.batch}-sim-{profile_name}.trace.json.gz"
    write_chrome(timeline, trace_path)
    result["trace"] = str(trace_path)
    print_result(console, scen, result)
    console.print(f"trace (Perfetto / chrome://tracing): {trace_path}")
    return {"simulated": result}


def collective_overrides(scen: Scenario, target: Target) -> dict:
    """The all-reduce implementation for a one-process run."""
    if not target.gpu:
        return {}
    from streamlab.collective.emulated import EmulatedAllReduce
    if scen.collective.impl not in ("auto", "emulated"):
        raise Failure(f"collective.impl {scen.collective.impl!r} needs a multi-process run "
                      f"(streamlab run {scen.path} --world N); one GPU runs the emulated "
                      f"all-reduce (collective.impl: emulated)")
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
