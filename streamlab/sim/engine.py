"""Discrete-event simulation of a captured multi-layer graph on a device profile.

Lanes are physical streams (HIP: the depth-first queue rule; CUDA: one lane per capture stream).
A lane runs its nodes in dispatch order; a node starts when its lane is free (after the launch
gap: `launch_gap_us`, or `multi_stream_launch_gap_us` in a graph of several lanes, whose kernels
sit further apart on H100; both per batch where calibrated so) and every graph parent has
finished (plus the fence cost for a parent on another lane, counted from the parent's end: on
ROCm the wait is a barrier-AND packet that, reached before the parent's signal flips, polls a
host-memory signal until it does, and reached after it, polls once; rocm-systems #11212). Nodes of
one lane run in dispatch order, one after the other, whatever branch they came from (on HIP every
AQL dispatch carries the barrier bit). A gap below 0 is no idle: it is
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
graph with branches costs to launch), and each of its kernels but the FP8 GEMMs runs
`queue_wait_kernel_us` longer (on ROCm a cross-queue wait polls a host-memory signal: the MI355X
indexer's memory-bound kernels ran +0.5..2.4 us each with the alt stream on, its GEMMs ~+0).
A node under an SM / CU budget (`sms:`) runs its work stretched by the waves its kernels take
under the budget, claims at most its share of the SMs, and sheds overlap excess and concurrency
slowdown in proportion to the contention its budget removes: a model, sim/costs.py
`BudgetCosts`.

Every pair of compute kernels that shares the device is recorded as an `Overlap` (which was
dispatched first, whether a measured pair set their pace: never when three ran at once, how
much work each did beside the other): what the prediction interval and `calibrate --for` read.

Speed: the costs that do not depend on the schedule come precomputed (sim/costs.py); the
schedule is compiled once to index arrays (`LaneGraph`); the loop touches only lists of floats
and builds the Timeline only when asked (`Replay.timeline`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from streamlab.analysis import chained_bounds
from streamlab.layer import Layer
from streamlab.schedule.graph import captured, hip_queue_ids
from streamlab.schedule.program import Program
from streamlab.sim.costs import (
    BudgetCosts,
    LaneCosts,
    NodeCosts,
    budget_costs,
    node_costs,
)
from streamlab.sim.profile import DeviceProfile
from streamlab.timeline import Interval, Source, Timeline

EPS = 1e-9


@dataclass(frozen=True)
class LaneGraph:
    """A program captured over `layers` layers, as the engine walks it: graph node i is the
    (i % per_layer)-th launch of layer i // per_layer, with its layer node index, lane, parents
    and children (graph node indices, in edge creation order)."""

    node: list[int]  # graph node -> index in layer.nodes
    lane: list[int]
    lane_names: list[str]  # in order of each lane's first node
    lanes: list[list[int]]  # per lane: its graph nodes in dispatch order
    parents: list[list[int]]
    children: list[list[int]]
    per_layer: int  # launches per layer; each layer's first pays the layer entry
    layers: int

    @property
    def multi(self) -> bool:
        return len(self.lanes) > 1


def lane_graph(layer: Layer, program: Program, profile: DeviceProfile, layers: int) -> LaneGraph:
    """Capture `program` over `layers` layers and map it to lanes (HIP queue rule or CUDA lanes)."""
    c = captured(program, layers)
    by_node = [str(q) for q in hip_queue_ids(c, profile.hip_queues)] if profile.streams == "hip" else c.streams
    names = list(dict.fromkeys(by_node))
    lane = [names.index(s) for s in by_node] if len(names) > 1 else [0] * len(by_node)
    lanes: list[list[int]] = [[] for _ in names]
    for i, ln in enumerate(lane):
        lanes[ln].append(i)
    launches = [layer.index[op.node] for op in program.launches]
    return LaneGraph(launches * layers, lane, names, lanes, c.parents, c.children, len(launches), layers)


@dataclass(frozen=True)
class Overlap:
    """Two compute kernels that shared the device, `first` the one the engine let keep its pace
    (released first, or dispatched first when released together): the ordered pair the pairwise
    benchmark measures as (main, alt). `first_us` / `second_us`: standalone work each did beside
    the other, per layer."""

    first: str
    second: str
    measured: bool
    first_us: float
    second_us: float
    crowded: bool = False  # at some point beside a third kernel: no pair measurement settles that

    @property
    def pair(self) -> str:
        return f"{self.first}|{self.second}"

    @property
    def shorter_us(self) -> float:
        return min(self.first_us, self.second_us)


@dataclass
class Replay:
    """One simulated graph replay: the per-layer latency, the overlaps it created, and its
    Timeline (built on first use: ranking layouts needs only the latency)."""

    graph: LaneGraph
    costs: NodeCosts
    profile: str
    records: list[tuple[int, float, float]]  # (graph node, start, end) in end order
    overlaps: tuple[Overlap, ...]
    end_us: float
    budget: BudgetCosts | None = None  # the layout's SM / CU budgets, as modelled

    @property
    def per_layer_us(self) -> float:
        """Graph time / layers, as a replay timed with events reports it (entry gap included)."""
        return self.end_us / self.graph.layers

    @cached_property
    def timeline(self) -> Timeline:
        g, c = self.graph, self.costs
        out = []
        for i, start, end in self.records:
            n = g.node[i]
            out.append(Interval(c.ops[n], g.lane_names[g.lane[i]], start, end, c.names[n], i // g.per_layer,
                                "allreduce" if c.collective[n] else "kernel"))
        meta = {"profile": self.profile}
        if self.budget is not None:
            meta["sm_budgets"] = (", ".join(f"{n} {b}" for n, b in zip(c.names, self.budget.budgets) if b is not None)
                                  + f" of {self.budget.units}: modelled from the Triton grids (sim/costs.py), "
                                  "not measured")
        return Timeline(out, Source("simulated", self.profile, meta), chained_bounds(out, g.layers))


class _Run:
    """A kernel on its lane: released when the lane dispatched it, started when it first progressed."""

    __slots__ = (
        "collective",
        "hbm",
        "i",
        "lane",
        "node",
        "released",
        "remaining",
        "sm",
        "start",
        "waiting",
        "work",
    )

    def __init__(self, i: int, node: int, lane: int, t: float, work: float, hbm: float, sm: float,
                 collective: bool) -> None:
        self.i, self.node, self.lane = i, node, lane  # graph node (dispatch order), layer node, lane
        self.released = self.start = t
        self.work = self.remaining = work
        self.hbm, self.sm, self.collective = hbm, sm, collective
        self.waiting = False  # held back by the kernel it was released together with


def run(layer: Layer, program: Program, profile: DeviceProfile, layers: int = 4) -> Replay:
    """Simulate `layers` consecutive layers of `program` in one graph replay."""
    budgets = program.budgets
    return run_graph(lane_graph(layer, program, profile, layers), node_costs(layer, profile), profile.name,
                     budget_costs(layer, profile, budgets) if budgets else None)


def simulate(layer: Layer, program: Program, profile: DeviceProfile, layers: int = 4) -> Timeline:
    """The simulated replay as a Timeline, the currency every report reads."""
    return run(layer, program, profile, layers).timeline


def run_graph(g: LaneGraph, c: NodeCosts, profile: str, budget: BudgetCosts | None = None) -> Replay:
    """The event loop: start every lane whose next node is ready, advance to the next finish or
    start, repeat. One kernel running alone (most of the time) takes a path without sharing.
    `budget`: the layout's SM / CU budgets (None: none)."""
    multi = len(g.lanes) > 1
    lc = c.lane(multi)
    work, hbm, sm, solo, gap, fence = lc.work, lc.hbm, c.sm, lc.solo, lc.gap, c.fence
    if budget is not None:
        work, hbm, sm, solo = budget.lane(lc, sm, c.collective)
    collective, nodes, parents, children, lanes, per_layer = c.collective, g.node, g.parents, g.children, g.lanes, g.per_layer
    lane_of = g.lane
    lane_ids, n_lanes = range(len(lanes)), len(lanes)
    t = lc.graph_entry
    head = [0] * len(lanes)
    lane_free = [t] * len(lanes)
    ended = [0.0] * len(nodes)
    waiting_on = [len(p) for p in parents]  # unfinished parents
    ready: list[float | None] = [None] * len(lanes)  # when the lane's next node may start
    busy = [False] * len(lanes)
    running: list[_Run] = []
    records: list[tuple[int, float, float]] = []
    overlap: dict[tuple[int, int], list] = {}  # (first, second) -> [work of each, by a measured pair, crowded]

    def arm(ln: int) -> None:
        """The lane's next node: its start time once every parent has ended."""
        if head[ln] < len(lanes[ln]):
            i = lanes[ln][head[ln]]
            if not waiting_on[i]:
                at = lane_free[ln] + lc.layer_entry if i % per_layer == 0 else lane_free[ln]
                for p in parents[i]:
                    if lane_of[p] != ln and ended[p] + fence > at:
                        at = ended[p] + fence
                ready[ln] = at

    for ln in lane_ids:
        arm(ln)
    done, total = 0, len(nodes)
    while done < total:
        for ln in lane_ids:
            at = ready[ln]
            if at is not None and at <= t + EPS:
                i = lanes[ln][head[ln]]
                n = nodes[i]
                running.append(_Run(i, n, ln, t, work[n], hbm[n], sm[n], collective[n]))
                head[ln] += 1
                busy[ln] = True
                ready[ln] = None
        if len(running) == 1 and ready.count(None) == n_lanes:
            # One kernel and nothing else ready: its lane runs alone until another lane's next
            # node is released (the steps the general path below would take, without sharing).
            r = running[0]
            ln, i, n, start, remaining = r.lane, r.i, r.node, r.start, r.remaining
            while True:
                rate = solo[n]
                step = remaining / rate
                t += step
                done += 1
                ended[i] = t
                lane_free[ln] = t + gap
                records.append((i, start, t))
                busy[ln] = False
                for ch in children[i]:
                    waiting_on[ch] -= 1
                    if not waiting_on[ch] and lane_of[ch] != ln:
                        arm(lane_of[ch])
                arm(ln)
                at = ready[ln]
                if at is None or ready.count(None) != n_lanes - 1:
                    break
                if at > t + EPS:
                    t += at - t
                i = lanes[ln][head[ln]]
                n = nodes[i]
                head[ln] += 1
                ready[ln] = None
                busy[ln] = True
                start, remaining = t, work[n]
            running = []
            continue
        if not running:  # every lane waits: advance to the first release
            if ready.count(None) == n_lanes:
                raise RuntimeError("simulation deadlock: no node can start (a cycle in the graph?)")
            t += min(at for at in ready if at is not None) - t
            continue
        if len(running) == 1:  # alone while another lane waits for its release: no sharing
            r = running[0]
            rate = solo[r.node]
            step = r.remaining / rate
            for ln in lane_ids:
                at = ready[ln]
                if at is not None and at - t < step:
                    step = at - t
            t += step
            r.remaining -= rate * step
            if r.remaining <= EPS * max(1.0, r.work):
                i, ln = r.i, r.lane
                done += 1
                ended[i] = t
                lane_free[ln] = t + gap
                busy[ln] = False
                records.append((i, r.start, t))
                for ch in children[i]:
                    waiting_on[ch] -= 1
                    if not waiting_on[ch] and not busy[lane_of[ch]] and ready[lane_of[ch]] is None:
                        arm(lane_of[ch])
                if ready[ln] is None:
                    arm(ln)
                running = []
            continue
        rates, pairs = _rates(running, c, multi, fence, budget)
        step = float("inf")
        for r, rate in zip(running, rates):
            if rate > 0 and r.remaining / rate < step:
                step = r.remaining / rate
        for ln in lane_ids:
            at = ready[ln]
            if at is not None and at - t < step:
                step = at - t
        t += step
        for a, b, ra, rb, by_pair in pairs:
            acc = overlap.get((a.node, b.node))
            if acc is None:
                acc = overlap[(a.node, b.node)] = [0.0, 0.0, True, False]
            acc[0] += ra * step
            acc[1] += rb * step
            acc[2] = acc[2] and by_pair
            acc[3] = acc[3] or len(pairs) > 1
        kernel_ended = False
        still, held, freed = [], [], []
        for r, rate in zip(running, rates):
            r.remaining -= rate * step
            if r.remaining <= EPS * max(1.0, r.work):
                done += 1
                ended[r.i] = t
                lane_free[r.lane] = t + gap
                busy[r.lane] = False
                kernel_ended |= not r.collective
                records.append((r.i, r.start, t))
                freed.append(r.lane)
                for ch in children[r.i]:
                    waiting_on[ch] -= 1
                    if not waiting_on[ch]:
                        freed.append(lane_of[ch])
            else:
                still.append(r)
                if rate == 0:
                    held.append(r)
        for r in held:  # held back: it starts, and is released anew, when it first progresses
            r.start = r.released = t
            r.waiting = not kernel_ended  # the kernel holding it back is the one that ended
        for ln in freed:
            if not busy[ln] and ready[ln] is None:
                arm(ln)
        running = still
    per_layer = 1.0 / g.layers
    overlaps = tuple(Overlap(c.names[a], c.names[b], u[2] and (a, b) in c.measured_pairs, u[0] * per_layer,
                             u[1] * per_layer, u[3]) for (a, b), u in overlap.items())
    return Replay(g, c, profile, records, overlaps, t, budget)


