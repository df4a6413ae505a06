"""The simulator behind the search: its two calls into the engine, and the worker processes
that rank chunks of layouts (`Simulator`).

- `rank_us`: the per-layer latency of one replay (`sim.run`), all a ranking needs; `rank_overlaps`
  with the pairs it ran side by side (the budget pass);
- `predict`: the same replay with its prediction interval and the overlaps it rests on
  (`sim.predict.predict_layer`), for the layouts the search reports.

A layout travels to a worker as its `Layout` (a few tuples); the worker builds the program and,
on HIP lanes, first computes the exact bound on its own queues (`bound.captured_graph`),
skipping the simulation when that bound cannot enter the top K. Workers start by fork where the
platform has it (nothing here imports a GPU runtime), else by spawn.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import time
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, replace

from streamlab.layer import Layer, Variant, build_layer
from streamlab.models import MODELS, RankDims, Shape
from streamlab.schedule.program import Program
from streamlab.search.bound import Costs, LaneModel, captured_graph, lower_bound
from streamlab.search.layout import Layout, build_program
from streamlab.search.space import Space
from streamlab.sim import DeviceProfile, Overlap, load_profile, run
from streamlab.sim.predict import predict_layer
from streamlab.timeline import Timeline


@dataclass(frozen=True)
class Predicted:
    """A simulated per-layer time (us) with its prediction interval, and the ordered pairs of
    kernels it runs side by side that the profile has not measured (what `streamlab calibrate
    --measure --for` would measure). Ranking alone fills `us` only."""

    us: float
    low: float | None = None
    high: float | None = None
    unmeasured: tuple[tuple[str, str], ...] = ()


def rank_us(layer: Layer, program: Program, profile: DeviceProfile, layers: int) -> float:
    """The search's call into the simulator while ranking."""
    return run(layer, program, profile, layers).per_layer_us


def rank_overlaps(layer: Layer, program: Program, profile: DeviceProfile, layers: int
                  ) -> tuple[float, tuple[Overlap, ...]]:
    """`rank_us` with the kernels the replay ran side by side (what the budget pass budgets)."""
    replay = run(layer, program, profile, layers)
    return replay.per_layer_us, replay.overlaps


def predict(name: str, layer: Layer, program: Program, profile: DeviceProfile, layers: int) -> tuple[Predicted, Timeline]:
    """A reported layout's prediction, with its interval, and its Timeline. The profile's node
    latencies are scaled to another model than the one it was calibrated on (the search's
    `--model` asks for it; the interval's shape part says by how much)."""
    other = layer.dims.model.name != profile.provenance.shape.model
    p = predict_layer(name, layer, program, profile, layers=layers, other_model=other)
    missing = tuple((o.first, o.second) for o in p.unmeasured if not o.crowded)
    return Predicted(p.per_layer_us, p.low_us, p.high_us, missing), p.timeline


def lane_model(profile: DeviceProfile) -> LaneModel:
    return LaneModel("hip" if profile.streams == "hip" else "cuda", profile.hip_queues)


def layer_at(model: str, shape: Shape, variant: Variant) -> Layer:
    return build_layer(RankDims(MODELS[model], shape), variant)


_WORKER: dict = {}


def _init_worker(model: str, shape: Shape, profile: str, layers: int) -> None:
    gc.freeze()  # a forked worker inherits the search's listed spaces: out of the collector's passes
    _WORKER.update(model=model, shape=shape, profile=load_profile(profile), layers=layers, spaces={}, costs={})


def _worker_costs(space: Space, variant: Variant, batch: int, multi_lane: bool) -> Costs:
    key = (variant, batch, multi_lane)
    if key not in _WORKER["costs"]:
        _WORKER["costs"][key] = Costs.of(space.layer, _WORKER["profile"], multi_lane=multi_lane)
    return _WORKER["costs"][key]


def _worker_space(variant: Variant, batch: int) -> Space:
    spaces = _WORKER["spaces"]
    if (variant, batch) not in spaces:
        spaces[(variant, batch)] = Space.of(layer_at(_WORKER["model"], replace(_WORKER["shape"], batch=batch),
                                                     variant))
    return spaces[(variant, batch)]


def _simulate_chunk(batch: int, chunk: list[tuple[Layout, float]]) -> list[tuple[float | None, float | None, float]]:
    """(predicted us or None, exact bound where computed here, CPU seconds in the engine) per layout;
    a layout whose exact bound reaches its threshold is not simulated."""
    profile, layers = _WORKER["profile"], _WORKER["layers"]
    lanes = lane_model(profile)
    out = []
    for layout, threshold in chunk:
        space = _worker_space(layout.variant, batch)
        program = build_program(space, layout)
        exact = None
        if lanes.kind == "hip":
            graph = captured_graph(space.layer, program, profile, layers)
            exact = lower_bound(_worker_costs(space, layout.variant, batch, graph.multi_lane), graph)
            if exact >= threshold:
                out.append((None, exact, 0.0))
                continue
        t0 = time.process_time()  # CPU seconds: what a core spends, whatever else shares it
        us = rank_us(space.layer, program, profile, layers)
        out.append((us, exact, time.process_time() - t0))
    return out


class Simulator:
    """Simulates layouts in worker processes (or here, with one worker)."""

    def __init__(self, model: str, shape: Shape, profile: str, layers: int, workers: int) -> None:
        self.args = (model, shape, profile, layers)
        self.workers = workers
        self.pool: ProcessPoolExecutor | None = None
        if workers > 1:
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            self.pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method),
                                            initializer=_init_worker, initargs=self.args)
        else:
            _init_worker(*self.args)

    def submit(self, batch: int, chunk: list[tuple[Layout, float]]) -> Future:
        if self.pool is not None:
            return self.pool.submit(_simulate_chunk, batch, chunk)
        f: Future = Future()
        f.set_result(_simulate_chunk(batch, chunk))
        return f

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)


def default_workers() -> int:
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))
