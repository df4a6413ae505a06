"""What-if: replay a trace's own dependency graph with some kernels changed, and say what the
layers and steps would have taken.

A change is `KEY=VALUE`. KEY: `stall` (the all-stream-idle gaps of >= 2 us, analysis.STALL_US),
a kernel class (analysis.kernel_class: allreduce, attention, gemm, moe, norm, ...), a DAG node
the trace names, or else a regular expression searched in kernel names. VALUE: a time (`10us`,
`0.01ms`, `500ns`) or a factor (`0.5x`). A time sets each matched *call* to it: the kernels of
one node in one layer together (their shares kept), or one kernel where no node is known; a
factor scales each matched kernel; for `stall`, each stall's length. Changes apply in order.

The replay (`replay`): intervals in time order (a topological order of the graph, since every
dependency started earlier); a kernel with dependencies starts its observed lag after the last
of them ends, where the lag is what it was in the trace (start - the latest end among its
dependencies: launch latency, fence, stall); a kernel with none keeps its start. Unchanged, the
replay reproduces the trace exactly. `stall` shortens the lag of the kernel that ends a stall by
the time removed. Layer windows move with the kernels that bound them. Limits, said with every
result: the dependencies are those deps.DepGraph knows (stream order alone where the trace holds
no more, `DepGraph.note`); kernels keep their durations unless changed, so contention that a
change would relieve or add is not modelled; in an eager trace a kernel keeps its gap after its
dependencies even where the CPU launched it late.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace

from streamlab.analysis import (
    COLLECTIVE_CLASSES,
    KERNEL_CLASSES,
    STALL_US,
    Stat,
    Summary,
    gaps,
    kernel_class,
    summarize,
)
from streamlab.errors import EXIT_BAD_INPUT, Failure
from streamlab.results import Shift, WhatIf, WhatIfMatch
from streamlab.timeline import Interval, Timeline
from streamlab.trace.deps import DepGraph

__all__ = ["CLASSES", "STALL", "Change", "parse_change", "replay", "replayed", "what_if"]

CLASSES = tuple(dict.fromkeys(COLLECTIVE_CLASSES + tuple(c for c, _ in KERNEL_CLASSES)
                              + ("memcpy", "memset", "other")))
STALL = "stall"
_VALUE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*(us|ms|ns|x)?\s*$")
_UNIT_US = {"us": 1.0, "ms": 1e3, "ns": 1e-3}


@dataclass(frozen=True)
class Change:
    """One KEY=VALUE: what it matches (`target`: stall | class | node | regex) and the new time
    (`us`) or factor."""

    text: str
    key: str
    target: str
    us: float | None = None
    factor: float | None = None

    def matches(self, iv: Interval, rx: re.Pattern | None = None) -> bool:
        if self.target == "class":
            return kernel_class(iv) == self.key
        if self.target == "node":
            return iv.node == self.key
        return self.target == "regex" and rx.search(iv.name) is not None

    def value(self) -> str:
        return f"{self.us:g} us" if self.us is not None else f"x{self.factor:g}"


def parse_change(text: str, timeline: Timeline) -> Change:
    """A `--what-if KEY=VALUE` (see the module doc); Failure naming the option otherwise."""
    key, sep, value = text.partition("=")
    key = key.strip()
    m = _VALUE.match(value)
    number = float(m.group(1)) if m else math.nan
    if not sep or not key or m is None or not math.isfinite(number) \
            or (m.group(2) is None and number != 0):
        raise Failure(f"--what-if {text!r}: expected KEY=VALUE with VALUE a time (10us, 0.01ms, "
                      "500ns; 0 needs no unit) or a factor (0.5x)", EXIT_BAD_INPUT)
    unit = m.group(2) or "us"
    us, factor = (None, number) if unit == "x" else (number * _UNIT_US[unit], None)
    nodes = {iv.node for iv in timeline.intervals if iv.node}
    if key == STALL:
        target = STALL
    elif key in CLASSES:
        target = "class"
    elif key in nodes:
        target = "node"
    else:
        try:
            re.compile(key)
        except re.error as e:
            raise Failure(f"--what-if {text!r}: {key!r} is no kernel class ({', '.join(CLASSES)}), "
                          f"no node of the trace, nor a valid regular expression ({e})",
                          EXIT_BAD_INPUT) from None
        target = "regex"
    change = Change(text, key, target, us, factor)
    if target != STALL and not any(change.matches(iv, _rx(change)) for iv in timeline.intervals):
        named = sorted(nodes)[:12]
        raise Failure(f"--what-if {text!r}: {key!r} matches no kernel of the trace; classes: "
                      f"{', '.join(CLASSES)}" + (f"; nodes: {', '.join(named)}" if named else ""),
                      EXIT_BAD_INPUT)
    return change


def _rx(change: Change) -> re.Pattern | None:
    return re.compile(change.key) if change.target == "regex" else None


def _apply(graph: DepGraph, changes: list[Change]) -> tuple[list[float], list[float], list[WhatIfMatch]]:
    """New kernel durations and lag cuts of `graph`'s intervals under `changes`, and what each
    change touched."""
    base = graph.timeline
    durations = [iv.duration for iv in base.intervals]
    cuts = [0.0] * len(durations)
    matched = []
    steps = max(graph.steps, 1)
    for change in changes:
        if change.target == STALL:
            found = _cut_stalls(base, graph, change, cuts)
            matched.append(WhatIfMatch(change.text, change.target, change.value(), len(found), "stalls",
                                       Shift(sum(b for b, _ in found) / steps,
                                             sum(a for _, a in found) / steps)))
            continue
        hit = _rescale(base.intervals, change, durations)
        matched.append(WhatIfMatch(change.text, change.target, change.value(), len(hit), "kernels", Shift(
            sum(base.intervals[i].duration for i in hit) / steps, sum(durations[i] for i in hit) / steps)))
    return durations, cuts, matched


def replayed(graph: DepGraph, changes: list[Change]) -> Timeline:
    """The trace's timeline replayed with `changes` (see the module doc)."""
    durations, cuts, _ = _apply(graph, changes)
    return replay(graph, durations, cuts)


