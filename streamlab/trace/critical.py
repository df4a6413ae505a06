"""The critical path of a step: the chain of kernels and waits that set when the step ended.

Walking back from the step's last kernel to end, each kernel's *binding* dependency is the one
that ended last (deps.DepGraph: its stream predecessor, a graph edge, an event wait); the walk
stops at a kernel with no dependency inside the step. Along the path: the gap between the
binding dependency's end and the kernel's start (launch latency, a fence, a stall) and its
*slack*: how much earlier the next-latest dependency ended, i.e. how far the path can shrink
at that point before another chain binds (none when the kernel has one dependency). Each
kernel of the step also gets its slack against the step's end (`slack`): how much later it
could have ended without delaying the step, with the lags of the trace kept (the model of
trace.whatif), 0 on the path; the path lists the kernels off it with the least.
"""

from __future__ import annotations

import numpy as np

from streamlab.analysis import kernel_class
from streamlab.results import CriticalPath, NearCritical, PathKernel
from streamlab.timeline import Interval
from streamlab.trace.deps import DepGraph

__all__ = ["critical_path", "slack", "step_spans"]

NEAR = 5  # kernels off the path listed as nearly critical


def _label(iv: Interval) -> str:
    return iv.node or iv.name


def step_spans(graph: DepGraph) -> list[float]:
    """First start to last end of every step with kernels, in step order."""
    ivs = graph.timeline.intervals
    inside = graph.step_of >= 0
    if not inside.any():
        return []
    step = graph.step_of[inside]
    first = np.full(graph.steps, np.inf)
    last = np.full(graph.steps, -np.inf)
    np.minimum.at(first, step, np.fromiter((iv.start for iv in ivs), np.float64, len(ivs))[inside])
    np.maximum.at(last, step, np.fromiter((iv.end for iv in ivs), np.float64, len(ivs))[inside])
    return [float(b - a) for a, b in zip(first, last) if np.isfinite(a)]


def critical_path(graph: DepGraph, step: int, near: int = NEAR) -> CriticalPath:
    """The critical path of one step (with kernels), and the `near` kernels off it with the
    least slack."""
    ivs = graph.timeline.intervals
    members = graph.members[step]
    inside = set(members)
    t0 = min(ivs[i].start for i in members)
    j = max(members, key=lambda i: (ivs[i].end, ivs[i].start, i))
    chain = []
    while j is not None:
        preds = sorted((d for d in graph.deps(j) if d.before in inside),
                       key=lambda d: (ivs[d.before].end, d.before), reverse=True)
        iv = ivs[j]
        bind = preds[0] if preds else None
        chain.append(PathKernel(
            index=j, kernel=iv.name, node=iv.node, kernel_class=kernel_class(iv), stream=iv.stream,
            start_us=iv.start - t0, duration_us=iv.duration,
            waited_index=bind.before if bind else None,
            waited_on=_label(ivs[bind.before]) if bind else None,
            wait_kind=bind.kind if bind else None,
            cross_stream=bind is not None and ivs[bind.before].stream != iv.stream,
            gap_us=iv.start - ivs[bind.before].end if bind else 0.0,
            slack_us=ivs[bind.before].end - ivs[preds[1].before].end if len(preds) > 1 else None))
        j = bind.before if bind else None
    on_path = {k.index for k in chain}
    off = sorted((s, i) for i, s in slack(graph, step).items() if i not in on_path)
    return CriticalPath(step, t0, max(ivs[i].end for i in members), tuple(reversed(chain)),
                        tuple(NearCritical(_label(ivs[i]), ivs[i].stream, s) for s, i in off[:near]))


def slack(graph: DepGraph, step: int) -> dict[int, float]:
    """Per kernel of `step`: how much later it could end without delaying the step's end, the
    lags of the trace kept (see the module doc)."""
    ivs = graph.timeline.intervals
    members = graph.members[step]
    inside = set(members)
    end = max(ivs[i].end for i in members)
    latest_end = {i: end for i in members}  # latest allowed end, tightened by successors
    out = {}
    for k in sorted(members, reverse=True):  # successors come later in time order
        out[k] = latest_end[k] - ivs[k].end
        preds = [d.before for d in graph.deps(k) if d.before in inside]
        if not preds:
            continue
        ready = max(ivs[p].end for p in preds)
        for p in preds:
            latest_end[p] = min(latest_end[p], ready + out[k])
    return out
