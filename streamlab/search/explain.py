"""Why a layout wins (or loses) against serial, read off two simulated Timelines.

One function, `explain`: which node pairs on different lanes run at the same time and for how
long, which nodes run longer than they do in serial (what sharing the device costs them), and
which all-stream-idle stalls (>= 2 us, `analysis.stall_sites`) disappear or appear. Every
number is per layer, averaged over the timeline's layers, in us.
"""

from __future__ import annotations

import itertools

from streamlab.analysis import stall_sites, summarize
from streamlab.results import LayoutExplanation, SearchOverlap, SlowedNode
from streamlab.timeline import Timeline

TOP = 4  # pairs, slowed nodes and stall sites kept per explanation


def line(overlaps: list[SearchOverlap], overlap_us: float, slowed: list[SlowedNode], bubble_us: dict[str, float],
         serial_bubble_us: dict[str, float]) -> str:
    """One line: what overlaps, what it costs, what stalls change."""
    parts = [f"{o.first} || {o.second} {o.us:.1f}" for o in overlaps[:2]]
    text = f"overlaps {', '.join(parts)} us ({overlap_us:.1f} in all)" if parts else "no overlap"
    if slowed:
        s = slowed[0]
        text += f"; {s.node} {s.serial_us:.1f} -> {s.us:.1f} us"
    stall = bubble_us.get("stall", 0.0) - serial_bubble_us.get("stall", 0.0)
    if abs(stall) >= 0.05:
        text += f"; stalls {stall:+.1f} us"
    return text


def explain(timeline: Timeline, serial: Timeline) -> LayoutExplanation:
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
    overlaps = sorted((SearchOverlap(a, b, us / layers) for (a, b), us in pairs.items()), key=lambda o: -o.us)
    slowed = sorted((SlowedNode(n, s.mean, base.nodes[n].mean) for n, s in mine.nodes.items()
                     if n in base.nodes and s.mean - base.nodes[n].mean > 0.05),
                    key=lambda s: s.serial_us - s.us)
    here = {(s.before, s.after): s for s in stall_sites(mine)}
    there = {(s.before, s.after): s for s in stall_sites(base)}
    bubble = {c: s.median for c, s in mine.bubble_by_class.items()}
    serial_bubble = {c: s.median for c, s in base.bubble_by_class.items()}
    overlap_us = sum(o.us for o in overlaps)
    return LayoutExplanation(
        overlaps=tuple(overlaps[:TOP]), overlap_us=overlap_us,
        slowed=tuple(slowed[:TOP]),
        stalls_gone=tuple(s for k, s in there.items() if k not in here)[:TOP],
        stalls_new=tuple(s for k, s in here.items() if k not in there)[:TOP],
        bubble_us=bubble, serial_bubble_us=serial_bubble,
        line=line(overlaps, overlap_us, slowed, bubble, serial_bubble))
