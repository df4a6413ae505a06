"""`streamlab run`, one scenario at one shape: pick device and backend, claim the run's files
(session.files: refused before any work when they exist, unless --force), check that the buffers
fit in free memory, build them, check the layout against serial, then measure it on a GPU
(exec.measure) or simulate it (sim.run); turn what came back into a result (streamlab.runs),
print it (report.result) and write it and the run's trace atomically."""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import torch
from rich.console import Console
from rich.markup import escape

from streamlab.errors import EXIT_BAD_INPUT, EXIT_CHECK_FAILED, EXIT_ENVIRONMENT, Failure
from streamlab.exec.buffers import Buffers, bytes_needed, describe_bytes
from streamlab.exec.eager import StreamSet
from streamlab.exec.target import (
    Target,
    collective_overrides,
    device_name,
    pick_target,
    versions,
)
from streamlab.exec.verify import compare_with_serial
from streamlab.kernels import Bound, bind_layer, binding_summary
from streamlab.report.result import print_result
from streamlab.results import RunResult, dump
from streamlab.runs import RunSetup, measured_result, simulated_result
from streamlab.scenario import Scenario, ScenarioError, check_budgets, out_of_range
from streamlab.session.files import RunFiles, measured_on, run_files, simulated_on
from streamlab.sim.profile import DeviceProfile

__all__ = ["CPU_LAYERS", "OutputsDiffer", "planned_files", "run_place", "run_scenario", "simulate_run"]

CPU_LAYERS = 2  # two layers catch hazards across the layer boundary


REDUCED = {"model": "tiny", "tp": 1, "batch": 2, "context": 256, "page_size": 64}  # fast CPU output check


class OutputsDiffer(Failure):
    """The layout computed something else than the serial layout; the run's result (written
    before this was raised) says what."""

    def __init__(self, message: str, result: RunResult) -> None:
        super().__init__(message, EXIT_CHECK_FAILED)
        self.result = result

    def __reduce__(self):  # across processes (fresh-process runs) with its result
        return type(self), (str(self), self.result)


def run_place(target: Target, profile: DeviceProfile | None) -> str:
    """Where a run runs, as its file names say it (session.files)."""
    return measured_on(device_name(target.device), target.backend) if target.gpu else simulated_on(profile.name)


def planned_files(scen: Scenario, *, backend: str | None, device: str, out: Path,
                  profile: str | DeviceProfile = "mi355x", ranks: str | None = None, **_ignored) -> RunFiles:
    """The files `run_scenario` would write with these options (to claim them all before a
    series of runs starts: compare, check); `ranks`: what a run over several ranks adds to
    the name (session.files.over_ranks)."""
    from streamlab.sim.profile_file import load_profile

    target = pick_target(scen, device, backend)
    prof = None if target.gpu else load_profile(profile) if isinstance(profile, str) else profile
    place = run_place(target, prof)
    return run_files(scen, out, f"{place}-{ranks}" if ranks else place)


def run_scenario(scen: Scenario, console: Console, *, backend: str | None, device: str,
                 layers: int | None, out: Path, profile: str | DeviceProfile = "mi355x",
                 verify_full: bool = False, collective=None, force: bool = False,
                 files: RunFiles | None = None) -> RunResult:
    """On a GPU: check outputs against serial, then measure. Without one: check outputs with the
    reference kernels (at a reduced shape unless `verify_full`), then simulate on `profile`.
    Writes the result and the run's trace (session.files.run_files in `out`, or `files`; either
    refused before anything runs when it exists, unless `force`), prints the report; raises
    OutputsDiffer (after writing) when the outputs differ from serial's.

    `collective`: the all-reduce of a multi-process run (kernels.allreduce.impls.choose), bound
    to the layer's all-reduce nodes on the GPU and on the CPU alike; None: the one-process choice."""
    from streamlab.sim.profile_file import load_profile

    target = pick_target(scen, device, backend)
    n_layers = layers or scen.measure.layers
    problem = out_of_range("measure.layers", n_layers)
    if problem:
        raise Failure(f"--layers: {problem}", EXIT_BAD_INPUT)
    prof = None if target.gpu else load_profile(profile) if isinstance(profile, str) else profile
    files = (files or run_files(scen, out, run_place(target, prof))).claim(force=force)
    s = scen.shape
    where = (f"{device_name(target.device)}, backend {target.backend}" if target.gpu else
             f"no GPU: simulated on profile {prof.name}, outputs checked with the reference kernels")
    console.print(f"[bold]{scen.name}[/]  {scen.model.name}  batch {s.batch}  context {s.context}  "
                  f"tp {s.tp}  page {s.page_size}  kv {s.kv_cache}  |  {n_layers} layers, {escape(where)}")
    if target.note:
        console.print(target.note, markup=False)
    checked = scen if target.gpu or verify_full else scen.override(**REDUCED)
    check_layers = n_layers if target.gpu else min(n_layers, CPU_LAYERS)
    _fits(checked, target, check_layers)
    buffers, bound, streams = _prepare(checked, target, check_layers, console, collective)
    bad = _check_outputs(checked, buffers, bound, streams, console, reduced=checked is not scen)
    setup = RunSetup(device=device_name(target.device), versions=versions(),
                     backends={b.node.name: b.backend for b in bound.values()}, layers=n_layers,
                     differences=tuple(bad))
    if target.gpu:
        result = _measured(scen, buffers, bound, streams, console, files.trace, setup)
    else:
        result = simulate_run(scen, prof, n_layers, console, files.trace, setup)
    path = dump(result, files.result)
    console.print(f"result: {escape(str(path))}")
    if bad:
        raise OutputsDiffer(f"{scen.name}: the layout's outputs differ from the serial layout's", result)
    return result


