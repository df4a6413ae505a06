"""A lower bound on a layout's simulated per-layer time, for branch and bound.

It is the simulator's schedule with sharing switched off: every kernel runs for its standalone
work, a lane runs its kernels in dispatch order with the launch gap after each, a kernel waits
for every graph parent plus the fence when the parent ran on another lane, and a graph of
several lanes pays its entry costs (per replay and before each layer's first kernel) and, on a
device whose all-reduce slows down in any graph of several lanes (`ar_scope: graph`), that
slowdown. Sharing (HBM, SMs, measured pairs) and an all-reduce slowed only while another lane
runs can only lengthen a kernel, so the simulated time is never below the bound; for a layout
with nothing beside anything (serial) the two are equal. `tests/test_search.py` checks both on
the shipped profiles, so a change in the engine that breaks the bound shows there.

The costs are read from the profile in `Costs.of`, the one place that knows how the engine
turns a profile into a lane's timing.
"""

from __future__ import annotations

from dataclasses import dataclass

from streamlab.schedule.graph import capture, hip_streams
from streamlab.schedule.program import Program
from streamlab.search.space import Space
from streamlab.sim.engine import isolated_us
from streamlab.sim.profile import Profile


@dataclass(frozen=True)
class LaneModel:
    """How capture streams become lanes on the device: "cuda" (a lane per capture stream) or
    "hip" (the queues of the depth-first rule, `schedule.graph.hip_streams`)."""

    kind: str = "cuda"
    queues: int = 4


@dataclass(frozen=True)
class Costs:
    """What the engine charges, per node in reference order and per lane event (us)."""

    work: tuple[float, ...]
    gap: float  # idle after each kernel on its lane
    fence: float  # extra wait on an edge between lanes
    entry: float  # per replay
    layer_entry: float  # before each layer's first kernel

    @classmethod
    def of(cls, space: Space, profile: Profile, *, multi_lane: bool) -> Costs:
        layer = space.layer
        batch = layer.dims.tokens
        per_kernel = profile.lane_gap_us(multi_lane, batch)
        gap, trim = max(0.0, per_kernel), min(0.0, per_kernel)
        slowed = multi_lane and profile.ar_scope == "graph"
        work = []
        for node in layer.nodes:
            k = profile.kernels(node)
            w = max(0.0, isolated_us(layer, profile, node.name) + (k - 1) * gap + k * trim)
            work.append(w * profile.ar_concurrency_factor.value if node.is_collective and slowed else w)
        entry = profile.graph_entry_us.value + (profile.multi_stream_graph_entry_us.value if multi_lane else 0.0)
        return cls(tuple(work), gap, profile.fence_us.at(batch), entry,
                   profile.multi_stream_entry_us.value if multi_lane else 0.0)


@dataclass(frozen=True)
class LaneGraph:
    """A layout as the bound sees it, over one or more consecutive layers. Node k stands for the
    space's node k % n of layer k // n; parents: any set of happens-before edges covering the
    reduced graph's."""

    n: int  # nodes per layer
    order: tuple[int, ...]  # dispatch order
    lane: tuple[int | str, ...]  # per node
    parents: tuple[tuple[int, ...], ...]  # per node

    @property
    def multi_lane(self) -> bool:
        return len(set(self.lane)) > 1

    @property
    def layers(self) -> int:
        return len(self.order) // self.n

    def repeated(self, layers: int) -> LaneGraph:
        """The same layout over `layers` layers, each starting once the one before has ended (on
        the streams that capture joins at a layer's end)."""
        n = self.n
        below = {q for ps in self.parents for q in ps}
        tails = tuple(v for v in range(n) if v not in below)
        first = self.order[0]
        order, lane, parents = [], [], []
        for layer in range(layers):
            base = layer * n
            order += [base + v for v in self.order]
            lane += self.lane
            for v in range(n):
                ps = tuple(base + q for q in self.parents[v])
                if v == first and layer:
                    ps += tuple(base - n + t for t in tails)
                parents.append(ps)
        return LaneGraph(n, tuple(order), tuple(lane), tuple(parents))


def schedule(costs: Costs, graph: LaneGraph) -> tuple[list[float], list[float]]:
    """Start and end of every node with sharing switched off (layer 0 starts at 0)."""
    n = graph.n
    start = [0.0] * len(graph.order)
    end = [0.0] * len(graph.order)
    last_on: dict[int | str, int] = {}
    first = graph.order[0] % n
    for v in graph.order:
        lane = graph.lane[v]
        t = costs.layer_entry if v % n == first else 0.0
        p = last_on.get(lane)
        if p is not None:
            t = max(t, end[p] + costs.gap)
        for q in graph.parents[v]:
            t = max(t, end[q] + (costs.fence if graph.lane[q] != lane else 0.0))
        start[v], end[v] = t, t + costs.work[v % n]
        last_on[lane] = v
    return start, end


