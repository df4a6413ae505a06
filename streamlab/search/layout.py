"""A point of the layout space, and the stream program it stands for.

A `Layout` says which stream runs each node, in which order the nodes are dispatched, and where
the layer synchronises every stream at once (a barrier: join every stream into main, fork them
back). Everything else follows: each stream runs its nodes in dispatch order, and every data
dependency that crosses streams becomes exactly one wait, from the producer to the consumer:

- `wait_stream` (a fork or join in scenario terms) when the producer is the last thing the source
  stream did at that point, so the edge it captures is producer -> consumer and nothing more;
- otherwise an event recorded right after the producer and waited on right before the consumer.

A wait that another wait already implies (happens-before is transitive) is not emitted. So the
captured graph holds every dependency the layer needs, the barriers' edges, and the streams'
own order: nothing else. Every program built here passes `schedule.validate.check`.
"""

from __future__ import annotations

from dataclasses import dataclass

from streamlab.layer import Variant
from streamlab.schedule.program import (
    MAIN,
    Launch,
    Op,
    Program,
    Record,
    WaitEvent,
    WaitStream,
)
from streamlab.search.space import Space

STREAM_NAMES = (MAIN, "alt", "alt2", "alt3")


@dataclass(frozen=True)
class Layout:
    """Node i is the space's node i (the layer's reference order).

    streams: the stream of each node, 0 = main; numbered by first use within each region.
    order: the dispatch order, a permutation of the node indices.
    barriers: reference positions p: every node of p's region before p happens before every
    node of the region from p on.
    options: per-node launch options, ((node, ((key, value), ...)), ...), sorted: `sms`, the
    node's SM / CU budget (a scenario's `sms:`; search/budgets.py chooses them).
    """

    variant: Variant
    streams: tuple[int, ...]
    order: tuple[int, ...]
    barriers: tuple[int, ...] = ()
    options: tuple[tuple[int, tuple[tuple[str, int], ...]], ...] = ()

    @property
    def stream_count(self) -> int:
        return max(self.streams) + 1

    def stream_name(self, i: int) -> str:
        return STREAM_NAMES[self.streams[i]]

    def describe(self, space: Space) -> str:
        """Which nodes leave the main stream, per stream: the short name of a layout."""
        budgets = "; ".join(f"{space.names[v]} on {dict(kv)['sms']} SMs" for v, kv in self.options
                            if "sms" in dict(kv))
        plain = self._describe(space)
        return f"{plain}; {budgets}" if budgets else plain

    def _describe(self, space: Space) -> str:
        off: dict[int, list[str]] = {}
        for i, s in enumerate(self.streams):
            if s:
                off.setdefault(s, []).append(space.names[i])
        if not off:
            return "serial"
        parts = [f"{STREAM_NAMES[s]}: {' '.join(group_names(space, names))}" for s, names in sorted(off.items())]
        if self.barriers:
            parts.append("barrier before " + ", ".join(space.names[p] for p in self.barriers))
        # release orders other than the reference one show as kernels dispatched ahead of it
        ahead = [f"{space.names[a]} before {space.names[b]}" for a, b in zip(self.order, self.order[1:]) if a > b]
        if ahead:
            parts.append("dispatch " + ", ".join(ahead))
        return "; ".join(parts)


def group_names(space: Space, names: list[str]) -> list[str]:
    """Node names with each whole group of the layer (of more than one node) written as the
    group's name, the larger groups first: how a scenario file and a layout's name say them."""
    groups = sorted(((g, m) for g, m in space.layer.groups.items() if len(m) > 1), key=lambda gm: -len(gm[1]))
    out, i = [], 0
    while i < len(names):
        for g, members in groups:
            if names[i:i + len(members)] == members:
                out.append(g)
                i += len(members)
                break
        else:
            out.append(names[i])
            i += 1
    return out