def _rates(running: list[_Run], c: NodeCosts, multi_lane: bool, together_us: float,
           budget: BudgetCosts | None = None) -> tuple[list[float], list[tuple[_Run, _Run, float, float, bool]]]:
    """Progress per us of standalone work of each running kernel (see the module docstring), and
    every two compute kernels sharing the device: (first, second, their rates, whether a measured
    pair set them; three or more at once never are). Kernels released at most `together_us`
    apart count as released together. `budget`: SM budgets relieve the contention (`relief`)."""
    compute = [r for r in running if not r.collective]
    relief = budget.relief([r.node for r in compute]) if budget is not None and len(compute) > 1 else 1.0
    if len(compute) == 2:
        first, second, together = _pair_order(compute[0], compute[1], together_us)
        e = c.pairs.get((first.node, second.node))
        if e is not None:
            e = max(0.0, e) * relief
            ra, rb = _first_keeps_pace(first.work, second.work, e) if together else (1.0 / (1.0 + e),) * 2
        else:
            ra = rb = _shared(compute, c, len(running), relief)
        pairs = [(first, second, ra, rb, e is not None)]
        rate = {first.lane: ra, second.lane: rb}
    else:
        share = _shared(compute, c, len(running), relief)
        rate = {r.lane: share for r in compute}
        crowd = sorted(compute, key=lambda r: (r.released, r.i))
        pairs = [(a, b, share, share, False) for k, a in enumerate(crowd) for b in crowd[k + 1:]]
    slowed = multi_lane if c.ar_graph_scope else len(running) > 1
    ar = 1.0 / c.ar_factor if slowed else 1.0
    return [ar if r.collective else rate[r.lane] for r in running], pairs


