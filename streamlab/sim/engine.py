"""Discrete-event simulation of a captured multi-layer graph on a device profile.

Lanes are physical streams (HIP: the depth-first queue rule; CUDA: one lane per capture stream).
A lane runs its nodes in dispatch order; a node starts when its lane is free (after the launch
gap: `launch_gap_us`, or `multi_stream_launch_gap_us` in a graph of several lanes, whose kernels
sit further apart on H100; both per batch where calibrated so) and every graph parent has
finished (plus the fence cost for a parent on another lane). A gap below 0 is no idle: it is
what each kernel runs shorter than its node latency says (node latencies come from profiled
replays, which run slower than replays timed with events), so it shortens every kernel.
Running kernels share the device as a fluid. For two kernels whose ordered pair (dispatched
first, then the other) was measured together by the pairwise benchmark, e being that pair's
overlap excess (0: free overlap, 1: as slow as one after the other; two GEMMs that each fill the
SMs measure e > 1 on H100), the rates reproduce the measured makespan max + e * min:
- released together (within one fence of each other: what one completion releasing both looks
  like here, a cross-lane edge paying the fence), the first in dispatch order keeps its pace and
  the other takes what is left; past e = 1 the other waits, and starts, once the first has ended.
  This is what the H100 traces show: q_b_proj keeps its pace and idx_wq_b starts ~4 us later,
  when q_b_proj's blocks drain; router_gate runs at its own pace beside shared_gate_up;
- one released while the other already runs: both run at 1 / (1 + e).
Splitting every pair alike put router_gate on the MoE dual layout's critical path at twice its
time and misranked it at batch 1; the split by release makes node times inside the layer closer
to the traces (bench/sim_accuracy.py --traces).
Kernels of an unmeasured pair, or three at once, each progress at
min(1 / max(1, total HBM demand, total SM demand), 1 / (1 + concurrency_slowdown * (kernels running - 1)));
HBM demand is the node's bytes over its latency at full bandwidth, SM demand the share of the
SMs it keeps busy alone (fitted to the same pairs). An all-reduce runs
`ar_concurrency_factor` times slower while another lane is busy, or, with `ar_scope: graph`
(what MI355X shows), in any graph that uses more than one lane. A graph of several lanes also
idles `multi_stream_entry_us` before each layer's first kernel (what the MI355X trace shows as a
stall at every layer's re-entry) and `multi_stream_graph_entry_us` once per replay (what a CUDA
graph with branches costs to launch).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from streamlab.analysis import chained_bounds
from streamlab.layer import Layer, Variant, build_layer
from streamlab.models import RankDims
from streamlab.schedule.graph import capture, hip_streams
from streamlab.schedule.program import Program
from streamlab.sim.profile import Profile
from streamlab.timeline import Interval, Source, Timeline

EPS = 1e-9


@dataclass
class _Run:
    key: tuple[int, str]
    lane: str
    released: float  # when its lane dispatched it
    start: float  # when it first progressed (later than released while it waits for the SMs)
    work: float  # us of standalone work in all
    remaining: float  # us of standalone work left
    demand: float  # HBM
    sm: float
    collective: bool
    order: int  # dispatch order: which of two kernels released together goes first
    waiting: bool = False  # held back by the kernel it was released together with


def simulate(layer: Layer, program: Program, profile: Profile, layers: int = 4) -> Timeline:
    graph = capture(program, layers)
    if profile.streams == "hip":
        phys = hip_streams(graph, profile.hip_queues)
        lane_of = {k: str(v) for k, v in phys.items()}
    else:
        lane_of = dict(graph.stream_of)
    nodes = {n.name: n for n in layer.nodes}
    multi = len(set(lane_of.values())) > 1
    batch = layer.dims.tokens
    per_kernel = profile.lane_gap_us(multi, batch)
    gap, trim = max(0.0, per_kernel), min(0.0, per_kernel)  # idle after each kernel; or each runs shorter
    alone = {n.name: isolated_us(layer, profile, n.name) for n in layer.nodes}
    work = {key: max(0.0, alone[key[1]] + (k - 1) * gap + k * trim)
            for key in graph.nodes for k in [profile.kernels(nodes[key[1]])]}
    demand = {k: profile.bandwidth_demand(nodes[k[1]], work[k]) for k in graph.nodes}
    sm = {n: profile.node_sm_demand(n, batch) for n in nodes}
    pairs = profile.pairs_at(batch)
    fence = profile.fence_us.at(batch)
    order = {key: i for i, key in enumerate(graph.nodes)}
    lanes: dict[str, list[tuple[int, str]]] = {}
    for key in graph.nodes:
        lanes.setdefault(lane_of[key], []).append(key)
    entry = profile.graph_entry_us.value + (profile.multi_stream_graph_entry_us.value if multi else 0.0)
    first = program.launches[0].node
    layer_entry = profile.multi_stream_entry_us.value if multi else 0.0
    head = {lane: 0 for lane in lanes}
    lane_free = {lane: entry for lane in lanes}
    running: dict[str, _Run] = {}
    ended: dict[tuple[int, str], float] = {}
    out: list[Interval] = []
    t = entry

    def ready_at(lane: str) -> float | None:
        """When the lane's next node may start, or None while a parent is unfinished."""
        key = lanes[lane][head[lane]]
        at = lane_free[lane]
        if key[1] == first:
            at += layer_entry
        for p in graph.parents[key]:
            if p not in ended:
                return None
            if lane_of[p] != lane:
                at = max(at, ended[p] + fence)
        return at

    while len(ended) < len(graph.nodes):
        for lane in lanes:
            if lane in running or head[lane] >= len(lanes[lane]):
                continue
            at = ready_at(lane)
            if at is not None and at <= t + EPS:
                key = lanes[lane][head[lane]]
                running[lane] = _Run(key, lane, t, t, work[key], work[key], demand[key], sm[key[1]],
                                     nodes[key[1]].is_collective, order[key])
                head[lane] += 1
        rates = _rates(running, profile, multi, pairs, fence)
        finish = min((r.remaining / rates[lane] for lane, r in running.items() if rates[lane] > 0),
                     default=float("inf"))
        starts = [at for lane in lanes if lane not in running and head[lane] < len(lanes[lane])
                  for at in [ready_at(lane)] if at is not None and at > t + EPS]
        step = min([finish] + [s - t for s in starts])
        if step == float("inf"):
            raise RuntimeError("simulation deadlock: no node can start (a cycle in the graph?)")
        t += step
        kernel_ended = False
        for lane in list(running):
            r = running[lane]
            r.remaining -= rates[lane] * step
            if r.remaining <= EPS * max(1.0, r.work):
                del running[lane]
                ended[r.key] = t
                lane_free[lane] = t + gap
                kernel_ended |= not r.collective
                node = nodes[r.key[1]]
                out.append(Interval(node.op, lane, r.start, t, node.name, r.key[0],
                                    "allreduce" if r.collective else "kernel"))
        for lane, r in running.items():
            if rates[lane] == 0:  # held back: it starts, and is released anew, when it first progresses
                r.start = r.released = t
                r.waiting = not kernel_ended  # the kernel holding it back is the one that ended
    return Timeline(out, Source("simulated", profile.name, {"profile": profile.name}),
                    chained_bounds(out, layers))