def _measured(scen: Scenario, buffers: Buffers, bound: dict[str, Bound], streams: StreamSet,
              console: Console, trace: Path, setup: RunSetup) -> RunResult:
    from streamlab.exec.measure import measure
    from streamlab.trace import write_chrome

    m = measure(scen, buffers, bound, streams,
                status=lambda text: console.status(text) if console.is_terminal else nullcontext())
    trace_path = write_chrome(m.timeline, trace)
    result = measured_result(
        scen, m, replace(setup, trace=str(trace_path)),
        node_backends={n: b.backend for n, b in bound.items()},
        allreduce=next((b.backend for b in bound.values() if b.node.is_collective), "none"),
        held_us={n: b.fn.duration_us for n, b in bound.items() if b.backend == "emulated"})
    print_result(console, result)
    console.print(f"trace (Perfetto / chrome://tracing): {escape(str(trace_path))}")
    return result


def _fits(scen: Scenario, target: Target, layers: int) -> None:
    """Refuse a shape whose buffers (with the output check's saved copies) exceed the device's
    free memory, before allocating: a CPU process would otherwise be killed, a GPU run fail late."""
    need = bytes_needed(scen.layer, layers)
    free = _free_bytes(target.device)
    if free is None or need <= free:
        return
    s = scen.shape
    where = f"{device_name(target.device)} has" if target.gpu else "this machine has"
    raise Failure(f"{scen.name} at batch {s.batch}, context {s.context}: {layers} layers of buffers and the "
                  f"output check's copies need about {describe_bytes(need)}; {where} {describe_bytes(free)} "
                  "free: lower --context, --batch or --layers"
                  + ("" if target.gpu else " (or drop --verify-full: the check then runs at a reduced shape)"),
                  EXIT_ENVIRONMENT)


def _free_bytes(device: torch.device) -> int | None:
    """Free memory of the device the buffers go to (Linux's MemAvailable for the CPU), or None
    where it cannot be known."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


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
    _check_budgets(scen, target, bound)
    if target.backend == "aiter":
        for line in binding_summary(bound):
            console.print(line, markup=False)
    return buffers, bound, StreamSet(target.device)


def _check_budgets(scen: Scenario, target: Target, bound: dict[str, Bound]) -> None:
    """Every `sms:` of the scenario within this GPU's SMs (CUs), on kernels that honour it
    (`Bound.budget_problem`), before anything runs."""
    if target.gpu:
        check_budgets(scen, torch.cuda.get_device_properties(target.device).multi_processor_count,
                      device_name(target.device))
    for op in scen.program.launches:
        why = op.sms is not None and bound[op.node].budget_problem(target.gpu)
        if why:
            raise ScenarioError(scen.path, [(op.line, f"sms: {op.sms} on {op.node}: {why}")])


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


def simulate_run(scen: Scenario, profile: DeviceProfile, layers: int, console: Console, trace: Path,
                 setup: RunSetup, *, other_model: bool = True) -> RunResult:
    """The scenario on the simulator: its trace written to `trace`, its result printed (not
    written). `other_model`: scale a profile calibrated on another model to the scenario's (run,
    compare and check fall back to the profile for any model) instead of refusing it (`streamlab
    sim`)."""
    from streamlab.schedule.graph import with_capture_edges
    from streamlab.sim.run import simulate_scenario
    from streamlab.trace import write_chrome

    sim = simulate_scenario(scen, profile, layers, other_model=other_model)
    # with the captured graph's edges, as a measured run's: what-if and critical path on the trace
    trace_path = write_chrome(with_capture_edges(sim.timeline, scen.program, layers), trace)
    result = simulated_result(scen, sim, replace(setup, trace=str(trace_path)))
    print_result(console, result)
    console.print(f"trace (Perfetto / chrome://tracing): {escape(str(trace_path))}")
    return result