def build_program(space: Space, layout: Layout) -> Program:
    """The stream program of a layout (see the module docstring)."""
    n, streams = space.size, layout.streams
    count = max(streams) + 1
    chain: list[list[int]] = [[] for _ in range(count)]
    pos = [0] * n  # 1-based position of each node on its stream
    seen = [[0] * count for _ in range(count)]  # seen[s][t]: how far stream s has seen stream t
    after_launch: dict[int, list[int]] = {}  # stream clocks right after each node's launch
    last_launch: list[int | None] = [None] * count  # set when a stream's last op was a launch
    forked = [s == 0 for s in range(count)]  # waited on something in this layer
    pre: dict[int, list[Op]] = {v: [] for v in range(n)}
    post: dict[int, list[Op]] = {v: [] for v in range(n)}
    recorded: set[int] = set()
    region_of = {v: r for r, nodes in enumerate(space.regions) for v in nodes}
    cuts = {p: region_of[p] for p in layout.barriers}
    rank = {v: i for i, v in enumerate(layout.order)}
    left: dict[tuple[int | None, int], int] = {}  # launches still to come per (region, stream)
    for v in range(n):
        key = (region_of.get(v), streams[v])
        left[key] = left.get(key, 0) + 1

    def absorb(w: int, clock: list[int]) -> None:
        seen[w] = [max(a, b) for a, b in zip(seen[w], clock)]
        last_launch[w] = None
        forked[w] = True

    passed: set[int] = set()
    for v in layout.order:
        w = streams[v]
        ops = pre[v]
        region = region_of.get(v)
        for p, r in cuts.items():
            if r == region and v >= p and p not in passed:
                passed.add(p)
                for t in range(1, count):
                    if seen[0][t] < len(chain[t]):
                        ops.append(WaitStream(MAIN, STREAM_NAMES[t], 0, "join"))
                        absorb(0, seen[t])
                for t in range(1, count):
                    if left.get((region, t), 0):
                        ops.append(WaitStream(STREAM_NAMES[t], MAIN, 0, "fork"))
                        absorb(t, seen[0])
        need: dict[int, int] = {}
        for p in space.parents[v]:
            t = streams[p]
            if t != w:
                need[t] = max(need.get(t, 0), pos[p])
        # wait on the latest producer first: its clock may already cover the others
        for t in sorted(need, key=lambda t: -rank[chain[t][need[t] - 1]]):
            if seen[w][t] >= need[t]:
                continue
            u = chain[t][need[t] - 1]
            if last_launch[t] == u:
                ops.append(WaitStream(STREAM_NAMES[w], STREAM_NAMES[t], 0, "join" if w == 0 else "fork"))
                absorb(w, seen[t])
            else:
                event = f"e_{space.names[u]}"
                if u not in recorded:
                    recorded.add(u)
                    post[u].append(Record(event, STREAM_NAMES[t]))
                ops.append(WaitEvent(event, STREAM_NAMES[w]))
                absorb(w, after_launch[u])
        if not forked[w]:  # a stream joins the capture (and this layer) through a wait on main
            ops.append(WaitStream(STREAM_NAMES[w], MAIN, 0, "fork"))
            absorb(w, seen[0])
        chain[w].append(v)
        pos[v] = len(chain[w])
        seen[w][w] = pos[v]
        after_launch[v] = list(seen[w])
        last_launch[w] = v
        left[(region, w)] -= 1
    ops_out: list[Op] = []
    sms = {v: dict(kv)["sms"] for v, kv in layout.options if "sms" in dict(kv)}
    for v in layout.order:
        ops_out += pre[v]
        ops_out.append(Launch(space.names[v], STREAM_NAMES[streams[v]], sms=sms.get(v)))
        ops_out += post[v]
    for t in range(1, count):  # a layer that ends inside a region still ends joined
        if seen[0][t] < len(chain[t]):
            ops_out.append(WaitStream(MAIN, STREAM_NAMES[t], 0, "join"))
            absorb(0, seen[t])
    return Program(ops_out)
