"""A loaded trace as columns: what every reader (Kineto, rocprofv3, rocpd, Nsight Systems,
Perfetto, CSV) hands to segmentation and the summary, whatever the file looked like.

`DeviceOps` holds the device operations of one GPU in timeline order, one numpy column per
field, so a trace of a million kernels needs no object per kernel; `LoadedTrace` pairs them with
`TraceInfo`, what the reader saw besides (runtime calls, graph replays, quirks, other GPUs), and
makes the Interval-based Timeline only when asked for it.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from streamlab.analysis import is_allreduce
from streamlab.results import TraceGpu, TraceLoader
from streamlab.timeline import Interval, Source, Timeline

__all__ = ["INDEX", "KIND", "KINDS", "DeviceOps", "LoadedTrace", "TraceInfo", "as_text"]

KINDS = ("kernel", "memcpy", "memset", "allreduce")
INDEX = np.int32  # dtype of the index columns (name, stream, queue, replay): 4 bytes an operation
KIND = np.int8


def as_text(values: dict) -> dict[str, str]:
    """Small metadata entries of a file as text (strings as they are, the rest as JSON)."""
    return {str(k): v if isinstance(v, str) else json.dumps(v, default=str) for k, v in values.items()}


@dataclass
class TraceInfo:
    """What the reader saw besides the device operations it turned into intervals, filled by the
    reader and the assembly step; `loader()` is its typed record in a trace summary."""

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
    # stream waits on recorded events as (waited-for, waiting) device operations, in timeline
    # order (Kineto from CUPTI; assemble), and the waits that named no operation of the trace
    event_edges: list[tuple[int, int]] = field(default_factory=list)
    event_waits_unmatched: int = 0
    flows: int = 0
    markers: dict[str, int] = field(default_factory=dict)  # capture / warm-up marks by name
    same_stream_overlaps: int = 0  # device operations clipped at the next one's start
    overlap_clipped_us: float = 0.0
    max_overlap_us: float = 0.0
    negative_durations: int = 0
    missing_stream: int = 0  # device operations without a stream id (tid used)
    devices: list[str] = field(default_factory=list)  # ids of the GPUs kept (one: the chosen)
    gpus: list[TraceGpu] = field(default_factory=list)  # every GPU with work, chosen or not
    gpus_listed: int = 0  # GPUs the trace's device table lists (agents, TARGET_INFO_GPU)
    gpu_choice: str = ""  # which GPU the summary is of, and why
    metadata: dict[str, str] = field(default_factory=dict)  # small top-level entries (as_text)

    def loader(self) -> TraceLoader:
        return TraceLoader(
            path=self.path, format=self.format, tracer=self.tracer, schema=self.schema,
            device=self.device, events=self.events, device_ops=dict(self.device_ops),
            runtime_calls=self.runtime_calls, runtime_by_name=dict(self.runtime_by_name),
            graph_launches=self.graph_launches, replays=len(self.replays),
            ops_per_replay=tuple(sorted(Counter(n for _, _, n in self.replays).items())),
            graph_ops=self.graph_ops, eager_ops=self.eager_ops,
            shared_correlations=self.shared_correlations, syncs=dict(self.syncs),
            stream_waits=dict(self.stream_waits),
            event_waits=len(self.event_edges),
            event_waits_unmatched=self.event_waits_unmatched, flows=self.flows,
            markers=dict(self.markers), same_stream_overlaps=self.same_stream_overlaps,
            overlap_clipped_us=self.overlap_clipped_us, max_overlap_us=self.max_overlap_us,
            negative_durations=self.negative_durations, missing_stream=self.missing_stream,
            devices=tuple(self.devices), gpus=tuple(self.gpus), gpus_listed=self.gpus_listed,
            gpu_choice=self.gpu_choice, metadata=dict(self.metadata))


@dataclass
class DeviceOps:
    """Device operations as columns, in timeline order (by start, then end): what layer
    segmentation and the per-kernel tables read, without an object per operation (a 1 GB trace
    holds over a million)."""

    names: list[str]
    name: np.ndarray  # index into names (INDEX)
    streams: list[str]
    stream: np.ndarray  # index into streams (INDEX)
    kind: np.ndarray  # index into kinds (KIND)
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

        def ids(values, table: dict, dtype=INDEX) -> np.ndarray:
            return np.fromiter((table.setdefault(v, len(table)) for v in values), dtype, n)

        names: dict[str, int] = {}
        streams: dict[str, int] = {}
        kinds = {k: i for i, k in enumerate(KINDS)}
        return cls(name=ids((iv.name for iv in intervals), names),
                   stream=ids((iv.stream for iv in intervals), streams),
                   kind=ids((iv.kind for iv in intervals), kinds, KIND),
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