def isolated_us(layer: Layer, profile: Profile, name: str) -> float:
    """The profile's latency of a node alone at the layer's batch size."""
    def fit_at(batch: int) -> float:
        return profile.fit_us(_layer_at(layer.dims, layer.variant, batch).node(name))
    return profile.isolated_us(layer.node(name), layer.dims.tokens, fit_at, layer.variant)


@lru_cache(maxsize=64)
def _layer_at(dims: RankDims, variant: Variant, batch: int) -> Layer:
    return build_layer(RankDims(dims.model, dims.shape.with_(batch=batch)), variant)


def _rates(running: dict[str, _Run], profile: Profile, multi_lane: bool,
           pairs: dict[tuple[str, str], float] | None = None, together_us: float = 0.0) -> dict[str, float]:
    """Progress per us of standalone work of each running kernel (see the module docstring).
    `pairs`: measured overlap excess of (dispatched first, dispatched second) node pairs;
    `together_us`: kernels released at most this far apart count as released together."""
    compute = [r for r in running.values() if not r.collective]
    rates = {}
    first, second, together = _pair_order(compute, together_us) if len(compute) == 2 else (None, None, False)
    e = pairs.get((first.key[1], second.key[1])) if pairs and first else None
    if e is not None and together:
        rates[first.lane], rates[second.lane] = _first_keeps_pace(first.work, second.work, max(0.0, e))
    elif e is not None:
        rates[first.lane] = rates[second.lane] = 1.0 / (1.0 + max(0.0, e))
    else:
        share = min(1.0 / max(1.0, sum(r.demand for r in compute), sum(r.sm for r in compute)),
                    1.0 / (1.0 + profile.concurrency_slowdown.value * max(0, len(running) - 1)))
        rates.update((r.lane, share) for r in compute)
    for lane, r in running.items():
        if r.collective:
            slowed = multi_lane if profile.ar_scope == "graph" else len(running) > 1
            rates[lane] = 1.0 / profile.ar_concurrency_factor.value if slowed else 1.0
    return rates


