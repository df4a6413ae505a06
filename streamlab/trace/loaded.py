"""A loaded trace as columns: what every reader (Kineto, rocprofv3, rocpd, Nsight Systems,
Perfetto, CSV) hands to segmentation and the summary, whatever the file looked like.

`DeviceOps` holds the device operations of one GPU in timeline order, one numpy column per
field, so a trace of a million kernels needs no object per kernel; `LoadedTrace` pairs them with
`TraceInfo`, what the reader saw besides (runtime calls, graph replays, quirks, other GPUs), and
makes the Interval-based Timeline only when asked for it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from streamlab.analysis import is_allreduce
from streamlab.timeline import Interval, Source, Timeline

__all__ = ["KINDS", "DeviceOps", "GpuInfo", "LoadedTrace", "TraceInfo"]

KINDS = ("kernel", "memcpy", "memset", "allreduce")


@dataclass(frozen=True)
class GpuInfo:
    """One GPU a trace holds work for."""

    id: str  # as the trace numbers it (device index, agent's GPU index)
    name: str  # device or product name, "" when the trace does not say
    ops: int  # device operations on it
    busy_us: float  # sum of their durations


@dataclass
class TraceInfo:
    """What the reader saw besides the device operations it turned into intervals."""

    path: str
    format: str  # kineto | streamlab | rocprofv3-json | rocpd | rocprofv3-csv | pftrace | nsys-sqlite
    tracer: str  # cupti | roctracer | rocprofiler-sdk | nsys | streamlab | unknown
    device: str = ""
    schema: str = ""  # the tool versions' schema the reader was written against (registry)
    events: int = 0  # records read (elements of traceEvents, dispatch rows, packets, ...)
    device_ops: dict[str, int] = field(default_factory=dict)  # by Interval kind
    runtime_calls: int = 0
    runtime_by_name: dict[str, int] = field(default_factory=dict)
    graph_launches: int = 0
    # graph replays (decode steps): start, end, device operations
    replays: list[tuple[float, float, int]] = field(default_factory=list)
    graph_ops: int = 0  # device operations launched by a graph launch
    eager_ops: int = 0  # the others
    shared_correlations: int = 0  # correlation ids carried by more than one device operation
    syncs: dict[str, int] = field(default_factory=dict)  # cuda_sync events by kind
    stream_waits: dict[str, int] = field(default_factory=dict)  # "waiting <- waited on": count
    flows: int = 0
    markers: dict[str, int] = field(default_factory=dict)  # capture / warm-up marks by name
    same_stream_overlaps: int = 0  # device operations clipped at the next one's start
    overlap_clipped_us: float = 0.0
    max_overlap_us: float = 0.0
    negative_durations: int = 0
    missing_stream: int = 0  # device operations without a stream id (tid used)
    devices: list[str] = field(default_factory=list)  # ids of the GPUs kept (one: the chosen)
    gpus: list[GpuInfo] = field(default_factory=list)  # every GPU with work, chosen or not
    gpu_choice: str = ""  # which GPU the summary is of, and why
    metadata: dict = field(default_factory=dict)  # small top-level entries (schemaVersion, ...)

    def to_dict(self) -> dict:
        out = dict(vars(self))
        out["replays"] = len(self.replays)
        out["ops_per_replay"] = sorted(Counter(n for _, _, n in self.replays).items())
        out["gpus"] = [vars(g) for g in self.gpus]
        return out


@dataclass
class DeviceOps:
    """Device operations as columns, in timeline order (by start, then end): what layer
    segmentation and the per-kernel tables read, without an object per operation (a 1 GB trace
    holds over a million)."""

    names: list[str]
    name: np.ndarray  # index into names
    streams: list[str]
    stream: np.ndarray  # index into streams
    kind: np.ndarray  # index into kinds
    start: np.ndarray  # microseconds
    end: np.ndarray
    nodes: list[str | None] | None = None  # per operation; None: no nodes known
    layer: np.ndarray | None = None  # per operation, -1 outside layers; None: none known
    kinds: list[str] = field(default_factory=lambda: list(KINDS))
    replay: np.ndarray | None = None  # graph replay per operation, -1 eager; None: not known
    queue: np.ndarray | None = None  # hardware queue per operation (index into queues)
    queues: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.start.size)

    @property
    def allreduce(self) -> np.ndarray:
        """analysis.is_allreduce, per operation (asked once per kind and node)."""
        if self.nodes is None:
            return np.array([is_allreduce(Interval("", "", 0.0, 0.0, kind=k))
                             for k in self.kinds], bool)[self.kind]
        pairs = list(zip(self.kind.tolist(), self.nodes))
        rule = {(k, n): is_allreduce(Interval("", "", 0.0, 0.0, n, kind=self.kinds[k]))
                for k, n in set(pairs)}
        return np.array([rule[p] for p in pairs], bool)

    def take(self, idx: np.ndarray) -> DeviceOps:
        """The operations idx (in timeline order), tables kept."""
        pick = (lambda col: None if col is None else col[idx])
        nodes = None if self.nodes is None else [self.nodes[i] for i in idx.tolist()]
        return DeviceOps(self.names, self.name[idx], self.streams, self.stream[idx],
                         self.kind[idx], self.start[idx], self.end[idx], nodes,
                         pick(self.layer), self.kinds, pick(self.replay), pick(self.queue),
                         self.queues)

    def intervals(self) -> list[Interval]:
        """One Interval per operation."""
        n = len(self)
        nodes = self.nodes if self.nodes is not None else [None] * n
        layers = np.full(n, None, object)
        if self.layer is not None:
            inside = self.layer >= 0
            layers[inside] = self.layer[inside].tolist()
        return list(map(Interval, _pick(self.names, self.name), _pick(self.streams, self.stream),
                        self.start.tolist(), self.end.tolist(), nodes, layers.tolist(),
                        _pick(self.kinds, self.kind)))

    @classmethod
    def of(cls, intervals: list[Interval]) -> DeviceOps:
        """The columns of intervals already in timeline order."""
        n = len(intervals)

        def ids(values, table: dict) -> np.ndarray:
            return np.fromiter((table.setdefault(v, len(table)) for v in values), np.int64, n)

        names: dict[str, int] = {}
        streams: dict[str, int] = {}
        kinds = {k: i for i, k in enumerate(KINDS)}
        return cls(name=ids((iv.name for iv in intervals), names),
                   stream=ids((iv.stream for iv in intervals), streams),
                   kind=ids((iv.kind for iv in intervals), kinds),
                   start=np.fromiter((iv.start for iv in intervals), np.float64, n),
                   end=np.fromiter((iv.end for iv in intervals), np.float64, n),
                   nodes=[iv.node for iv in intervals],
                   layer=np.fromiter((-1 if iv.layer is None else iv.layer for iv in intervals),
                                     np.int64, n),
                   names=list(names), streams=list(streams), kinds=list(kinds))


def _pick(table: list, ids: np.ndarray) -> list:
    """table[i] for each i in ids (at C speed: a million operations take one call)."""
    out = np.empty(len(table), object)
    out[:] = table
    return out[ids].tolist()


class LoadedTrace:
    """A loaded trace: its device operations (`ops`, columns; `timeline`, Interval objects,
    made on first use) and what else the reader saw (`info`)."""

    def __init__(self, info: TraceInfo, source: Source, *, ops: DeviceOps | None = None,
                 timeline: Timeline | None = None) -> None:
        self.info, self.source = info, source
        self._ops, self._timeline = ops, timeline

    @property
    def ops(self) -> DeviceOps:
        if self._ops is None:
            self._ops = DeviceOps.of(self._timeline.intervals)
        return self._ops

    @property
    def timeline(self) -> Timeline:
        if self._timeline is None:
            self._timeline = Timeline(self._ops.intervals(), self.source)
        return self._timeline
