"""Load PyTorch-profiler (Kineto) and Chrome-trace JSON, plain or gzip, as a Timeline: streaming.

A decode trace from an SGLang server is hundreds of MB to GBs of JSON, most of it CPU ops and
runtime calls. The file is read as a stream: the decompressed text goes through a small
incremental tokenizer that walks the top-level object by hand and hands each element of the
`traceEvents` array to `json.JSONDecoder.raw_decode` on a buffered chunk, so one event exists at a
time; what analysis needs is kept in compact arrays and everything else is dropped at once.
Peak memory grows with the number of device operations kept, not with the file.

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
the offset in the decompressed JSON and the index of the event, never a traceback.

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

from streamlab.errors import EXIT_BAD_INPUT, Failure
from streamlab.timeline import Interval, Source, Timeline

ALLREDUCE = re.compile(r"all_?reduce|cross_device_reduce", re.IGNORECASE)
GRAPH_LAUNCH = re.compile(r"graphlaunch", re.IGNORECASE)
DEVICE_CATS = {"kernel": "kernel", "gpu_memcpy": "memcpy", "gpu_memset": "memset",
               "Kernel": "kernel", "Memcpy": "memcpy", "Memset": "memset"}  # + PyTorch <= 1.9
RUNTIME_CATS = {"cuda_runtime", "cuda_driver", "hip_runtime", "hip_driver", "runtime", "Runtime"}
KINDS = ("kernel", "memcpy", "memset", "allreduce")
DEVICE_CODES = {cat: KINDS.index(kind) for cat, kind in DEVICE_CATS.items()}
KERNEL, ALLREDUCE_CODE = KINDS.index("kernel"), KINDS.index("allreduce")
CHUNK = 1 << 20  # decompressed bytes read at a time
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
class LoadedTrace:
    timeline: Timeline
    info: TraceInfo


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
    return LoadedTrace(timeline, info)


class _Collector:
    """Keeps what analysis needs from each event, in compact arrays; drops the rest."""

    def __init__(self) -> None:
        self.events = 0
        self.names: dict[str, int] = {}
        self.streams: dict = {}  # stream id as written (int or str) -> index
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

    def add(self, ev) -> None:
        self.events += 1
        if type(ev) is not dict:
            return
        ph = ev.get("ph")
        if ph == "X":
            cat = ev.get("cat")
            code = DEVICE_CODES.get(cat)
            if code is not None:
                self._device(ev, code)
            elif cat in RUNTIME_CATS:
                name = ev.get("name", "?")
                self.runtime[name] += 1
                launch = self.graph_names.get(name)
                if launch is None:
                    launch = self.graph_names[name] = bool(GRAPH_LAUNCH.search(str(name)))
                if launch:
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

    def _device(self, ev: dict, code: int) -> None:
        args = ev.get("args")
        if type(args) is not dict:
            args = {}
        name = ev.get("name", "?")
        ident = self.names.get(name)
        if ident is None:
            name = str(name)
            ident = self.names[name] = len(self.names)
            self.name_is_ar.append(bool(ALLREDUCE.search(name)))
        if code == KERNEL and self.name_is_ar[ident]:
            code = ALLREDUCE_CODE
        stream = args.get("stream")
        if stream is None:
            self.missing_stream += 1
            stream = ev.get("tid", "?")
        sid = self.streams.get(stream)
        if sid is None:
            sid = self.streams[stream] = len(self.streams)
        try:
            ts, dur = float(ev["ts"]), float(ev.get("dur", 0.0))
        except (KeyError, TypeError, ValueError):
            raise _BadEvent(f"a {ev.get('cat')} event without a numeric ts/dur") from None
        device = args.get("device", ev.get("pid", 0))
        corr = args.get("correlation")
        self.name.append(ident)
        self.stream.append(sid)
        self.kind.append(code)
        self.device.append(device if type(device) is int else -1)
        self.ts.append(ts)
        self.dur.append(dur)
        self.corr.append(corr if type(corr) is int else -1)

    def build(self, path: Path, top: dict, clip: bool) -> LoadedTrace:
        n = len(self.ts)
        names = list(self.names)
        stream_names = [str(k) for k in self.streams]
        devices = sorted(set(self.device))
        info = TraceInfo(str(path), "kineto", _tracer(top, self.runtime), events=self.events,
                         runtime_calls=sum(self.runtime.values()),
                         runtime_by_name=dict(self.runtime.most_common()),
                         graph_launches=sum(v for k, v in self.runtime.items() if GRAPH_LAUNCH.search(k)),
                         syncs=dict(self.syncs), stream_waits=dict(self.waits), flows=self.flows,
                         missing_stream=self.missing_stream,
                         devices=[str(d) for d in devices])
        info.metadata = {k: v for k, v in top.items()
                         if k not in ("deviceProperties", "traceEvents") and len(json.dumps(v)) < 512}
        info.device = _device_name(top, devices)
        prefix = len(devices) > 1
        ts, dur = _np(self.ts, np.float64), _np(self.dur, np.float64)
        info.negative_durations = int(np.count_nonzero(dur < 0))
        starts = ts - (ts.min() if n else 0.0)
        ends = starts + np.maximum(dur, 0.0)
        stream_ix, device = _np(self.stream, np.int64), _np(self.device, np.int64)
        if clip and n:
            self._clip(starts, ends, device * (len(self.streams) + 1) + stream_ix, info)
        kinds = [KINDS[k] for k in self.kind]
        if prefix:
            streams = [f"{d}:{stream_names[s]}" for d, s in zip(device.tolist(), stream_ix.tolist())]
        else:
            streams = [stream_names[s] for s in stream_ix.tolist()]
        intervals = [Interval(names[i], s, a, b, kind=k)
                     for i, s, a, b, k in zip(self.name, streams, starts.tolist(), ends.tolist(), kinds)]
        del streams, kinds
        info.device_ops = dict(Counter(iv.kind for iv in intervals))
        self._replays(starts, ends, info)
        detail = {"file": path.name, "tracer": info.tracer}
        if info.same_stream_overlaps:
            detail["same-stream overlaps clipped"] = info.same_stream_overlaps
        if info.missing_stream:
            detail["missing stream ids"] = info.missing_stream
        return LoadedTrace(Timeline(intervals, Source("trace", info.device, detail)), info)

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

    def _replays(self, starts: np.ndarray, ends: np.ndarray, info: TraceInfo) -> None:
        """Group device operations by correlation id: a graph launch's kernels share its id."""
        corr = _np(self.corr, np.int64)
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


