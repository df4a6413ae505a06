"""`streamlab run`, one scenario at one shape: pick device and backend, build buffers, check the
layout against serial, then measure it on a GPU (exec.measure) or simulate it (sim.run); turn
what came back into a result (streamlab.runs), print it (report.result) and write it and the
run's trace atomically."""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import torch
from rich.console import Console

from streamlab.errors import EXIT_BAD_INPUT, EXIT_CHECK_FAILED, Failure
from streamlab.exec.buffers import Buffers, describe_bytes
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
from streamlab.scenario import Scenario, ScenarioError, check_budgets
from streamlab.sim.profile import DeviceProfile

__all__ = ["CPU_LAYERS", "OutputsDiffer", "run_scenario", "simulate_run"]

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


def run_scenario(scen: Scenario, console: Console, *, backend: str | None, device: str,
                 layers: int | None, out: Path, profile: str = "mi355x",
                 verify_full: bool = False, collective=None) -> RunResult:
    """On a GPU: check outputs against serial, then measure. Without one: check outputs with the
    reference kernels (at a reduced shape unless `verify_full`), then simulate on `profile`.
    Writes the result (OUT/SCENARIO-bBATCH-DEVICE.json) and the run's trace, prints the report;
    raises OutputsDiffer (after writing) when the outputs differ from serial's.

    `collective`: the all-reduce of a multi-process run (kernels.allreduce.impls.choose), bound
    to the layer's all-reduce nodes on the GPU and on the CPU alike; None: the one-process choice."""
    target = pick_target(scen, device, backend)
    n_layers = layers or scen.measure.layers
    if n_layers <= 0:
        raise Failure("--layers must be positive", EXIT_BAD_INPUT)
    s = scen.shape
    where = (f"{device_name(target.device)}, backend {target.backend}" if target.gpu else
             f"no GPU: simulated on profile {profile}, outputs checked with the reference kernels")
    console.print(f"[bold]{scen.name}[/]  {scen.model.name}  batch {s.batch}  context {s.context}  "
                  f"tp {s.tp}  page {s.page_size}  kv {s.kv_cache}  |  {n_layers} layers, {where}")
    if target.note:
        console.print(target.note, markup=False)
    checked = scen if target.gpu or verify_full else scen.override(**REDUCED)
    check_layers = n_layers if target.gpu else min(n_layers, CPU_LAYERS)
    buffers, bound, streams = _prepare(checked, target, check_layers, console, collective)
    bad = _check_outputs(checked, buffers, bound, streams, console, reduced=checked is not scen)
    setup = RunSetup(device=device_name(target.device), versions=versions(),
                     backends={b.node.name: b.backend for b in bound.values()}, layers=n_layers,
                     differences=tuple(bad))
    if target.gpu:
        result = _measured(scen, buffers, bound, streams, console, out, setup)
    else:
        result = simulate_run(scen, profile, n_layers, console, out, setup)
    path = dump(result, out / f"{scen.name}-b{s.batch}-{target.device.type}.json")
    console.print(f"result: {path}")
    if bad:
        raise OutputsDiffer(f"{scen.name}: the layout's outputs differ from the serial layout's", result)
    return result


def _measured(scen: Scenario, buffers: Buffers, bound: dict[str, Bound], streams: StreamSet,
              console: Console, out: Path, setup: RunSetup) -> RunResult:
    from streamlab.exec.measure import measure
    from streamlab.trace import write_chrome

    m = measure(scen, buffers, bound, streams,
                status=lambda text: console.status(text) if console.is_terminal else nullcontext())
    trace_path = write_chrome(m.timeline, out / f"{scen.name}-b{scen.shape.batch}.trace.json.gz")
    result = measured_result(
        scen, m, replace(setup, trace=str(trace_path)),
        node_backends={n: b.backend for n, b in bound.items()},
        allreduce=next((b.backend for b in bound.values() if b.node.is_collective), "none"),
        held_us={n: b.fn.duration_us for n, b in bound.items() if b.backend == "emulated"})
    print_result(console, result)
    console.print(f"trace (Perfetto / chrome://tracing): {trace_path}")
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


def simulate_run(scen: Scenario, profile: str | DeviceProfile, layers: int, console: Console, out: Path,
                 setup: RunSetup, *, other_model: bool = True) -> RunResult:
    """The scenario on the simulator: its trace written, its result printed (not written).
    `other_model`: scale a profile calibrated on another model to the scenario's (run, compare and
    check fall back to the profile for any model) instead of refusing it (`streamlab sim`)."""
    from streamlab.schedule.graph import with_capture_edges
    from streamlab.sim.profile_file import load_profile
    from streamlab.sim.run import simulate_scenario
    from streamlab.trace import write_chrome

    prof = load_profile(profile) if isinstance(profile, str) else profile
    sim = simulate_scenario(scen, prof, layers, other_model=other_model)
    # with the captured graph's edges, as a measured run's: what-if and critical path on the trace
    trace_path = write_chrome(with_capture_edges(sim.timeline, scen.program, layers),
                              out / f"{scen.name}-b{scen.shape.batch}-sim-{prof.name}.trace.json.gz")
    result = simulated_result(scen, sim, replace(setup, trace=str(trace_path)))
    print_result(console, result)
    console.print(f"trace (Perfetto / chrome://tracing): {trace_path}")
    return result