def what_if(graph: DepGraph, changes: list[Change], *, summary: Summary | None = None) -> WhatIf:
    """Replay `graph` with `changes` (see the module doc) and compare with the trace
    (`summary`: analysis.summarize of its timeline, when already made)."""
    base = graph.timeline
    durations, cuts, matched = _apply(graph, changes)
    start, end = _times(graph, durations, cuts)
    after = _timeline(graph, start, end)
    sb, sa = summary or summarize(base), summarize(after)
    members = [m for m in graph.members if m]
    spans = [(max(base.intervals[i].end for i in m) - min(base.intervals[i].start for i in m),
              max(end[i] for i in m) - min(start[i] for i in m)) for m in members]
    walls = {(ls.layer, ls.visit): ls.wall for ls in sa.layers}
    if set(walls) != {(ls.layer, ls.visit) for ls in sb.layers}:  # visits regrouped: by order
        walls = {(b.layer, b.visit): a.wall for b, a in zip(sb.layers, sa.layers)}
    layers_per_step = [len({base.intervals[i].layer for i in m} - {None}) for m in members]
    return WhatIf(
        what_if=tuple(c.text for c in changes), matched=tuple(matched), dependencies=graph.note,
        layer_wall_us=Shift(sb.wall.median, sa.wall.median),
        layer_wall_p20_us=Shift(sb.wall.p20, sa.wall.p20),
        layer_wall_p80_us=Shift(sb.wall.p80, sa.wall.p80),
        kernel_sum_us=Shift(sb.kernel_sum.median, sa.kernel_sum.median),
        bubble_us=Shift(sb.bubble.median, sa.bubble.median),
        step_us=Shift(Stat.of([b for b, _ in spans]).median, Stat.of([a for _, a in spans]).median),
        layers_per_step=Stat.of(layers_per_step).median,
        per_layer_us=tuple(Shift(ls.wall, walls[(ls.layer, ls.visit)]) for ls in sb.layers),
        per_step_us=tuple(Shift(b, a) for b, a in spans))


