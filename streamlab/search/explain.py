"""Why a layout wins (or loses) against serial, read off two simulated Timelines.

One function, `explain`: which node pairs on different lanes run at the same time and for how
long, which nodes run longer than they do in serial (what sharing the device costs them), and
which all-stream-idle stalls (>= 2 us, `analysis.stall_sites`) disappear or appear. Every
number is per layer, averaged over the timeline's layers, in us.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from streamlab.analysis import StallSite, stall_sites, summarize
from streamlab.timeline import Timeline

TOP = 4  # pairs, slowed nodes and stall sites kept per explanation


@dataclass(frozen=True)
class Overlap:
    a: str  # dispatched first
    b: str
    us: float


@dataclass(frozen=True)
class Slowed:
    node: str
    us: float  # in this layout
    serial_us: float


@dataclass(frozen=True)
class Explanation:
    overlaps: tuple[Overlap, ...]  # longest first
    overlap_us: float  # all of it
    slowed: tuple[Slowed, ...]  # most added time first
    stalls_gone: tuple[StallSite, ...]  # serial's stall sites this layout does not have
    stalls_new: tuple[StallSite, ...]  # this layout's stall sites serial does not have
    bubble_us: dict[str, float]  # all-stream-idle time per layer by gap class
    serial_bubble_us: dict[str, float]

    def line(self) -> str:
        """One line: what overlaps, what it costs, what stalls change."""
        parts = [f"{o.a} || {o.b} {o.us:.1f}" for o in self.overlaps[:2]]
        text = f"overlaps {', '.join(parts)} us ({self.overlap_us:.1f} in all)" if parts else "no overlap"
        if self.slowed:
            s = self.slowed[0]
            text += f"; {s.node} {s.serial_us:.1f} -> {s.us:.1f} us"
        stall = self.bubble_us.get("stall", 0.0) - self.serial_bubble_us.get("stall", 0.0)
        if abs(stall) >= 0.05:
            text += f"; stalls {stall:+.1f} us"
        return text


def explain(timeline: Timeline, serial: Timeline) -> Explanation:
    mine, base = summarize(timeline), summarize(serial)
    layers = max(1, len(mine.layers))
    pairs: dict[tuple[str, str], float] = {}
    by_layer: dict[int | None, list] = {}
    for iv in timeline.intervals:
        by_layer.setdefault(iv.layer, []).append(iv)
    for ivs in by_layer.values():
        for x, y in itertools.combinations(sorted(ivs, key=lambda iv: (iv.start, iv.end)), 2):
            if x.stream == y.stream or y.start >= x.end:
                continue
            shared = min(x.end, y.end) - max(x.start, y.start)
            if shared > 0:
                key = (x.node or x.name, y.node or y.name)
                pairs[key] = pairs.get(key, 0.0) + shared
    overlaps = sorted((Overlap(a, b, us / layers) for (a, b), us in pairs.items()), key=lambda o: -o.us)
    slowed = sorted((Slowed(n, s.mean, base.nodes[n].mean) for n, s in mine.nodes.items()
                     if n in base.nodes and s.mean - base.nodes[n].mean > 0.05),
                    key=lambda s: s.serial_us - s.us)
    here = {(s.before, s.after): s for s in stall_sites(mine)}
    there = {(s.before, s.after): s for s in stall_sites(base)}
    return Explanation(
        overlaps=tuple(overlaps[:TOP]), overlap_us=sum(o.us for o in overlaps),
        slowed=tuple(slowed[:TOP]),
        stalls_gone=tuple(s for k, s in there.items() if k not in here)[:TOP],
        stalls_new=tuple(s for k, s in here.items() if k not in there)[:TOP],
        bubble_us={c: s.median for c, s in mine.bubble_by_class.items()},
        serial_bubble_us={c: s.median for c, s in base.bubble_by_class.items()})