def _pair_order(pair: list[_Run], together_us: float) -> tuple[_Run, _Run, bool]:
    """(first, second, released together): one held back by the other stays second; two released
    together go in dispatch order; otherwise the one released first is first."""
    a, b = sorted(pair, key=lambda r: (r.released, r.order))
    if a.waiting or b.waiting:
        return (b, a, True) if a.waiting else (a, b, True)
    if b.released - a.released <= together_us + EPS:
        return (a, b, True) if a.order < b.order else (b, a, True)
    return a, b, False


def _first_keeps_pace(a: float, b: float, e: float) -> tuple[float, float]:
    """Rates of two kernels released together, `a` us dispatched first and `b` us second, that
    give the measured makespan max(a, b) + e * min(a, b): the first runs at full pace and the
    second takes what is left; past e = 1 the second waits for the first, which itself slows."""
    if e <= 1.0:
        return 1.0, (1.0 - e) * min(a, b) / a
    return a / (max(a, b) + e * min(a, b) - b), 0.0


@dataclass(frozen=True)
class Kernel:
    """A node as the fluid sees it: standalone latency, HBM demand, SM demand."""

    us: float
    hbm: float
    sm: float


def pair_excess(profile: Profile, first: Kernel, second: Kernel) -> float:
    """Two kernels started together on two lanes, `first` dispatched first, under the demand
    model (no measured pair): (makespan - longer latency) / shorter latency, 0 when they overlap
    for free and 1 when they serialize. What the pairwise benchmark measures."""
    runs = {lane: _Run((0, lane), lane, 0.0, 0.0, k.us, k.us, k.hbm, k.sm, False, i)
            for i, (lane, k) in enumerate((("a", first), ("b", second)))}
    t = 0.0
    while runs:
        rates = _rates(runs, profile, True)
        step = min(r.remaining / rates[lane] for lane, r in runs.items())
        t += step
        for lane in list(runs):
            runs[lane].remaining -= rates[lane] * step
            if runs[lane].remaining <= EPS * max(1.0, first.us, second.us):
                del runs[lane]
    return (t - max(first.us, second.us)) / min(first.us, second.us)


def per_layer_us(timeline: Timeline, layers: int) -> float:
    """Graph time / layers, as a replay timed with events reports it (entry gap included)."""
    return max(iv.end for iv in timeline.intervals) / layers
