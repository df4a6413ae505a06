"""Load PyTorch-profiler (Kineto) and Chrome-trace JSON, plain or gzip: streaming, and fast.

A decode trace from an SGLang server is hundreds of MB to GBs of JSON, most of it CPU ops and
runtime calls. The file is read as a stream of decompressed bytes, 2 MB at a time. The top-level
object is walked by hand; the `traceEvents` array goes a block of whole events at a time through
the vectorised scanner (module scan), which finds each event's bounds and its `ph` and `cat` in
the raw bytes, skips the events analysis never uses without decoding them, and reads the fields
of device operations and runtime calls column-wise; events it cannot read with certainty, and
those it does not handle (syncs, graph launches), are decoded by json one at a time, as is
whatever ends a block. A 1 GB trace loads in under half the time that decoding each event with
json took (bench/trace_bench.py, bench/results/trace-2026-11-21). What analysis needs is kept in
compact arrays and becomes `DeviceOps` columns; Interval objects are made only when a Timeline
is asked for. Peak memory grows with the number of device operations kept, not with the file.

Kept:
- device operations: `kernel`, `gpu_memcpy`, `gpu_memset` -> Interval kinds kernel / memcpy /
  memset, and `allreduce` for kernels whose name looks like an all-reduce (`ALLREDUCE`);
  stream from `args.stream`, else the event's `tid` (counted as a missing stream id);
- runtime and driver calls (`cuda_runtime`, `cuda_driver`, HIP calls): counted by name;
  graph launches (`cudaGraphLaunch`, `hipGraphLaunch`, `cuGraphLaunch`) remembered by
  correlation id, since every kernel of a replayed graph carries its launch's correlation id:
  that is how kernels are grouped into graph replays (decode steps);
- `cuda_sync` events (event sync, stream wait event, context sync): by kind, and the
  waiting -> waited-on stream pairs of stream waits;
- flow events (`s`/`t`/`f`): counted.

Quirks handled:
- roctracer (ROCm) traces are recognised by HIP runtime names or an AMD device in
  `deviceProperties`; `Source.detail["tracer"]` says which tracer wrote the file. roctracer's
  begin/end stamps are known to make consecutive kernels of one stream overlap (by a few ns, and
  now and then by far more when an end stamp comes late), and CUPTI traces can tie; a stream runs
  its work in order, so where a device operation still runs when the next one on its stream
  starts, its end is clipped to that start. The clips are counted, with the time removed and the
  largest clip, in `TraceInfo` and `Source.detail`. `clip=False` keeps the stamps as they are.
- negative durations become zero (counted);
- kernels of one graph replay share one correlation id (counted; `TraceInfo.replays`);
- timestamps are rebased to the first device operation (microseconds from there).

A truncated or malformed file raises one `Failure` (exit code EXIT_BAD_INPUT) naming the file,
the offset in the decompressed JSON and the index of the event, never a traceback. The events
the scanner skips are checked for structure only (strings closed, brackets balanced, one comma
between events): a malformed number inside a CPU op is not noticed.

Traces written by `streamlab run` (streamlab.trace.chrome, recognised by `otherData.source`) are
read back with `chrome.read_chrome`, unchanged: their layers and nodes are already known.
"""

from __future__ import annotations

import codecs
import gzip
import json
import os
import re
import zlib
from array import array
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from streamlab.analysis import is_allreduce
from streamlab.errors import EXIT_BAD_INPUT, Failure
from streamlab.timeline import Interval, Source, Timeline
from streamlab.trace import scan
from streamlab.trace.scan import UNSURE

ALLREDUCE = re.compile(r"all_?reduce|cross_device_reduce", re.IGNORECASE)
GRAPH_LAUNCH = re.compile(r"graphlaunch", re.IGNORECASE)
DEVICE_CATS = {"kernel": "kernel", "gpu_memcpy": "memcpy", "gpu_memset": "memset",
               "Kernel": "kernel", "Memcpy": "memcpy", "Memset": "memset"}  # + PyTorch <= 1.9
