"""Discrete-event simulation of a captured multi-layer graph on a device profile.

Lanes are physical streams (HIP: the depth-first queue rule; CUDA: one lane per capture stream).
A lane runs its nodes in dispatch order; a node starts when its lane is free (after the launch
gap: `launch_gap_us`, or `multi_stream_launch_gap_us` in a graph of several lanes, whose kernels
sit further apart on H100; both per batch where calibrated so) and every graph parent has
finished (plus the fence cost for a parent on another lane). A gap below 0 is no idle: it is
what each kernel runs shorter than its node latency says (node latencies come from profiled
replays, which run slower than replays timed with events), so it shortens every kernel.
Running kernels share the device as a fluid. Two kernels whose ordered pair (the one that started
first, then the other) was measured together by the pairwise benchmark both run at 1 / (1 + e)
while both run, e being that pair's overlap excess (0: free overlap, 1: as slow as one after the
other; two GEMMs that each fill the SMs measure e > 1 on H100): this reproduces the measured
makespan for any two latencies. It slows both alike, though on H100 the one dispatched first
slows less (router_gate beside shared_gate_up: +20% vs +67%); a split that keeps the first at
full pace also reproduces the makespans but put the dual-stream layouts further off (MAPE 1.7%
vs 0.9% on the in-process H100 matrix of 2026-11-21), so the simpler symmetric split stays.
Otherwise each progresses at
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
    start: float
    remaining: float  # us of standalone work left
    demand: float  # HBM
    sm: float
    collective: bool
    order: int  # dispatch order: breaks ties between kernels that start together


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
                running[lane] = _Run(key, lane, t, work[key], demand[key], sm[key[1]],
                                     nodes[key[1]].is_collective, order[key])
                head[lane] += 1
        rates = _rates(running, profile, multi, pairs)
        finish = min((r.remaining / rates[lane] for lane, r in running.items()), default=float("inf"))
        starts = [at for lane in lanes if lane not in running and head[lane] < len(lanes[lane])
                  for at in [ready_at(lane)] if at is not None and at > t + EPS]
        step = min([finish] + [s - t for s in starts])
        if step == float("inf"):
            raise RuntimeError("simulation deadlock: no node can start (a cycle in the graph?)")
        t += step
        for lane in list(running):
            r = running[lane]
            r.remaining -= rates[lane] * step
            if r.remaining <= EPS * max(1.0, work[r.key]):
                del running[lane]
                ended[r.key] = t
                lane_free[lane] = t + gap
                node = nodes[r.key[1]]
                out.append(Interval(node.op, lane, r.start, t, node.name, r.key[0],
                                    "allreduce" if r.collective else "kernel"))
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
           pairs: dict[tuple[str, str], float] | None = None) -> dict[str, float]:
    """Progress per us of standalone work of each running kernel (see the module docstring).
    `pairs`: measured overlap excess of (started first, started second) node pairs."""
    compute = sorted((r for r in running.values() if not r.collective), key=lambda r: (r.start, r.order))
    pair = (compute[0].key[1], compute[1].key[1]) if len(compute) == 2 else None
    if pairs and pair in pairs:
        share = 1.0 / (1.0 + max(0.0, pairs[pair]))
    else:
        share = min(1.0 / max(1.0, sum(r.demand for r in compute), sum(r.sm for r in compute)),
                    1.0 / (1.0 + profile.concurrency_slowdown.value * max(0, len(running) - 1)))
    rates = {}
    for lane, r in running.items():
        if r.collective:
            slowed = multi_lane if profile.ar_scope == "graph" else len(running) > 1
            rates[lane] = 1.0 / profile.ar_concurrency_factor.value if slowed else 1.0
        else:
            rates[lane] = share
    return rates


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
    runs = {lane: _Run((0, lane), lane, 0.0, k.us, k.hbm, k.sm, False, i)
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
