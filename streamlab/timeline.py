"""The Timeline: the one currency of measured runs, simulations and external traces.

A Timeline is a list of kernel intervals on streams, in microseconds, each tied to the DAG node
and layer it belongs to when known, plus where the numbers came from. Everything that reports
(analysis, tables, plots, checks) takes a Timeline and nothing else.
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


@dataclass
class Timeline:
    intervals: list[Interval]
    source: Source
    layers: list[tuple[float, float]] = field(default_factory=list)  # [start, end) per layer

    def __post_init__(self) -> None:
        self.intervals.sort(key=lambda iv: (iv.start, iv.end))

    @property
    def streams(self) -> list[str]:
        return sorted({iv.stream for iv in self.intervals})

    def in_layer(self, index: int) -> list[Interval]:
        return [iv for iv in self.intervals if iv.layer == index]
