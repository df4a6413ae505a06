"""Run results with chosen numbers, built as `streamlab run` builds them (typed, through the
scenario's real layer), for tests of the readers: check, compare, calibrate."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from streamlab.analysis import GAP_CLASSES, Stat
from streamlab.models.hardware import Ceilings
from streamlab.results import Anatomy, Budget, CompareResult, Latency, NodeResult, NodeTime, RunResult, dump
from streamlab.scenario import load

SCENARIOS = Path(__file__).parent.parent / "scenarios"


def stat(v: float, n: int = 4) -> Stat:
    return Stat(v, v, v, n)


def run_result(scenario: str = "serial", batch: int = 4, *, latency: float = 300.0, spread: float = 0.0,
               drift: float = 0.0, wall: float | None = None, kernel_sum: float = 200.0, bubble: float = 10.0,
               stall: float = 0.0, ar: float = 10.0, node_us: float = 3.0, iso: dict | None = None,
               kernels: int = 2, device: str = "NVIDIA H200", measured: bool = True,
               copy_gbs: float = 4150.0) -> RunResult:
    """A run of the scenario at `batch`: every node `node_us` in the graph (`kernels` kernels
    each), isolated 1.1x that unless `iso` says otherwise; the layer `latency` us per layer."""
    scen = load(SCENARIOS / f"{scenario}.yaml").override(batch=batch)
    iso = iso or {}
    nodes = {n.name: NodeResult(in_graph_us=NodeTime(node_us, node_us, node_us, 4),
                                isolated_us=iso.get(n.name, node_us * 1.1), slowdown=1.0, floor_us=0.5,
                                kernels=kernels, flops=n.flops, bytes=n.bytes, backend="triton")
             for n in scen.layer.nodes}
    by_class = {c: stat(0.0) for c in GAP_CLASSES}
    by_class.update(launch=stat(bubble - stall), stall=stat(stall))
    n_kernels = kernels * len(nodes)
    return RunResult(
        scenario=scen.name, path=scen.path, model=scen.model.name, shape=scen.shape, variant=scen.variant,
        layers=4, device=device, versions={"torch": "2.11.0"}, backends={n: "triton" for n in nodes},
        equal_to_serial=True, differences=(), measured=measured,
        source=f"measured on {device}" if measured else "simulated, profile test", protocol=None,
        latency=Latency(latency, latency, latency, (latency,) * 5, (latency,) * 5, spread, (), drift),
        budget=Budget(us=100.0, floor_sum_us=0.5 * len(nodes), floor_held_us=0.0, roofline_us=100.0,
                      launch_us=2.0, kernels=n_kernels),
        anatomy=Anatomy(wall_us=stat(latency if wall is None else wall), kernel_sum_us=stat(kernel_sum),
                        overlap=stat(1.0), bubble_us=stat(bubble), bubble_by_class_us=by_class,
                        stalls_per_layer=stat(0.0), allreduce_per_call_us=stat(ar), allreduce="emulated",
                        physical_streams=1, stall_sites=()),
        nodes=nodes, ceilings=Ceilings(copy_gbs, 800.0, 1600.0) if measured else None)


def with_node(run: RunResult, node: str, **changes) -> RunResult:
    """`run` with one node's fields changed."""
    nodes = dict(run.nodes)
    nodes[node] = dataclasses.replace(nodes[node], **changes)
    return dataclasses.replace(run, nodes=nodes)


def write(folder: Path, name: str, runs: RunResult | list[RunResult]) -> Path:
    """One run result, or several as a compare report (what a GPU matrix is)."""
    return dump(runs if isinstance(runs, RunResult) else CompareResult(tuple(runs)), folder / name)