RUNTIME_CATS = {"cuda_runtime", "cuda_driver", "hip_runtime", "hip_driver", "runtime", "Runtime"}
KINDS = ("kernel", "memcpy", "memset", "allreduce")
DEVICE_CODES = {cat: KINDS.index(kind) for cat, kind in DEVICE_CATS.items()}
KERNEL, ALLREDUCE_CODE = KINDS.index("kernel"), KINDS.index("allreduce")
CHUNK = 2 << 20  # decompressed bytes read at a time; about the scanner's block size, small
# enough for its working set to stay in the CPU's caches (larger blocks are slower)
# what the vectorised scanner (module scan) reads: every event's ph and cat; a device
# operation's name, ts, dur and args.{stream, device, correlation}; a runtime call's name
SCAN_KEYS = (b"ph", b"cat", b"name", b"ts", b"dur", b"args", b"stream", b"device", b"correlation")
DEVICE_FIELDS = ((b"name", 1), (b"ts", 1), (b"dur", 1), (b"args", 1), (b"stream", 2),
                 (b"device", 2), (b"correlation", 2))  # (key, depth: 2 inside args)
_X, _FLOW = 1, 2
PH_CODES = {b"X": _X, b"s": _FLOW, b"t": _FLOW, b"f": _FLOW}
_RUNTIME, _SYNC = len(KINDS), len(KINDS) + 1
CAT_CODES = {**{c.encode(): code for c, code in DEVICE_CODES.items()},
             **{c.encode(): _RUNTIME for c in RUNTIME_CATS}, b"cuda_sync": _SYNC}
SLACK = 1 << 22  # a JSON error further than this before the buffer's end cannot be a cut-off event


