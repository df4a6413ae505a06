"""The pairwise micro-benchmark on the GPU: what a pairs stage of `calibrate --measure` runs in a
process of its own, writing the file streamlab/sim/pairwise.py reads (the fit and its model are
described there).

Every measurement is one graph of `units` units `fork; MAIN on main; ALT on alt; join`, replayed
and timed per replay with device events by the executor's harness (`exec.measure.time_graphs`),
all graphs interleaved in rounds so clock drift hits them alike:
- each requested node pair (first dispatched on main, second on alt), each of its nodes beside
  an empty kernel, and the empty harness itself, at the pair's batch (units cycle over 4 layers'
  weights, as the executor's graph does);
- with `cross_stream` (the first stage of a calibration): a chain of one empty kernel per unit
  (one stream) and a ladder of fork/join units of two empty kernels at 4, 16 and 64 units (fence
  and graph-entry cost), and the serial layout's layer graph at every batch, timed once graphs
  with branches have run in the process (their kernels then sit as far apart as in a graph with
  branches: the launch gap of multi-stream layouts).
Everything is timed in a clean process (`clean`, what calibration uses); with `cross_stream` the
serial layer again after one profiler session (`cupti`: Kineto leaves CUPTI attached, as it is in
a measured run's process; the two set the spread of the multi-stream launch gap). The profiler
session itself times the empty kernel, which the pair fit subtracts from the harness.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from streamlab.exec.buffers import Buffers
from streamlab.exec.eager import StreamSet, run_layers
from streamlab.exec.measure import time_graphs
from streamlab.exec.profiler import device_events
from streamlab.exec.target import collective_overrides, pick_target, versions
from streamlab.io import write_json_atomic
from streamlab.kernels import bind_layer
from streamlab.scenario import Measure, Scenario, load
from streamlab.sim.pairwise import NOOP
from streamlab.sim.provenance import CalibrationShape

__all__ = ["FENCE_UNITS", "LAYERS", "PairAt", "PairProtocol", "PairsJob", "measure_pairs"]

LAYERS = 4  # weight sets the units cycle over
FENCE_UNITS = (4, 16, 64)
CLEAN, CUPTI = "clean", "cupti"


@dataclass(frozen=True, order=True)
class PairAt:
    """An ordered node pair at a batch: `first` dispatched first, on the stream forked from."""

    batch: int
    first: str
    second: str

    def __str__(self) -> str:
        return f"b{self.batch} {self.first}|{self.second}"


@dataclass(frozen=True)
class PairProtocol:
    """How the graphs are timed: `units` fork/join units per graph, `rounds` interleaved rounds of
    `replays` timed replays after `lead_in` untimed ones, after `settle_s` of warm-up (clocks
    settle in about a second on H100). 27 s for 4 batches of the shipped pairs on an H100."""

    units: int = 8
    rounds: int = 5
    replays: int = 30
    lead_in: int = 3
    settle_s: float = 1.5


@dataclass(frozen=True)
class PairsJob:
    """What one pairs stage measures. `layout`: a scenario file of the variant the pairs run in
    (its layer is built at each batch and run once eagerly: compiled kernels, valid inputs);
    `serial`: the calibration's base single-stream layout, timed after the branched graphs (with
    `cross_stream` only)."""

    layout: str
    shape: CalibrationShape
    pairs: tuple[PairAt, ...]
    backend: str
    tool: str  # names the measurement in the profile's sources
    protocol: PairProtocol = PairProtocol()
    cross_stream: bool = False
    serial: str = ""
    batches: tuple[int, ...] = ()  # cross_stream: the batches to time the serial layer at


@dataclass
class _Graph:
    """One graph to time and, once timed, its per-replay times in each process state."""

    batch: int
    kind: str  # chain | ladder | pair | layer
    units: int
    main: tuple[str, ...]
    alt: tuple[str, ...]
    graph: torch.cuda.CUDAGraph
    replays: dict[str, list[float]] = field(default_factory=dict)  # state -> us per replay

    def record(self, state: str) -> dict:
        t = sorted(self.replays[state])
        return {"state": state, "batch": self.batch, "kind": self.kind, "units": self.units,
                "main": list(self.main), "alt": list(self.alt), "replay_us": t[len(t) // 2],
                "replays": len(t), "p20_us": t[len(t) // 5], "p80_us": t[4 * len(t) // 5]}


class _Harness:
    """Bound nodes of one layer variant at one batch, and fork/join units built from them."""

    def __init__(self, scen: Scenario, backend: str, device: torch.device) -> None:
        self.scen = scen
        target = pick_target(scen, "cuda", backend)
        self.buffers = Buffers(scen.layer, LAYERS, device)
        self.bound = bind_layer(scen.layer, target.backend, collective_overrides(scen, target))
        self.streams = StreamSet(device)
        run_layers(scen.program, self.bound, self.buffers, self.streams)  # compiled kernels, valid inputs
        torch.cuda.synchronize(device)
        self.alt = torch.cuda.Stream(device)

    def call(self, node: str, layer: int) -> None:
        if node == NOOP:
            torch.cuda._sleep(0)  # one thread, returns at once: the smallest kernel there is
        else:
            self.bound[node](self.buffers.tensors(layer))

    def units(self, main: tuple[str, ...], alt: tuple[str, ...], units: int) -> None:
        for u in range(units):
            cur = torch.cuda.current_stream()
            if alt:
                self.alt.wait_stream(cur)
            for n in main:
                self.call(n, u % LAYERS)
            if alt:
                with torch.cuda.stream(self.alt):
                    for n in alt:
                        self.call(n, u % LAYERS)
                cur.wait_stream(self.alt)

    def layers(self) -> None:
        run_layers(self.scen.program, self.bound, self.buffers, self.streams)


class _Pool:
    """One memory pool for every graph: they replay one at a time, and a private pool of
    workspace per graph (~170 of them) would add up."""

    def __init__(self) -> None:
        self.handle = torch.cuda.graph_pool_handle()

    def capture(self, work: Callable[[], None]) -> torch.cuda.CUDAGraph:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.handle):
            work()
        return graph


def _at(path: str, shape: CalibrationShape, batch: int) -> Scenario:
    return load(path).override(model=shape.model, batch=batch, context=shape.context, tp=shape.tp,
                               page_size=shape.page_size, kv_cache=shape.kv_cache)


def _time(graphs: list[_Graph], state: str, p: PairProtocol) -> None:
    protocol = Measure(warmup=1, iters=p.replays, repeats=p.rounds, seconds=0.0)
    for g, t in zip(graphs, time_graphs([g.graph for g in graphs], protocol, lead_in=p.lead_in,
                                        warmup_s=p.settle_s)):
        g.replays[state] = t.per_replay_us


def _pair_shapes(pairs: list[PairAt]) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
    """The empty harness, each node beside an empty kernel, each pair."""
    shapes = [((NOOP,), (NOOP,))]
    for p in pairs:
        for s in (((p.first,), (NOOP,)), ((NOOP,), (p.second,)), ((p.first,), (p.second,))):
            if s not in shapes:
                shapes.append(s)
    return shapes


def _noop_us(h: _Harness, pool: _Pool, device: torch.device, replays: int = 2) -> float:
    """The empty kernel's own time, from the profiler over a chain of them (this session also
    leaves CUPTI attached: the `cupti` state)."""
    units = FENCE_UNITS[0]
    graph = pool.capture(lambda: h.units((NOOP,), (), units))
    graph.replay()
    torch.cuda.synchronize(device)
    kernels = [e for e in device_events(lambda: [graph.replay() for _ in range(replays)], device)
               if e.kind == "kernel"]
    return sum(e.end - e.start for e in kernels) / max(1, len(kernels))


def measure_pairs(job: PairsJob, out: Path) -> Path:
    """Run `job` on this process's GPU and write the pairwise file to `out` (atomically, once
    everything is measured). Meant for a process of its own (session.fresh.call_apart)."""
    t0 = time.perf_counter()
    device = torch.device("cuda")
    pool = _Pool()
    p = job.protocol
    pair_batches = sorted({q.batch for q in job.pairs})
    harness = {b: _Harness(_at(job.layout, job.shape, b), job.backend, device) for b in pair_batches}
    serial = {b: _Harness(_at(job.serial, job.shape, b), job.backend, device)
              for b in (job.batches if job.cross_stream else ())}
    any_harness = next(iter({**harness, **serial}.values()))
    graphs: list[_Graph] = []
    if job.cross_stream:
        for units in FENCE_UNITS:
            graphs.append(_Graph(0, "chain", units, (NOOP,), (),
                                 pool.capture(lambda u=units: any_harness.units((NOOP,), (), u))))
            graphs.append(_Graph(0, "ladder", units, (NOOP,), (NOOP,),
                                 pool.capture(lambda u=units: any_harness.units((NOOP,), (NOOP,), u))))
    for batch, h in harness.items():
        for main, alt in _pair_shapes([q for q in job.pairs if q.batch == batch]):
            graphs.append(_Graph(batch, "pair", p.units, main, alt,
                                 pool.capture(lambda m=main, a=alt, h=h: h.units(m, a, p.units))))
    layers = {b: _Graph(b, "layer", LAYERS, (h.scen.name,), (), pool.capture(h.layers)) for b, h in serial.items()}
    _time(graphs + list(layers.values()), CLEAN, p)
    noop_us = _noop_us(any_harness, pool, device)
    if layers:
        _time(list(layers.values()), CUPTI, p)
    scen = (harness[pair_batches[0]] if harness else any_harness).scen
    doc = {"tool": job.tool, "device": torch.cuda.get_device_name(device), "versions": versions(),
           "backend": job.backend, "model": scen.model.name,
           "shape": {k: v for k, v in vars(scen.shape).items() if k != "batch"}, "variant": vars(scen.variant),
           "layers": LAYERS, "units": p.units, "protocol": vars(p),
           "pairs": [[q.batch, q.first, q.second] for q in job.pairs],
           "records": [g.record(CLEAN) for g in graphs],
           "serial_layer_us": {s: {str(b): g.record(s)["replay_us"] / LAYERS for b, g in layers.items()}
                               for s in ((CLEAN, CUPTI) if layers else ())},
           "noop_us": noop_us, "seconds": time.perf_counter() - t0}
    return write_json_atomic(out, doc)
