"""Attribute the kernels of profiled graph replays to DAG nodes.

Replayed kernels run on streams the graph executor picks, so stream ids say nothing about which
node a kernel belongs to. Instead: each node's kernel signature (names and grids, in order) is
known from profiling it alone; walking the replay's kernels in start order, a kernel belongs to
the earliest-dispatched node whose graph parents are fully matched and whose next expected
kernel it is. Dependencies make this unambiguous except between concurrent nodes with the same
signature, where dispatch order decides.
"""

from __future__ import annotations

from collections import deque

from streamlab.errors import Failure
from streamlab.exec.profiler import DeviceEvent
from streamlab.schedule.graph import CaptureGraph
from streamlab.timeline import Interval

Signature = list[tuple[str, tuple[int, ...]]]


def attribute(events: list[DeviceEvent], graph: CaptureGraph, signatures: dict[str, Signature],
              replays: int, layers_per_replay: int, collective_nodes: set[str]) -> list[Interval]:
    per_replay = sum(len(signatures[n]) for _, n in graph.nodes)
    if len(events) != per_replay * replays:
        raise Failure(f"kernel attribution: the profiler saw {len(events)} device operations in "
                      f"{replays} replays, the nodes' signatures add up to {per_replay} per replay; "
                      "a kernel launched differently inside the graph than alone")
    out: list[Interval] = []
    for r in range(replays):
        chunk = events[r * per_replay:(r + 1) * per_replay]
        out += _match(chunk, graph, signatures, r * layers_per_replay, collective_nodes)
    return out


def _match(events: list[DeviceEvent], graph: CaptureGraph, signatures: dict[str, Signature],
           layer_offset: int, collective_nodes: set[str]) -> list[Interval]:
    remaining = {key: deque(signatures[key[1]]) for key in graph.nodes}
    unmatched_parents = {key: len(graph.parents[key]) for key in graph.nodes}
    order = {key: i for i, key in enumerate(graph.nodes)}
    ready: list = []

    def enter(key) -> None:
        """A node whose parents are all matched can run; one with no kernels is done at once."""
        if remaining[key]:
            ready.append(key)
            ready.sort(key=order.__getitem__)
            return
        for child in graph.children[key]:
            unmatched_parents[child] -= 1
            if unmatched_parents[child] == 0:
                enter(child)

    for key in graph.nodes:
        if unmatched_parents[key] == 0:
            enter(key)
    out = []
    for ev in events:
        key = _pick(ev, ready, remaining, by_grid=True) or _pick(ev, ready, remaining, by_grid=False)
        if key is None:
            raise Failure(f"kernel attribution: {ev.name} (grid {ev.grid}), profiled kernel {len(out)} of the replay, "
                          f"matches no node that can run then; ready: "
                          + ", ".join(f"{k[1]}@{k[0]}" for k in ready[:6]))
        remaining[key].popleft()
        layer, node = key
        out.append(Interval(ev.name, ev.stream, ev.start, ev.end, node, layer + layer_offset,
                            "allreduce" if node in collective_nodes else ev.kind))
        if not remaining[key]:
            ready.remove(key)
            enter(key)
    return out


def _pick(ev: DeviceEvent, ready, remaining, by_grid: bool):
    name, grid = ev.identity
    for key in ready:
        if remaining[key]:
            want_name, want_grid = remaining[key][0]
            if want_name == name and (want_grid == grid or not by_grid):
                return key
    return None