def _shared(compute: list[_Run], c: NodeCosts, running: int, relief: float = 1.0) -> float:
    """The rate of each of several kernels sharing the device without a measured pair."""
    return min(1.0 / max(1.0, sum(r.hbm for r in compute), sum(r.sm for r in compute)),
               1.0 / (1.0 + c.concurrency_slowdown * relief * max(0, running - 1)))


def _pair_order(a: _Run, b: _Run, together_us: float) -> tuple[_Run, _Run, bool]:
    """(first, second, released together): one held back by the other stays second; two released
    together go in dispatch order; otherwise the one released first is first."""
    if (b.released, b.i) < (a.released, a.i):
        a, b = b, a
    if a.waiting or b.waiting:
        return (b, a, True) if a.waiting else (a, b, True)
    if b.released - a.released <= together_us + EPS:
        return (a, b, True) if a.i < b.i else (b, a, True)
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


def pair_excess(profile: DeviceProfile, first: Kernel, second: Kernel) -> float:
    """Two kernels started together on two lanes, `first` dispatched first, under the demand
    model (no measured pair): (makespan - longer latency) / shorter latency, 0 when they overlap
    for free and 1 when they serialize. What the pairwise benchmark measures."""
    costs = NodeCosts((), (), (), (), (), (), (), {}, frozenset(), 0.0, profile.concurrency_slowdown.value,
                      profile.ar_concurrency_factor.value, profile.ar_scope == "graph", _NO_LANE, _NO_LANE)
    runs = [_Run(i, i, i, 0.0, k.us, k.hbm, k.sm, False) for i, k in enumerate((first, second))]
    t = 0.0
    while runs:
        rates, _ = _rates(runs, costs, True, 0.0)
        step = min(r.remaining / rate for r, rate in zip(runs, rates))
        t += step
        for r, rate in zip(runs, rates):
            r.remaining -= rate * step
        runs = [r for r in runs if r.remaining > EPS * max(1.0, first.us, second.us)]
    return (t - max(first.us, second.us)) / min(first.us, second.us)


_NO_LANE = LaneCosts((), (), (), 0.0, 0.0, 0.0)


def per_layer_us(timeline: Timeline, layers: int) -> float:
    """Graph time / layers, as a replay timed with events reports it (entry gap included)."""
    return max(iv.end for iv in timeline.intervals) / layers