def _rescale(intervals: list[Interval], change: Change, durations: list[float]) -> list[int]:
    """Apply a kernel change to `durations` in place; the indices it matched."""
    rx = _rx(change)
    hit = [i for i, iv in enumerate(intervals) if change.matches(iv, rx)]
    if change.factor is not None:
        for i in hit:
            durations[i] *= change.factor
        return hit
    calls: dict[object, list[int]] = {}
    for i in hit:
        iv = intervals[i]
        key = (iv.layer, iv.node) if iv.node is not None and iv.layer is not None else i
        calls.setdefault(key, []).append(i)
    for members in calls.values():
        total = sum(durations[i] for i in members)
        for i in members:
            durations[i] = change.us * (durations[i] / total if total > 0 else 1 / len(members))
    return hit


def _cut_stalls(timeline: Timeline, graph: DepGraph, change: Change,
                cuts: list[float]) -> list[tuple[float, float]]:
    """Shorten every stall (>= STALL_US all-stream idle) to the change's value: the kernels that
    start where one ends (and whose dependencies all ended before it began) start earlier by the
    time removed. Returns (length, new length) of each stall that a kernel's dependencies bound
    (a stall before a kernel without dependencies stays: nothing says when it could start)."""
    ivs = timeline.intervals
    if not ivs:
        return []
    first: dict[float, list[int]] = {}
    for i, iv in enumerate(ivs):
        first.setdefault(iv.start, []).append(i)
    found = []
    for g in gaps(ivs, min(iv.start for iv in ivs), max(iv.end for iv in ivs)):
        if g.duration < STALL_US:
            continue
        new = min(change.us if change.us is not None else g.duration * change.factor, g.duration)
        bound = False
        for i in first.get(g.end, []):
            ready = max((ivs[d.before].end for d in graph.deps(i)), default=None)
            if ready is not None and ready <= g.start:
                cuts[i] = max(cuts[i], g.duration - new)
                bound = True
        if bound:
            found.append((g.duration, new))
    return found


def replay(graph: DepGraph, durations: list[float], cuts: list[float] | None = None) -> Timeline:
    """The trace's timeline replayed with new kernel durations and lag cuts (see the module
    doc); layers keep their bounds relative to the kernels that bound them."""
    return _timeline(graph, *_times(graph, durations, cuts))


def _times(graph: DepGraph, durations: list[float],
           cuts: list[float] | None) -> tuple[list[float], list[float]]:
    """New start and end of every interval (indices of the graph's timeline)."""
    ivs = graph.timeline.intervals
    start, end = [0.0] * len(ivs), [0.0] * len(ivs)
    for i, iv in enumerate(ivs):
        preds = graph.deps(i)
        if preds:
            lag = iv.start - max(ivs[d.before].end for d in preds)
            cut = min(cuts[i], lag) if cuts and lag > 0 else 0.0
            start[i] = max(end[d.before] for d in preds) + lag - cut
        else:
            start[i] = iv.start
        end[i] = start[i] + durations[i]
    return start, end


def _timeline(graph: DepGraph, start: list[float], end: list[float]) -> Timeline:
    base = graph.timeline
    moved = [replace(iv, start=s, end=e) for iv, s, e in zip(base.intervals, start, end)]
    return Timeline(moved, base.source, _layers(base, start, end), list(base.edges))


def _layers(base: Timeline, start: list[float], end: list[float]) -> list[tuple[float, float]]:
    """Layer windows moved with their kernels: a window's start keeps its offset from the
    layer's first kernel; an end that was another layer's start (chained windows) is that
    layer's new start, else it keeps its offset from the layer's last kernel end."""
    if not base.layers:
        return []
    first: dict[int, tuple[float, float]] = {}  # layer -> (old, new) earliest start
    last: dict[int, tuple[float, float]] = {}
    for i, iv in enumerate(base.intervals):
        if iv.layer is None:
            continue
        if iv.layer not in first or iv.start < first[iv.layer][0]:
            first[iv.layer] = (iv.start, start[i])
        if iv.layer not in last or iv.end > last[iv.layer][0]:
            last[iv.layer] = (iv.end, end[i])
    starts = {old: new for old, new in first.values()}
    out = []
    for k, (s, e) in enumerate(base.layers):
        if k not in first:
            out.append((s, e))
            continue
        s0, s1 = first[k]
        e0, e1 = last[k]
        out.append((s1 + (s - s0), starts[e] if e in starts and e != s else e1 + (e - e0)))
    return out

