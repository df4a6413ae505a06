"""The Timeline: the one currency of measured runs, simulations and external traces.

A Timeline is a list of kernel intervals on streams, in microseconds, each tied to the DAG node
and layer it belongs to when known, plus where the numbers came from. Everything that reports
(analysis, tables, plots, checks) takes a Timeline and nothing else.

Optionally it says who waited for whom beyond stream order (`edges`): the edges of the captured
graph a run replayed, event waits seen in a trace. Without them, a kernel is known to wait only
for the one before it on its stream (streamlab.trace.deps says what else it infers).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Interval:
    name: str  # kernel name as the profiler or simulator reports it
    stream: str
    start: float  # microseconds
    end: float
    node: str | None = None  # DAG node, when attributed
    layer: int | None = None  # index of the decode layer inside the run or trace
    kind: str = "kernel"  # kernel | allreduce | memcpy | memset

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class Source:
    """Where the numbers came from: measured (device, backend, versions), simulated (profile),
    or an external trace (file)."""

    kind: str  # measured | simulated | trace
    device: str = ""
    detail: dict = field(default_factory=dict)

    def describe(self) -> str:
        extra = ", ".join(f"{k} {v}" for k, v in self.detail.items())
        return f"{self.kind} on {self.device}" + (f" ({extra})" if extra else "")


EDGE_KINDS = ("graph", "event", "launch")


@dataclass(frozen=True, slots=True)
class Edge:
    """Interval `after` could not start before interval `before` ended (indices into
    Timeline.intervals): an edge of the captured graph (`graph`), an event recorded on one stream
    and waited on by another (`event`), or a graph replay waiting for the previous replay
    launched on its stream (`launch`)."""

    before: int
    after: int
    kind: str = "graph"


@dataclass
class Timeline:
    intervals: list[Interval]
    source: Source
    layers: list[tuple[float, float]] = field(default_factory=list)  # [start, end) per layer
    edges: list[Edge] = field(default_factory=list)  # known waits beyond stream order

    def __post_init__(self) -> None:
        """Intervals in timeline order (by start, then end; stable), edges renumbered to match."""
        if not self.edges:
            self.intervals.sort(key=lambda iv: (iv.start, iv.end))
            return
        ivs = self.intervals
        order = sorted(range(len(ivs)), key=lambda i: (ivs[i].start, ivs[i].end))
        at = [0] * len(order)
        for new, old in enumerate(order):
            at[old] = new
        ivs[:] = [ivs[i] for i in order]
        self.edges = [Edge(at[e.before], at[e.after], e.kind) for e in self.edges]

    @property
    def streams(self) -> list[str]:
        return sorted({iv.stream for iv in self.intervals})

    def in_layer(self, index: int) -> list[Interval]:
        return [iv for iv in self.intervals if iv.layer == index]
