"""The simulator behind the search: the one call into the engine (`predict`), and the worker
processes that run it on chunks of layouts (`Simulator`).

A layout travels to a worker as its `Layout` (a few tuples); the worker builds the program and,
on HIP lanes, first computes the exact bound on its own queues (`bound.captured_graph`),
skipping the simulation when that bound cannot enter the top K. Workers start by fork where the
platform has it (nothing here imports a GPU runtime), else by spawn.
"""

from __future__ import annotations

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
from streamlab.sim.engine import per_layer_us, simulate
from streamlab.sim.profile import Profile, load_profile
from streamlab.timeline import Timeline


@dataclass(frozen=True)
class Predicted:
    """A simulated per-layer time (us). low / high: its prediction interval, once the simulator
    gives one; None until then."""

    us: float
    low: float | None = None
    high: float | None = None


def predict(layer: Layer, program: Program, profile: Profile, layers: int) -> tuple[Predicted, Timeline]:
    """The search's one call into the simulator."""
    timeline = simulate(layer, program, profile, layers)
    return Predicted(per_layer_us(timeline, layers)), timeline


def lane_model(profile: Profile) -> LaneModel:
    return LaneModel("hip" if profile.streams == "hip" else "cuda", profile.hip_queues)


def layer_at(model: str, shape: Shape, variant: Variant) -> Layer:
    return build_layer(RankDims(MODELS[model], shape), variant)


_WORKER: dict = {}


def _init_worker(model: str, shape: Shape, profile: str, layers: int) -> None:
    _WORKER.update(model=model, shape=shape, profile=load_profile(profile), layers=layers, spaces={}, costs={})


def _worker_costs(space: Space, variant: Variant, batch: int, multi_lane: bool) -> Costs:
    key = (variant, batch, multi_lane)
    if key not in _WORKER["costs"]:
        _WORKER["costs"][key] = Costs.of(space, _WORKER["profile"], multi_lane=multi_lane)
    return _WORKER["costs"][key]


def _worker_space(variant: Variant, batch: int) -> Space:
    spaces = _WORKER["spaces"]
    if (variant, batch) not in spaces:
        spaces[(variant, batch)] = Space.of(layer_at(_WORKER["model"], replace(_WORKER["shape"], batch=batch),
                                                     variant))
    return spaces[(variant, batch)]


def _simulate_chunk(batch: int, chunk: list[tuple[Layout, float]]) -> list[tuple[float | None, float | None, float]]:
    """(predicted us or None, exact bound where computed here, seconds in the engine) per layout;
    a layout whose exact bound reaches its threshold is not simulated."""
    profile, layers = _WORKER["profile"], _WORKER["layers"]
    lanes = lane_model(profile)
    out = []
    for layout, threshold in chunk:
        space = _worker_space(layout.variant, batch)
        program = build_program(space, layout)
        exact = None
        if lanes.kind == "hip":
            graph = captured_graph(space, program, lanes, layers)
            exact = lower_bound(_worker_costs(space, layout.variant, batch, graph.multi_lane), graph)
            if exact >= threshold:
                out.append((None, exact, 0.0))
                continue
        t0 = time.perf_counter()
        predicted, _ = predict(space.layer, program, profile, layers)
        out.append((predicted.us, exact, time.perf_counter() - t0))
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