@dataclass
class TraceInfo:
    """What the loader saw besides the device operations it turned into intervals."""

    path: str
    format: str  # kineto | streamlab
    tracer: str  # cupti | roctracer | streamlab | unknown
    device: str = ""
    events: int = 0  # elements of traceEvents
    device_ops: dict[str, int] = field(default_factory=dict)  # by Interval kind
    runtime_calls: int = 0
    runtime_by_name: dict[str, int] = field(default_factory=dict)
    graph_launches: int = 0
    # graph replays (decode steps): start, end, device operations
    replays: list[tuple[float, float, int]] = field(default_factory=list)
    shared_correlations: int = 0  # correlation ids carried by more than one device operation
    syncs: dict[str, int] = field(default_factory=dict)  # cuda_sync events by kind
    stream_waits: dict[str, int] = field(default_factory=dict)  # "waiting <- waited on": count
    flows: int = 0
    same_stream_overlaps: int = 0  # device operations clipped at the next one's start
    overlap_clipped_us: float = 0.0
    max_overlap_us: float = 0.0
    negative_durations: int = 0
    missing_stream: int = 0  # device operations without args.stream (tid used)
    devices: list[str] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)  # small top-level entries (schemaVersion, ...)

    def to_dict(self) -> dict:
        out = dict(vars(self))
        out["replays"] = len(self.replays)
        out["ops_per_replay"] = sorted(Counter(n for _, _, n in self.replays).items())
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
    made on first use) and what else the loader saw (`info`)."""

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


def load_trace(path: str | os.PathLike, *, clip: bool = True) -> LoadedTrace:
    """Read a Kineto / Chrome trace (plain JSON or gzip, told apart by content) as a Timeline."""
    path = Path(path)
    try:
        raw = open(path, "rb")
    except OSError as e:
        raise Failure(f"{path}: cannot read the trace: {e.strerror or e}", EXIT_BAD_INPUT) from None
    with raw:
        magic = raw.read(2)
        raw.seek(0)
        binary = gzip.GzipFile(fileobj=raw, mode="rb") if magic == b"\x1f\x8b" else raw
        collector = _Collector()
        top = _Parser(binary, path, collector).parse()
    other = top.get("otherData")
    source = other.get("source") if isinstance(other, dict) else None
    if isinstance(source, dict) and "kind" in source:
        return _own(path, collector)
    return collector.build(path, top, clip)


def _own(path: Path, collector: _Collector) -> LoadedTrace:
    from streamlab.trace.chrome import read_chrome

    try:
        timeline = read_chrome(path)
    except (KeyError, TypeError, ValueError) as e:
        raise Failure(f"{path}: a streamlab trace (otherData.source) whose events do not read "
                      f"back: {type(e).__name__} {e}", EXIT_BAD_INPUT) from None
    info = TraceInfo(str(path), "streamlab", "streamlab", device=timeline.source.device,
                     events=collector.events)
    info.device_ops = dict(Counter(iv.kind for iv in timeline.intervals))
    return LoadedTrace(info, timeline.source, timeline=timeline)


class _Collector:
    """Keeps what analysis needs from each event, in compact arrays; drops the rest. Events come
    one decoded dict at a time (`add`) or a block of raw bytes at a time (`take`); device
    operations carry their event index (`seq`), so that their order is the file's either way."""

    def __init__(self) -> None:
        self.events = 0
        self.names: dict[str, int] = {}
        self.raw_names: dict[bytes, int] = {}  # device operation names as written -> names
        self.raw_runtime: dict[bytes, str | None] = {}  # runtime names as written (None: bad)
        self.streams: dict = {}  # stream id as written (int or str) -> index
        self.seq = array("q")
        self.name = array("q")
        self.stream = array("q")
        self.kind = array("b")
        self.device = array("q")
        self.ts = array("d")
        self.dur = array("d")
        self.corr = array("q")
        self.runtime: Counter = Counter()
        self.graph_corr: set[int] = set()
        self.syncs: Counter = Counter()
        self.waits: Counter = Counter()
        self.flows = 0
        self.missing_stream = 0
        self.name_is_ar: list[bool] = []
        self.graph_names: dict[str, bool] = {}

    def add(self, ev, seq: int) -> None:
        """One decoded event, the `seq`-th of the file."""
        if type(ev) is not dict:
            return
        ph = ev.get("ph")
        if ph == "X":
            cat = ev.get("cat")
            code = DEVICE_CODES.get(cat)
            if code is not None:
                self._device(ev, code, seq)
            elif cat in RUNTIME_CATS:
                name = ev.get("name", "?")
                self.runtime[name] += 1
                if self._is_graph_launch(name):
                    corr = (ev.get("args") or {}).get("correlation")
                    if isinstance(corr, int):
                        self.graph_corr.add(corr)
            elif cat == "cuda_sync":
                args = ev.get("args") or {}
                kind_name = args.get("cuda_sync_kind", ev.get("name", "?"))
                self.syncs[kind_name] += 1
                if "wait_on_stream" in args and args.get("stream", -1) != -1:
                    self.waits[f"{args['stream']} <- {args['wait_on_stream']}"] += 1
        elif ph in ("s", "t", "f"):
            self.flows += 1

    def _is_graph_launch(self, name) -> bool:
        launch = self.graph_names.get(name)
        if launch is None:
            launch = self.graph_names[name] = bool(GRAPH_LAUNCH.search(str(name)))
        return launch

    def _name_ident(self, name) -> int:
        ident = self.names.get(name)
        if ident is None:
            name = str(name)
            ident = self.names[name] = len(self.names)
            self.name_is_ar.append(bool(ALLREDUCE.search(name)))
        return ident

    def _stream_ident(self, stream) -> int:
        sid = self.streams.get(stream)
        if sid is None:
            sid = self.streams[stream] = len(self.streams)
        return sid

    def _device(self, ev: dict, code: int, seq: int) -> None:
        args = ev.get("args")
        if type(args) is not dict:
            args = {}
        ident = self._name_ident(ev.get("name", "?"))
        if code == KERNEL and self.name_is_ar[ident]:
            code = ALLREDUCE_CODE
        stream = args.get("stream")
        if stream is None:
            self.missing_stream += 1
            stream = ev.get("tid", "?")
        sid = self._stream_ident(stream)
        try:
            ts, dur = float(ev["ts"]), float(ev.get("dur", 0.0))
        except (KeyError, TypeError, ValueError):
            raise _BadEvent(f"a {ev.get('cat')} event without a numeric ts/dur") from None
        device = args.get("device", ev.get("pid", 0))
        corr = args.get("correlation")
        self.seq.append(seq)
        self.name.append(ident)
        self.stream.append(sid)
        self.kind.append(code)
        self.device.append(device if type(device) is int else -1)
        self.ts.append(ts)
        self.dur.append(dur)
        self.corr.append(corr if type(corr) is int else -1)

    # --- a block of raw events -----------------------------------------------------------
    def take(self, data, first: int) -> tuple[int, int]:
        """Read the whole events at the start of `data` (the `first`-th event of the file
        onwards) with the vectorised scanner: device operations and runtime calls column-wise;
        sync events, graph launches and whatever the scanner cannot read with certainty
        decoded whole by json. Stops before an event that json or `add` rejects, so that the
        caller's parser reports it. Returns (events taken, bytes used)."""
        block = scan.Block(data, SCAN_KEYS)
        ph = block.codes(b"ph", PH_CODES)
        cat = block.codes(b"cat", CAT_CODES)
        x = ph == _X
        whole = (ph == UNSURE) | (x & ((cat == UNSURE) | (cat == _SYNC)))
        device, odd_device, columns = self._device_columns(
            block, np.flatnonzero(x & (cat >= 0) & (cat < _RUNTIME)), cat)
        runtime, odd_runtime, names = self._runtime_names(
            block, np.flatnonzero(x & (cat == _RUNTIME)))
        whole[odd_device] = True
        whole[odd_runtime] = True
        n = self._add_whole(block, np.flatnonzero(whole), first)
        keep = device < n
        self._append(first + device[keep], *(c[keep] for c in columns))
        for raw, count in Counter(names[:np.count_nonzero(runtime < n)]).items():
            self.runtime[self.raw_runtime[raw]] += count
        self.flows += int(np.count_nonzero((ph[:n] == _FLOW) & ~whole[:n]))
        return n, int(block.ends[n - 1]) + 1 if n else 0

    def _add_whole(self, block: scan.Block, idx: np.ndarray, first: int) -> int:
        """Decode and add events idx in order; the index of the first one json or `add`
        rejects (else the block's count): the block ends there."""
        for i in idx.tolist():
            try:
                self.add(json.loads(block.raw(i)), first + i)
            except (ValueError, RecursionError, _BadEvent):
                return i
        return block.count

    def _device_columns(self, block: scan.Block, idx: np.ndarray, cat: np.ndarray):
        """Columns of the device operations idx that the scanner reads with certainty: name a
        string; ts and dur numbers; args the one nested object, with integer stream, device and
        correlation; each present once. Returns (those taken, the others, columns)."""
        j = {key: block.field(key, depth)[idx] for key, depth in DEVICE_FIELDS}
        present = np.logical_and.reduce([v >= 0 for v in j.values()])
        ok_idx, j = idx[present], {k: v[present] for k, v in j.items()}
        name = block.string_value(j[b"name"])
        good = (name >= 0) & (block.value_at(j[b"args"]) == block.inner_open[ok_idx])
        values = {}
        for keys, integer in (((b"ts", b"dur"), False),
                              ((b"stream", b"device", b"correlation"), True)):
            both, bad = block.numbers(np.concatenate([j[k] for k in keys]), integer)
            values.update(zip(keys, np.split(both, len(keys))))
            good &= ~np.logical_or.reduce(np.split(bad, len(keys)))
        ids = np.full(ok_idx.size, -1, np.int64)
        ids[good] = self._raw_name_ids(block.texts(name[good]))
        good &= ids >= 0
        taken, ids = ok_idx[good], ids[good]
        kind = np.where((cat[taken] == KERNEL) & np.array(self.name_is_ar, bool)[ids],
                        ALLREDUCE_CODE, cat[taken])
        streams, inverse = np.unique(values[b"stream"][good], return_inverse=True)
        sid = np.array([self._stream_ident(v) for v in streams.tolist()], np.int64)[inverse]
        columns = (ids, sid, kind, values[b"device"][good], values[b"ts"][good],
                   values[b"dur"][good], values[b"correlation"][good])
        return taken, np.setdiff1d(idx, taken), columns

    def _raw_name_ids(self, raws: list[bytes]) -> list[int]:
        """Name ids of device operation names as written (-1: not a valid JSON string)."""
        get = self.raw_names.get
        ids = [get(r) for r in raws]
        if None in ids:
            for raw in dict.fromkeys(r for r, i in zip(raws, ids) if i is None):
                name = _json_string(raw)
                self.raw_names[raw] = -1 if name is None else self._name_ident(name)
            ids = [get(r) for r in raws]
        return ids

    def _runtime_names(self, block: scan.Block, idx: np.ndarray):
        """Runtime calls idx whose name the scanner reads (a valid string), except graph
        launches (decoded whole for their correlation id). Returns (those taken, the others,
        their names as written)."""
        j = block.field(b"name")[idx]
        s = block.string_value(np.maximum(j, 0))
        ok = np.flatnonzero((j >= 0) & (s >= 0))
        raws = block.texts(s[ok])
        for raw in set(raws) - self.raw_runtime.keys():
            self.raw_runtime[raw] = _json_string(raw)
        names = [self.raw_runtime[r] for r in raws]
        plain = np.array([n is not None and not self._is_graph_launch(n) for n in names], bool)
        taken = idx[ok[plain]]
        return taken, np.setdiff1d(idx, taken), [r for r, p in zip(raws, plain) if p]

    def _append(self, seq, name, stream, kind, device, ts, dur, corr) -> None:
        for arr, col in ((self.seq, seq), (self.name, name), (self.stream, stream),
                         (self.kind, kind), (self.device, device), (self.ts, ts),
                         (self.dur, dur), (self.corr, corr)):
            arr.frombytes(np.asarray(col, arr.typecode).tobytes())

    def build(self, path: Path, top: dict, clip: bool) -> LoadedTrace:
        seq = _np(self.seq)  # events decoded whole come after their block's others: reorder
        order = np.argsort(seq, kind="stable") if np.any(seq[1:] < seq[:-1]) else slice(None)
        name, stream_ix, kind, device, corr, ts, dur = (_np(a)[order] for a in (
            self.name, self.stream, self.kind, self.device, self.corr, self.ts, self.dur))
        devices = sorted(set(device.tolist()))
        info = TraceInfo(str(path), "kineto", _tracer(top, self.runtime), events=self.events,
                         runtime_calls=sum(self.runtime.values()),
                         runtime_by_name=dict(sorted(self.runtime.items(),
                                                     key=lambda kv: (-kv[1], str(kv[0])))),
                         graph_launches=sum(v for k, v in self.runtime.items() if GRAPH_LAUNCH.search(k)),
                         syncs=dict(self.syncs), stream_waits=dict(self.waits), flows=self.flows,
                         missing_stream=self.missing_stream,
                         devices=[str(d) for d in devices])
        info.metadata = {k: v for k, v in top.items()
                         if k not in ("deviceProperties", "traceEvents") and len(json.dumps(v)) < 512}
        info.device = _device_name(top, devices)
        info.negative_durations = int(np.count_nonzero(dur < 0))
        starts = ts - (ts.min() if ts.size else 0.0)
        ends = starts + np.maximum(dur, 0.0)
        width = len(self.streams) + 1
        key = device * width + stream_ix  # one per (device, stream)
        if clip and ts.size:
            self._clip(starts, ends, key, info)
        pairs, label = np.unique(key, return_inverse=True)
        stream_names = [str(k) for k in self.streams]
        labels = [(f"{p // width}:" if len(devices) > 1 else "") + stream_names[p % width]
                  for p in pairs.tolist()]
        codes, first, counts = np.unique(kind, return_index=True, return_counts=True)
        info.device_ops = {KINDS[k]: c for _, k, c in sorted(zip(first.tolist(), codes.tolist(),
                                                                  counts.tolist()))}
        self._replays(starts, ends, corr, info)
        detail = {"file": path.name, "tracer": info.tracer}
        if info.same_stream_overlaps:
            detail["same-stream overlaps clipped"] = info.same_stream_overlaps
        if info.missing_stream:
            detail["missing stream ids"] = info.missing_stream
        at = np.lexsort((ends, starts))  # timeline order (stable, as Timeline sorts)
        ops = DeviceOps(list(self.names), name[at], labels, label[at], kind[at],
                        starts[at], ends[at])
        return LoadedTrace(info, Source("trace", info.device, detail), ops=ops)

    @staticmethod
    def _clip(starts: np.ndarray, ends: np.ndarray, key: np.ndarray, info: TraceInfo) -> None:
        """On each stream (key), end a device operation where the next one starts, if later.
        Each clip compares an operation with its successor only, so one vectorised pass does."""
        order = np.lexsort((ends, starts, key))
        a, b = order[:-1], order[1:]
        over = ends[a] - starts[b]
        hit = (key[a] == key[b]) & (over > 0)
        if hit.any():
            info.same_stream_overlaps = int(np.count_nonzero(hit))
            info.overlap_clipped_us = float(over[hit].sum())
            info.max_overlap_us = float(over[hit].max())
            ends[a[hit]] = starts[b[hit]]

    def _replays(self, starts: np.ndarray, ends: np.ndarray, corr: np.ndarray,
                 info: TraceInfo) -> None:
        """Group device operations by correlation id: a graph launch's kernels share its id."""
        ids, counts = np.unique(corr[corr >= 0], return_counts=True)
        info.shared_correlations = int(np.count_nonzero(counts > 1))
        if self.graph_corr:
            keys = np.array(sorted(self.graph_corr), dtype=np.int64)
        elif not self.runtime:  # no CPU-side events at all: shared ids are the best guess
            keys = ids[counts > 1]
        else:
            keys = np.zeros(0, np.int64)
        idx = np.flatnonzero(np.isin(corr, keys))
        if idx.size == 0:
            info.replays = []
            return
        idx = idx[np.argsort(corr[idx], kind="stable")]
        cut = np.flatnonzero(np.diff(corr[idx])) + 1
        info.replays = sorted((float(starts[g].min()), float(ends[g].max()), int(g.size))
                              for g in np.split(idx, cut))


