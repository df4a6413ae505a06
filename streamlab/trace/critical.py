"""The critical path of a step: the chain of kernels and waits that set when the step ended.

Walking back from the step's last kernel to end, each kernel's *binding* dependency is the one
that ended last (deps.DepGraph: its stream predecessor, a graph edge, an event wait); the walk
stops at a kernel with no dependency inside the step. Along the path: the gap between the
binding dependency's end and the kernel's start (launch latency, a fence, a stall) and its
*slack*: how much earlier the next-latest dependency ended, i.e. how far the path can shrink
at that point before another chain binds (none when the kernel has one dependency). Each
kernel of the step also gets its slack against the step's end (`Slack`): how much later it
could have ended without delaying the step, with the lags of the trace kept (the model of
trace.whatif), 0 on the path.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from streamlab.analysis import kernel_class
from streamlab.timeline import Interval
from streamlab.trace.deps import DepGraph


@dataclass(frozen=True)
class PathKernel:
    """One kernel on the critical path; times in us, `start` from the step's start."""

    index: int  # into the timeline's intervals
    name: str
    node: str | None
    cls: str  # analysis.kernel_class
    stream: str
    start: float
    duration: float
    waited_index: int | None  # the binding dependency (index); None: the path's start
    waited_on: str | None  # its node or kernel name
    wait_kind: str | None  # stream | graph | event | launch
    cross: bool  # the binding dependency ran on another stream
    gap: float  # start - the binding dependency's end
    slack: float | None  # binding end - next-latest dependency end

    def to_json(self) -> dict:
        return {"kernel": self.name, "node": self.node, "class": self.cls, "stream": self.stream,
                "start_us": self.start, "duration_us": self.duration, "waited_on": self.waited_on,
                "wait_kind": self.wait_kind, "cross_stream": self.cross, "gap_us": self.gap, "slack_us": self.slack}


@dataclass(frozen=True)
class CriticalPath:
    step: int
    start: float  # the step's first start (us in the trace)
    end: float  # its last end
    kernels: tuple[PathKernel, ...]

    @property
    def busy(self) -> float:
        """Kernel time on the path."""
        return sum(k.duration for k in self.kernels)

    @property
    def gaps(self) -> float:
        return sum(k.gap for k in self.kernels)

    @property
    def cross_stream(self) -> int:
        """Waits on the path for a kernel of another stream."""
        return sum(k.cross for k in self.kernels)

    def by(self, what: str) -> dict[str, float]:
        """Kernel time on the path per class, stream or node (most first)."""
        out: dict[str, float] = {}
        for k in self.kernels:
            key = {"class": k.cls, "stream": k.stream, "node": k.node or k.name}[what]
            out[key] = out.get(key, 0.0) + k.duration
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    def to_json(self) -> dict:
        return {"step": self.step, "span_us": self.end - self.start,
                "kernels_on_path": len(self.kernels), "busy_us": self.busy, "gaps_us": self.gaps,
                "cross_stream_waits": self.cross_stream, "by_class_us": self.by("class"),
                "by_stream_us": self.by("stream"), "path": [k.to_json() for k in self.kernels]}


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


def critical_path(graph: DepGraph, step: int) -> CriticalPath:
    """The critical path of one step (with kernels)."""
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
            index=j, name=iv.name, node=iv.node, cls=kernel_class(iv), stream=iv.stream,
            start=iv.start - t0, duration=iv.duration,
            waited_index=bind.before if bind else None,
            waited_on=_label(ivs[bind.before]) if bind else None,
            wait_kind=bind.kind if bind else None,
            cross=bind is not None and ivs[bind.before].stream != iv.stream,
            gap=iv.start - ivs[bind.before].end if bind else 0.0,
            slack=ivs[bind.before].end - ivs[preds[1].before].end if len(preds) > 1 else None))
        j = bind.before if bind else None
    return CriticalPath(step, t0, max(ivs[i].end for i in members), tuple(reversed(chain)))


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
