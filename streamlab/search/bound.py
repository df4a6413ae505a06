"""A lower bound on a layout's simulated per-layer time, for branch and bound.

It is the simulator's schedule with sharing switched off: every kernel runs for the time it
takes alone (`sim.costs.node_costs`: its work over its rate alone, the all-reduce slowed in any
graph of several lanes where the profile says so), a lane runs its kernels in dispatch order
with the launch gap after each, a kernel waits for every graph parent plus the fence when the
parent ran on another lane, and a graph of several lanes pays its entry costs. Sharing (HBM,
SMs, measured pairs) and an all-reduce slowed only while another lane runs can only lengthen a
kernel, so the simulated time is never below the bound; with nothing beside anything (serial)
the two are equal. `tests/test_search.py` checks both on the shipped profiles, so a change in
the engine that breaks the bound shows there.
"""

from __future__ import annotations

from dataclasses import dataclass

from streamlab.layer import Layer
from streamlab.schedule.program import Program
from streamlab.search.space import Space
from streamlab.sim.costs import node_costs
from streamlab.sim.engine import lane_graph
from streamlab.sim.profile import DeviceProfile


@dataclass(frozen=True)
class LaneModel:
    """How capture streams become lanes on the device: "cuda" (a lane per capture stream) or
    "hip" (the queues of the depth-first rule, `schedule.graph.hip_queue_ids`)."""

    kind: str = "cuda"
    queues: int = 4


@dataclass(frozen=True)
class Costs:
    """What the engine charges (us): per layer node in reference order, and per lane event."""

    alone: tuple[float, ...]  # a kernel's time with the device to itself
    gap: float  # idle after each kernel on its lane
    fence: float  # extra wait on an edge between lanes
    entry: float  # per replay
    layer_entry: float  # before each layer's first kernel

    @classmethod
    def of(cls, layer: Layer, profile: DeviceProfile, *, multi_lane: bool) -> Costs:
        c = node_costs(layer, profile)
        lc = c.lane(multi_lane)
        return cls(tuple(w / r for w, r in zip(lc.work, lc.solo)), lc.gap, c.fence, lc.graph_entry, lc.layer_entry)


@dataclass(frozen=True)
class LaneGraph:
    """A layout as the bound sees it, over one or more layers: graph node i is the i-th launch in
    dispatch order; `node[i]` its node of the layer (reference index), `lane[i]` its lane,
    `parents[i]` graph nodes that happen before it (any set covering the reduced graph's)."""

    node: tuple[int, ...]
    lane: tuple[int | str, ...]
    parents: tuple[tuple[int, ...], ...]
    per_layer: int

    @property
    def layers(self) -> int:
        return len(self.node) // self.per_layer

    @property
    def multi_lane(self) -> bool:
        return len(set(self.lane)) > 1


def schedule(costs: Costs, graph: LaneGraph) -> tuple[list[float], list[float]]:
    """Start and end of every graph node with sharing switched off (the replay starts at 0)."""
    start = [0.0] * len(graph.node)
    end = [0.0] * len(graph.node)
    last_on: dict[int | str, int] = {}
    for i, v in enumerate(graph.node):
        lane = graph.lane[i]
        t = costs.layer_entry if i % graph.per_layer == 0 else 0.0
        p = last_on.get(lane)
        if p is not None:
            t = max(t, end[p] + costs.gap)
        for q in graph.parents[i]:
            t = max(t, end[q] + (costs.fence if graph.lane[q] != lane else 0.0))
        start[i], end[i] = t, t + costs.alone[v]
        last_on[lane] = i
    return start, end


def lower_bound(costs: Costs, graph: LaneGraph, layers: int | None = None) -> float:
    """Per-layer time of `layers` layers (default: the graph's), as the engine's per-layer latency
    counts it. Given one layer for several, the layers are taken to run back to back, each as the
    first does: on capture-stream lanes every layer is the same, and nothing a later layer adds
    can make the bound larger than the layers' own spans laid end to end."""
    _, end = schedule(costs, graph)
    span = max(end)
    repeat = (layers or graph.layers) // graph.layers
    if repeat == 1:
        return (costs.entry + span) / graph.layers
    # the next layer starts on the first node's lane once this one is done (every stream is
    # joined at a layer's end); the lane's gap applies when its own last kernel ends the layer
    lane = graph.lane[0]
    tail = next(i for i in range(len(graph.node) - 1, -1, -1) if graph.lane[i] == lane)
    between = costs.gap if end[tail] == span else 0.0
    return (costs.entry + repeat * span + (repeat - 1) * between) / (repeat * graph.layers)


def captured_graph(layer: Layer, program: Program, profile: DeviceProfile, layers: int) -> LaneGraph:
    """The lane graph the engine itself builds for any program of the layer: capture streams as
    lanes on CUDA, the HIP queue rule's queues on ROCm (which may differ from layer to layer as
    the queue counter wraps)."""
    g = lane_graph(layer, program, profile, layers)
    return LaneGraph(tuple(g.node), tuple(g.lane), tuple(tuple(p) for p in g.parents), g.per_layer)


class RegionBound:
    """A lower bound on every layout that completes a partly assigned region, the rest of the
    layer held as in `graph` (one layer, capture-stream lanes): the region's entry ends when it
    ends there, every assigned node runs as `schedule` would run it, each is followed by at least
    the time alone of its longest chain of descendants in the region, and everything after the
    region shifts with the node that closes it."""

    def __init__(self, space: Space, region: int, costs: Costs, graph: LaneGraph, layers: int) -> None:
        self.nodes = space.regions[region]
        self.costs, self.layers = costs, layers
        start, end = schedule(costs, graph)
        at = {v: i for i, v in enumerate(graph.node[:graph.per_layer])}
        first, last = self.nodes[0], self.nodes[-1]
        self.entry_end = end[at[first - 1]] if first > 0 else costs.layer_entry
        # after the region: the node that closes it and everything after it move together
        self.after = max(end) - start[at[last + 1]] if last + 1 < space.size else 0.0
        local = {v: j for j, v in enumerate(self.nodes)}
        m = len(self.nodes)
        self.tail = [0.0] * m
        for j in range(m - 1, -1, -1):
            kids = [local[c] for c in range(self.nodes[j] + 1, last + 1) if self.nodes[j] in space.parents[c]]
            self.tail[j] = max((costs.alone[self.nodes[k]] + self.tail[k] for k in kids), default=0.0)
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
        self.end[j] = t + c.alone[self.nodes[j]]
        closes = max(self.end[k] + self.tail[k] for k in range(j + 1))
        return (c.entry + self.layers * (closes + self.after)) / self.layers