def _np(arr: array, dtype) -> np.ndarray:
    return np.frombuffer(arr, dtype=dtype).copy() if len(arr) else np.zeros(0, dtype)


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


_WS = re.compile(r"[ \t\n\r]*")


class _Parser:
    """Incremental JSON over a text stream: the top-level object by hand, each value (and each
    element of traceEvents) with raw_decode on a buffer that holds about one chunk."""

    def __init__(self, binary, path: Path, collector: _Collector) -> None:
        self.binary = binary
        self.utf8 = codecs.getincrementaldecoder("utf-8")()
        self.read_bytes = 0  # decompressed bytes read so far
        self.pending: str | None = None  # a read error, raised once the data before it is used
        self.path = path
        self.collector = collector
        self.decoder = json.JSONDecoder()
        self.buf = ""
        self.pos = 0
        self.base = 0  # characters dropped before buf[0]
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
            if not parts:
                raise self.fail(error, at=False)
            self.pending = error
            break
        return b"".join(parts)

    def fill(self) -> bool:
        if self.eof:
            return False
        data = self._read()
        try:
            chunk = self.utf8.decode(data, final=not data)
        except UnicodeDecodeError as e:
            raise self.fail(f"not UTF-8 text at decompressed byte {self.read_bytes + e.start:,}",
                            at=False) from None
        self.read_bytes += len(data)
        if not data:
            self.eof = True
            return False
        if not chunk:
            return True  # a multi-byte character cut at the chunk's end: more comes
        if self.pos > CHUNK:
            self.base += self.pos
            self.buf = self.buf[self.pos:]
            self.pos = 0
        self.buf += chunk
        return True

    def peek(self) -> str:
        """The next non-whitespace character, or '' at the end of the file."""
        if self.pos < len(self.buf):
            c = self.buf[self.pos]
            if c not in " \n\r\t":
                return c
        while True:
            self.pos = _WS.match(self.buf, self.pos).end()
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self.fill():
                return ""

    def expect(self, ch: str, what: str) -> None:
        got = self.peek()
        if got != ch:
            raise self.unexpected(got, f"expected {ch!r} {what}")
        self.pos += 1

    def value(self):
        self.peek()
        while True:
            try:
                obj, end = self.decoder.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as e:
                if not self.eof and len(self.buf) - e.pos < SLACK and self.fill():
                    continue
                if self.eof and (e.pos >= len(self.buf.rstrip())
                                 or e.msg.startswith("Unterminated string")):
                    raise self.truncated() from None
                raise self.fail(f"malformed JSON: {e.msg}", offset=self.base + e.pos) from None
            except RecursionError:
                raise self.fail("malformed JSON: nested too deeply") from None
            if end >= len(self.buf) and not self.eof and self.fill():
                continue  # a number may go on in the next chunk
            self.pos = end
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
            ev = self.value()
            try:
                add(ev)
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
        self.index = -1
