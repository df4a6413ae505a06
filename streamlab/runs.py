"""Run results from what the producers return.

A measured layer (`exec.measure.Measurement`: timed replays, the profiled Timeline, nodes alone,
the device's ceilings) or a simulated one (`sim.run.Simulation`), plus what the session knows of
the run (`RunSetup`), become one `results.RunResult` through the same analysis
(`analysis.summarize`, `analysis.stall_sites`), so a simulated layout prints, exports and compares
exactly like a measured one; `measured` and `source` say which it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from streamlab.analysis import Summary, percentiles, spread, stall_sites, summarize
from streamlab.exec.measure import WARMUP_S, GraphTiming, Measurement
from streamlab.models.hardware import Ceilings
from streamlab.results import (Anatomy, Budget, Difference, Latency, NodeResult, NodeTime, PredictedLatency,
                               ProfileParameter, Protocol, RunResult)
from streamlab.scenario import Scenario
from streamlab.sim.predict import measure_command
from streamlab.sim.run import Simulation

__all__ = ["LAUNCH_US", "RunSetup", "measured_result", "simulated_result", "timed_latency"]

LAUNCH_US = 2.0  # per-kernel allowance in the layer budget: decode is launch-latency heavy


@dataclass(frozen=True)
class RunSetup:
    """What the session knows of a run besides its numbers."""

    device: str
    versions: dict[str, str]
    backends: dict[str, str]  # node -> the kernels that computed the outputs checked against serial
    layers: int
    differences: tuple[Difference, ...] | None  # those that differ from serial; None: not checked
    trace: str | None = None


def timed_latency(timing: GraphTiming) -> Latency:
    """Every timed replay, its median and p20/p80, and how the repeats and blocks read."""
    p20, p50, p80 = percentiles(timing.per_replay_us)
    repeats, blocks = timing.repeat_medians, timing.block_medians
    return Latency(median=p50, p20=p20, p80=p80, per_replay_us=tuple(timing.per_replay_us),
                   repeat_medians_us=tuple(repeats),
                   repeat_spread=spread(repeats) if len(repeats) > 1 else 0.0,
                   block_medians_us=tuple(blocks), drift=spread(blocks) if len(blocks) > 1 else 0.0)


def measured_result(scen: Scenario, m: Measurement, setup: RunSetup, *, node_backends: Mapping[str, str],
                    allreduce: str, held_us: Mapping[str, float]) -> RunResult:
    """held_us: nodes that hold their stream for a set time by design (the emulated all-reduce);
    that time is their floor, so the budget judges the kernels, not the stand-in."""
    return _result(
        scen, setup, measured=True, source=f"measured on {m.timeline.source.device}",
        protocol=Protocol(scen.measure, WARMUP_S), latency=timed_latency(m.timing),
        summary=summarize(m.timeline), isolated_us={n: percentiles(v.kernel_us)[1] for n, v in m.isolated.items()},
        kernels={n: len(v.signature) for n, v in m.isolated.items()}, ceilings=m.ceilings,
        node_backends=node_backends, allreduce=allreduce, held_us=held_us)


def simulated_result(scen: Scenario, s: Simulation, setup: RunSetup) -> RunResult:
    us = s.per_layer_us
    latency = Latency(median=us, p20=us, p80=us, per_replay_us=(us,), repeat_medians_us=(),
                      repeat_spread=0.0, block_medians_us=(), drift=0.0)
    return _result(
        scen, setup, measured=False, source=f"simulated, profile {s.profile.name}", protocol=None,
        latency=latency, summary=summarize(s.timeline), isolated_us=s.isolated_us, kernels=s.kernels,
        ceilings=s.ceilings, node_backends={n.name: "simulated" for n in scen.layer.nodes},
        allreduce=f"simulated ({s.profile.name})", held_us={},
        device_profile=tuple(ProfileParameter(k, v, src) for k, v, src in s.profile.describe()),
        prediction=s.prediction.record(measure_command([scen.path], s.profile)
                                       if any(not o.crowded for o in s.prediction.unmeasured) else None))


def _result(scen: Scenario, setup: RunSetup, *, measured: bool, source: str, protocol: Protocol | None,
            latency: Latency, summary: Summary, isolated_us: Mapping[str, float], kernels: Mapping[str, int],
            ceilings: Ceilings, node_backends: Mapping[str, str], allreduce: str,
            held_us: Mapping[str, float], device_profile: tuple[ProfileParameter, ...] = (),
            prediction: PredictedLatency | None = None) -> RunResult:
    """`ceilings`: the floors' denominators; kept in the result when measured on the device."""
    roofline = {n.name: ceilings.floor_us(n) for n in scen.layer.nodes}
    floors = {n: max(f, held_us.get(n, 0.0)) for n, f in roofline.items()}
    nodes = {}
    budgets = scen.program.budgets
    for node in scen.layer.nodes:
        ns = summary.nodes.get(node.name)
        iso = isolated_us[node.name]
        nodes[node.name] = NodeResult(
            in_graph_us=NodeTime(ns.median, ns.p20, ns.p80, ns.occurrences, mean=ns.mean) if ns else None,
            isolated_us=iso, slowdown=ns.median / iso if ns and iso > 0 else float("nan"),
            floor_us=floors[node.name], kernels=kernels[node.name], flops=node.flops, bytes=node.bytes,
            backend=node_backends[node.name] + (f" [at most {budgets[node.name]} SMs/CUs]"
                                                 if node.name in budgets else ""))
    n_kernels = sum(kernels.values())
    floor_sum = sum(floors.values())
    return RunResult(
        scenario=scen.name, path=scen.path, model=scen.model.name, shape=scen.shape, variant=scen.variant,
        layers=setup.layers, device=setup.device, versions=dict(setup.versions), backends=dict(setup.backends),
        equal_to_serial=None if setup.differences is None else not setup.differences,
        differences=tuple(setup.differences or ()), measured=measured,
        source=source, protocol=protocol, latency=latency,
        budget=Budget(us=floor_sum + LAUNCH_US * n_kernels, floor_sum_us=floor_sum,
                      floor_held_us=float(sum(held_us.values())),
                      roofline_us=sum(roofline.values()) + LAUNCH_US * n_kernels, launch_us=LAUNCH_US,
                      kernels=n_kernels),
        anatomy=Anatomy(
            wall_us=summary.wall, kernel_sum_us=summary.kernel_sum, overlap=summary.overlap,
            bubble_us=summary.bubble, bubble_by_class_us=dict(summary.bubble_by_class),
            stalls_per_layer=summary.stalls, allreduce_per_call_us=summary.allreduce, allreduce=allreduce,
            physical_streams=len(summary.streams), stall_sites=tuple(stall_sites(summary)),
            bubble_split_us=dict(summary.bubble_split)),
        nodes=nodes, ceilings=ceilings if measured else None, trace=setup.trace,
        device_profile=device_profile, prediction=prediction)