def lower_bound(costs: Costs, graph: LaneGraph, layers: int | None = None) -> float:
    """Per-layer time of `layers` layers (default: the graph's), as `sim.engine.per_layer_us`
    counts it. Given one layer for several, the layers are taken to run back to back, each as
    the first does: on capture-stream lanes every layer is the same, and nothing a later layer
    adds can make the bound larger than the layers' own spans laid end to end."""
    _, end = schedule(costs, graph)
    span = max(end)
    repeat = (layers or graph.layers) // graph.layers
    if repeat == 1:
        return (costs.entry + span) / graph.layers
    # the next layer starts on the first node's lane once this one is done (every stream is
    # joined at a layer's end); the lane's gap applies when its own last kernel ends the layer
    lane = graph.lane[graph.order[0]]
    tail = next(v for v in reversed(graph.order) if graph.lane[v] == lane)
    between = costs.gap if end[tail] == span else 0.0
    return (costs.entry + repeat * span + (repeat - 1) * between) / (repeat * graph.layers)


class RegionBound:
    """A lower bound on every layout that completes a partly assigned region, the rest of the
    layer held as in `graph` (one layer, capture-stream lanes): the region's entry ends when it
    ends there, every assigned node runs as `schedule` would run it, each is followed by at least
    the work of its longest chain of descendants in the region, and everything after the region
    shifts with the node that closes it."""

    def __init__(self, space: Space, region: int, costs: Costs, graph: LaneGraph, layers: int) -> None:
        self.nodes = space.regions[region]
        self.costs, self.layers = costs, layers
        _, end = schedule(costs, graph)
        first, last = self.nodes[0], self.nodes[-1]
        self.entry_end = end[first - 1] if first > 0 else costs.layer_entry
        # after the region: the node that closes it and everything after it move together
        exit_node = last + 1 if last + 1 < space.size else None
        start, _ = schedule(costs, graph)
        self.after = max(end) - start[exit_node] if exit_node is not None else 0.0
        local = {v: j for j, v in enumerate(self.nodes)}
        m = len(self.nodes)
        self.tail = [0.0] * m
        for j in range(m - 1, -1, -1):
            kids = [local[c] for c in range(self.nodes[j] + 1, last + 1) if self.nodes[j] in space.parents[c]]
            self.tail[j] = max((costs.work[self.nodes[k]] + self.tail[k] for k in kids), default=0.0)
        self.end = [0.0] * m

    def __call__(self, j: int, streams: list[int], parents: list[int]) -> float:
        """The bound once positions 0..j are set (call in order: ends of 0..j-1 are kept);
        `parents[j]`: position j's reduced parents as a bitmask."""
        c, s = self.costs, streams[j]
        lane = next((k for k in range(j - 1, -1, -1) if streams[k] == s), None)
        t = self.entry_end + (c.gap if s == 0 else c.fence)
        if lane is not None:
            t = max(t, self.end[lane] + c.gap)
        mask, p = parents[j], 0
        while mask:
            if mask & 1:
                t = max(t, self.end[p] + (c.fence if streams[p] != s else 0.0))
            mask >>= 1
            p += 1
        self.end[j] = t + c.work[self.nodes[j]]
        closes = max(self.end[k] + self.tail[k] for k in range(j + 1))
        return (c.entry + self.layers * (closes + self.after)) / self.layers


def captured_graph(space: Space, program: Program, lanes: LaneModel, layers: int = 1) -> LaneGraph:
    """The lane graph of any program of the layer, from its captured graph over `layers` layers:
    capture streams as lanes on CUDA, the HIP queue rule's queues on ROCm (which may differ from
    layer to layer as the queue counter wraps)."""
    g = capture(program, layers)
    n = space.size
    index = {n_: i for i, n_ in enumerate(space.names)}

    def key(k: tuple[int, str]) -> int:
        return k[0] * n + index[k[1]]

    lane_of = hip_streams(g, lanes.queues) if lanes.kind == "hip" else g.stream_of
    lane: list[int | str] = [0] * (n * layers)
    parents: list[tuple[int, ...]] = [()] * (n * layers)
    for k in g.nodes:
        lane[key(k)] = lane_of[k]
        parents[key(k)] = tuple(key(p) for p in g.parents[k])
    return LaneGraph(n, tuple(key(k) for k in g.nodes), tuple(lane), tuple(parents))