def _json_string(raw: bytes) -> str | None:
    """A JSON string's text from its bytes between the quotes; None if it is not valid."""
    try:
        return json.loads(b'"' + raw + b'"')
    except ValueError:
        return None


def _np(arr: array) -> np.ndarray:
    return np.frombuffer(arr, arr.typecode).copy()


def _tracer(top: dict, runtime: Counter) -> str:
    if any(name.startswith("hip") for name in runtime):
        return "roctracer"
    props = top.get("deviceProperties")
    names = " ".join(str(p.get("name", "")) for p in props if isinstance(p, dict)) \
        if isinstance(props, list) else ""
    if re.search(r"AMD|Radeon|Instinct|MI\d{3}", names) or "roctracer_version" in top \
            or "rocm_version" in top:
        return "roctracer"
    if runtime or "cupti_version" in top or "NVIDIA" in names:
        return "cupti"
    return "unknown"


def _device_name(top: dict, devices: list[int]) -> str:
    props = top.get("deviceProperties")
    if not isinstance(props, list):
        return ""
    by_id = {p.get("id"): str(p.get("name", "")) for p in props if isinstance(p, dict)}
    names = sorted({by_id[d] for d in devices if d in by_id})
    return ", ".join(names)


class _BadEvent(Exception):
    pass


_WS = re.compile(rb"[ \t\n\r]*")
WINDOW = 1 << 16  # bytes first decoded for json to read one value from


class _Parser:
    """Incremental JSON over a byte stream: the top-level object by hand; the traceEvents
    array a block of whole events at a time through the collector's vectorised path; what that
    leaves, and every other value, with json's raw_decode on a window of the buffer decoded to
    text. The buffer holds about one to two chunks of the decompressed file."""

    def __init__(self, binary, path: Path, collector: _Collector) -> None:
        self.binary = binary
        self.utf8 = codecs.getincrementaldecoder("utf-8")()  # checks what is read
        self.read_bytes = 0  # decompressed bytes read so far
        self.pending: str | None = None  # a read error, raised once the data before it is used
        self.path = path
        self.collector = collector
        self.decoder = json.JSONDecoder()
        self.buf = b""
        self.pos = 0
        self.base = 0  # bytes dropped before buf[0]
        self.eof = False
        self.index = -1  # traceEvents element being read; -1 outside the array

    # --- buffer -------------------------------------------------------------------------
    def _read(self) -> bytes:
        """Up to CHUNK decompressed bytes. Data that arrives before a read error is returned
        first and the error raised on the next call, so the message says exactly how far the
        file got."""
        if self.pending is not None:
            raise self.fail(self.pending, at=False)
        parts, got = [], 0
        while got < CHUNK:
            try:
                data = self.binary.read1(CHUNK - got)
            except EOFError:
                error = ("the gzip stream is truncated (the file ends before the end of the "
                         f"compressed data) after {self.read_bytes + got:,} decompressed bytes")
            except (gzip.BadGzipFile, zlib.error) as e:
                error = f"corrupt gzip data after {self.read_bytes + got:,} decompressed bytes ({e})"
            except OSError as e:
                error = f"read error after {self.read_bytes + got:,} decompressed bytes: {e}"
            else:
                if not data:
                    break
                parts.append(data)
                got += len(data)
                continue
            self.pending = error
            break
        return b"".join(parts)

    def fill(self, eager: bool = False) -> bool:
        """Append the next chunk to the buffer; False at the end of the file. A read error or
        bytes that are not UTF-8 are raised when the data before them is used up; reading
        ahead (`eager`), they are kept for the call that needs the data."""
        if self.eof or (eager and self.pending is not None):
            return False
        data = self._read()
        if self.pending is None and (not data.isascii() or self.utf8.getstate()[0] or not data):
            try:
                self.utf8.decode(data, final=not data)
            except UnicodeDecodeError as e:
                self.pending = f"not UTF-8 text at decompressed byte {self.read_bytes + e.start:,}"
                data = b""
        if not data and self.pending is not None:
            if eager:
                return False
            raise self.fail(self.pending, at=False)
        self.read_bytes += len(data)
        if not data:
            self.eof = True
            return False
        if self.pos > CHUNK:
            self.base += self.pos
            self.buf = self.buf[self.pos:]
            self.pos = 0
        self.buf += data
        return True

    def peek(self) -> str:
        """The next non-whitespace character, or '' at the end of the file."""
        while True:
            self.pos = _WS.match(self.buf, self.pos).end()
            if self.pos < len(self.buf):
                c = self.buf[self.pos]
                return chr(c) if c < 0x80 else \
                    self.buf[self.pos:self.pos + 4].decode("utf-8", "replace")[:1]
            if not self.fill():
                return ""

    def expect(self, ch: str, what: str) -> None:
        got = self.peek()
        if got != ch:
            raise self.unexpected(got, f"expected {ch!r} {what}")
        self.pos += 1

    def value(self):
        """The JSON value here, decoded by json from a window of the buffer that grows, then
        from the buffer that fills, until the value is whole."""
        self.peek()
        size = WINDOW
        while True:
            window = self.buf[self.pos:self.pos + size]
            cut = self.pos + size < len(self.buf)  # more of the buffer lies beyond the window
            text = window.decode("utf-8", "surrogateescape")  # a character cut at its end
            try:
                obj, end = self.decoder.raw_decode(text)
            except json.JSONDecodeError as e:
                if cut and len(text) - e.pos < SLACK:
                    size *= 4
                    continue
                if not cut and not self.eof and len(text) - e.pos < SLACK and self.fill():
                    continue
                if not cut and self.eof and (e.pos >= len(text.rstrip())
                                             or e.msg.startswith("Unterminated string")):
                    raise self.truncated() from None
                at = self.base + self.pos + _byte_length(text, e.pos, window)
                raise self.fail(f"malformed JSON: {e.msg}", offset=at) from None
            except RecursionError:
                raise self.fail("malformed JSON: nested too deeply") from None
            if end >= len(text):  # a number may go on
                if cut:
                    size *= 4
                    continue
                if not self.eof and self.fill():
                    continue
            self.pos += _byte_length(text, end, window)
            return obj

    # --- errors -------------------------------------------------------------------------
    def where(self, offset: int | None = None) -> str:
        off = self.base + self.pos if offset is None else offset
        at = f"decompressed offset {off:,}"
        return at + (f", traceEvents[{self.index}]" if self.index >= 0 else "")

    def fail(self, message: str, offset: int | None = None, at: bool = True) -> Failure:
        where = f" (at {self.where(offset)})" if at else (
            f" (in traceEvents[{self.index}])" if self.index >= 0 else "")
        return Failure(f"{self.path}: {message}{where}; not a complete Chrome/Kineto trace",
                       EXIT_BAD_INPUT)

    def truncated(self) -> Failure:
        what = f"inside traceEvents[{self.index}]" if self.index >= 0 else "before the JSON is complete"
        return Failure(f"{self.path}: the file ends {what} at decompressed offset "
                       f"{self.base + len(self.buf):,}: truncated (was the profiler still writing "
                       "it, or the copy cut short?)", EXIT_BAD_INPUT)

    def unexpected(self, got: str, message: str) -> Failure:
        if got == "":
            return self.truncated()
        return self.fail(f"malformed JSON: {message}, found {got!r}")

    # --- structure ----------------------------------------------------------------------
    def parse(self) -> dict:
        first = self.peek()
        if first == "[":  # the Chrome "JSON Array Format": the closing ] is optional
            self.events(array_format=True)
            top: dict = {}
        elif first == "{":
            top = self.object()
        elif first == "":
            raise self.fail("the file is empty", at=False)
        else:
            raise self.fail(f"not a Chrome/Kineto trace: starts with {first!r}, expected '{{' or '['")
        if self.peek() != "":
            raise self.fail("malformed JSON: data after the end of the trace")
        if first == "{" and "traceEvents" not in top:
            raise self.fail("no traceEvents array", at=False)
        return top

    def object(self) -> dict:
        self.expect("{", "at the start")
        top: dict = {}
        if self.peek() == "}":
            self.pos += 1
            return top
        while True:
            if self.peek() != '"':
                raise self.unexpected(self.peek(), "expected a key")
            key = self.value()
            self.expect(":", f"after key {key!r}")
            if key == "traceEvents":
                if self.peek() != "[":
                    raise self.unexpected(self.peek(), "expected traceEvents to be an array")
                self.events(array_format=False)
                top[key] = None
            else:
                top[key] = self.value()
            c = self.peek()
            self.pos += 1
            if c == "}":
                return top
            if c != ",":
                self.pos -= 1
                raise self.unexpected(c, "expected ',' or '}' in the top-level object")

    def events(self, array_format: bool) -> None:
        """The elements of the traceEvents array: blocks of whole events through the scanner
        (`take`), and one event at a time through json where it stops (an event cut at the
        buffer's end, or anything it leaves to json, errors included)."""
        self.expect("[", "")
        add = self.collector.add
        self.index = 0
        c = self.peek()
        if c == "]":
            self.pos += 1
            self.index = -1
            return
        while True:
            if c == "" and array_format:
                break
            if not self.take():
                ev = self.value()
                try:
                    add(ev, self.index)
                except _BadEvent as e:
                    raise self.fail(f"bad event: {e}") from None
                self.index += 1
            c = self.peek()
            if c == ",":
                self.pos += 1
                c = self.peek()
                if c == "]":  # a trailing comma: tolerated
                    self.pos += 1
                    break
                continue
            if c == "]":
                self.pos += 1
                break
            if c == "" and array_format:
                break
            raise self.unexpected(c, f"expected ',' or ']' after traceEvents[{self.index - 1}]")
        self.collector.events = self.index
        self.index = -1

    def take(self) -> int:
        """Events from here (the start of an element) read by the collector's vectorised path,
        a buffer of at least CHUNK at a time; how many it took."""
        while len(self.buf) - self.pos < CHUNK and self.fill(eager=True):
            pass
        taken, used = self.collector.take(memoryview(self.buf)[self.pos:], self.index)
        self.pos += used
        self.index += taken
        return taken


def _byte_length(text: str, n: int, raw: bytes) -> int:
    """How many bytes of `raw` the first n characters of `text` (its decoding) take."""
    return n if raw.isascii() else len(text[:n].encode("utf-8", "surrogateescape"))
