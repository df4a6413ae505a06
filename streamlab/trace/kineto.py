"""Read PyTorch-profiler (Kineto) and Chrome-trace JSON, plain or gzip: streaming, and fast.

A decode trace from an SGLang server is hundreds of MB to GBs of JSON, most of it CPU ops and
runtime calls. The file is read as a stream (module jsonstream); the `traceEvents` array goes a
block of whole events at a time through the vectorised scanner (module scan), which finds each
event's bounds and its `ph` and `cat` in the raw bytes, skips the events analysis never uses
without decoding them, and reads the fields of device operations and runtime calls column-wise;
events it cannot read with certainty, and those it does not handle (syncs, graph launches), are
decoded by json one at a time, as is whatever ends a block. A 1 GB trace loads in under half the
time that decoding each event with json took (bench/trace_bench.py,
bench/results/trace-2026-11-21). What analysis needs is kept in compact arrays and becomes
`DeviceOps` columns (module assemble); Interval objects are made only when a Timeline is asked
for. Peak memory grows with the number of device operations kept, not with the file.

Kept:
- device operations: `kernel`, `gpu_memcpy`, `gpu_memset` -> Interval kinds kernel / memcpy /
  memset (all-reduce kernels are found by assemble); stream from `args.stream`, else the
  event's `tid` (counted as a missing stream id); GPU from `args.device`; correlation id;
- runtime and driver calls (`cuda_runtime`, `cuda_driver`, HIP calls): counted by name;
  graph launches (`cudaGraphLaunch`, `hipGraphLaunch`, `cuGraphLaunch`) remembered by
  correlation id, since every kernel of a replayed graph carries its launch's correlation id:
  that is how kernels are grouped into graph replays (decode steps);
- `cuda_sync` events (event sync, stream wait event, context sync): by kind, and the
  waiting -> waited-on stream pairs of stream waits; CUPTI's "Stream Wait Event" records (a
  cudaStreamWaitEvent: the waiting `stream`, `wait_on_stream`, the correlation id of the
  cudaEventRecord it waits for, its own) as columns, which assemble turns into edges between
  device operations (deps.py follows them);
- flow events (`s`/`t`/`f`): counted; mentions of CPU-side capture and warm-up marks
  (names.MARKS, e.g. `CUDAGraphNode.record`) counted in the raw bytes.

Quirks handled here (the rest, common to every format, in module assemble):
- roctracer (ROCm) traces are recognised by HIP runtime names or an AMD device in
  `deviceProperties`; `Source.detail["tracer"]` says which tracer wrote the file.
- PyTorch <= 1.9 spelled the device categories `Kernel`, `Memcpy`, `Memset`.

A truncated or malformed file raises one `Failure` (exit code EXIT_BAD_INPUT) naming the file,
the offset in the decompressed JSON and the index of the event, never a traceback. The events
the scanner skips are checked for structure only (strings closed, brackets balanced, one comma
between events): a malformed number inside a CPU op is not noticed.

Traces written by `streamlab run` (streamlab.trace.chrome, recognised by `otherData.source`) are
read back with `chrome.read_chrome`, unchanged: their layers and nodes are already known.
"""

from __future__ import annotations

import json
import re
from array import array
from collections import Counter
from pathlib import Path

import numpy as np

from streamlab.errors import EXIT_BAD_INPUT, Failure
from streamlab.trace import scan
from streamlab.trace.assemble import EventWaits, RawOps, assemble
from streamlab.trace.jsonstream import BadEvent, JsonStream
from streamlab.trace.loaded import KINDS, LoadedTrace, TraceInfo, as_text
from streamlab.trace.names import GRAPH_LAUNCH, MARKS
from streamlab.trace.scan import UNSURE

__all__ = ["read_kineto"]

DOCUMENT = "Chrome/Kineto trace"
DEVICE_CATS = {"kernel": "kernel", "gpu_memcpy": "memcpy", "gpu_memset": "memset",
               "Kernel": "kernel", "Memcpy": "memcpy", "Memset": "memset"}  # + PyTorch <= 1.9
RUNTIME_CATS = {"cuda_runtime", "cuda_driver", "hip_runtime", "hip_driver", "runtime", "Runtime"}
DEVICE_CODES = {cat: KINDS.index(kind) for cat, kind in DEVICE_CATS.items()}
STREAM_WAIT = "Stream Wait Event"  # CUPTI's cuda_sync_kind of a cudaStreamWaitEvent
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


def read_kineto(binary, path: Path, *, clip: bool = True, gpu: str | None = None) -> LoadedTrace:
    """The trace in the decompressed byte stream `binary` (Kineto / Chrome JSON, either the
    object with `traceEvents` or the bare array)."""
    collector = _Collector()
    stream = JsonStream(binary, path, DOCUMENT)
    first = stream.peek()
    if first == "[":  # the Chrome "JSON Array Format": the closing ] is optional
        collector.events = stream.records("traceEvents", collector, closing_optional=True)
        top: dict = {}
    else:
        def on_key(key: str) -> bool:
            if key != "traceEvents":
                return False
            collector.events = stream.records(key, collector)
            return True
        top = stream.object(on_key)
    stream.end()
    if first == "{" and "traceEvents" not in top:
        raise stream.fail("no traceEvents array", at=False)
    other = top.get("otherData")
    source = other.get("source") if isinstance(other, dict) else None
    if isinstance(source, dict) and "kind" in source:
        return _own(path, collector)
    return collector.build(path, top, clip, gpu)


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
    """Keeps what analysis needs from each event, in compact arrays; drops the rest (a
    jsonstream.Sink). Events come one decoded dict at a time (`add`) or a block of raw bytes at
    a time (`take`); device operations carry their event index (`seq`), so that their order is
    the file's either way."""

    def __init__(self) -> None:
        self.events = 0
        self.names: dict[str, int] = {}
        self.raw_names: dict[bytes, int] = {}  # device operation names as written -> names
        self.raw_runtime: dict[bytes, str | None] = {}  # runtime names as written (None: bad)
        self.streams: dict = {}  # stream id as written (int or str) -> index
        self.seq = array("q")
        self.name = array("i")
        self.stream = array("i")
        self.kind = array("b")
        self.device = array("q")
        self.ts = array("d")
        self.dur = array("d")
        self.corr = array("q")
        self.runtime: Counter = Counter()
        self.graph_corr: set[int] = set()
        self.syncs: Counter = Counter()
        self.waits: Counter = Counter()
        self.stream_waits: list[tuple] = []  # (device, stream, on stream, record corr, corr)
        self.flows = 0
        self.missing_stream = 0
        self.graph_names: dict[str, bool] = {}
        self.marks: Counter = Counter()  # names.MARKS mentioned

    def add(self, ev, seq: int) -> None:
        """One decoded event, the `seq`-th of the file (jsonstream.Sink)."""
        if type(ev) is dict and isinstance(ev.get("name"), str):
            for mark in MARKS:
                self.marks[mark.decode()] += mark.decode() in ev["name"]
        self._event(ev, seq)

    def _event(self, ev, seq: int) -> None:
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
                args = ev.get("args")
                args = args if type(args) is dict else {}
                kind_name = args.get("cuda_sync_kind", ev.get("name", "?"))
                self.syncs[kind_name] += 1
                if "wait_on_stream" in args and args.get("stream", -1) != -1:
                    self.waits[f"{args['stream']} <- {args['wait_on_stream']}"] += 1
                    if kind_name == STREAM_WAIT:
                        device = args.get("device", ev.get("pid", 0))
                        self.stream_waits.append((
                            device if type(device) is int else -1, args["stream"], args["wait_on_stream"],
                            _int(args.get("wait_on_cuda_event_record_corr_id")), _int(args.get("correlation"))))
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
        stream = args.get("stream")
        if stream is None:
            self.missing_stream += 1
            stream = ev.get("tid", "?")
        sid = self._stream_ident(stream)
        try:
            ts, dur = float(ev["ts"]), float(ev.get("dur", 0.0))
        except (KeyError, TypeError, ValueError):
            raise BadEvent(f"a {ev.get('cat')} event without a numeric ts/dur") from None
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
        used = int(block.ends[n - 1]) + 1 if n else 0
        for mark in MARKS:
            self.marks[mark.decode()] += block.data.count(mark, 0, used)
        keep = device < n
        self._append(first + device[keep], *(c[keep] for c in columns))
        for raw, count in Counter(names[:np.count_nonzero(runtime < n)]).items():
            self.runtime[self.raw_runtime[raw]] += count
        self.flows += int(np.count_nonzero((ph[:n] == _FLOW) & ~whole[:n]))
        return n, used

    def _add_whole(self, block: scan.Block, idx: np.ndarray, first: int) -> int:
        """Decode and add events idx in order; the index of the first one json or `add`
        rejects (else the block's count): the block ends there."""
        for i in idx.tolist():
            try:
                self._event(json.loads(block.raw(i)), first + i)
            except (ValueError, RecursionError, BadEvent):
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
        kind = cat[taken]
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

    def build(self, path: Path, top: dict, clip: bool, gpu: str | None) -> LoadedTrace:
        seq = np.frombuffer(self.seq, np.int64)  # events decoded whole come after their block's
        order = np.argsort(seq, kind="stable") if np.any(seq[1:] < seq[:-1]) else None  # others
        del seq
        name, stream, kind, device, corr, ts, dur = (_column(self, key, order) for key in (
            "name", "stream", "kind", "device", "corr", "ts", "dur"))
        runtime = dict(sorted(self.runtime.items(), key=lambda kv: (-kv[1], str(kv[0]))))
        info = TraceInfo(str(path), "kineto", _tracer(top, self.runtime), events=self.events,
                         runtime_calls=sum(self.runtime.values()), runtime_by_name=runtime,
                         graph_launches=sum(v for k, v in self.runtime.items()
                                            if GRAPH_LAUNCH.search(str(k))),
                         syncs=dict(self.syncs), stream_waits=dict(self.waits), flows=self.flows,
                         missing_stream=self.missing_stream,
                         markers={k: v for k, v in self.marks.items() if v})
        info.metadata = as_text({k: v for k, v in top.items()
                                 if k not in ("deviceProperties", "traceEvents") and len(json.dumps(v)) < 512})
        raw = RawOps(list(self.names), name, list(self.streams), stream, kind, device, ts, dur, corr,
                     waits=self._waits())
        del name, stream, kind, device, corr, ts, dur
        return assemble(raw, info, graph_corr=self.graph_corr, device_names=_device_names(top),
                        gpu=gpu, clip=clip, shared_ids_are_replays=not self.runtime)

    def _waits(self) -> EventWaits | None:
        """The stream waits, their streams as indices into the operations' streams."""
        if not self.stream_waits:
            return None
        device, stream, on, record, corr = zip(*self.stream_waits)
        ident = (lambda s: self.streams.get(s, -1))
        return EventWaits(np.array(device, np.int64), np.array([ident(x) for x in stream], np.int64),
                          np.array([ident(x) for x in on], np.int64), np.array(record, np.int64),
                          np.array(corr, np.int64))


def _int(value) -> int:
    """A correlation id, -1 when absent or not an integer."""
    return value if type(value) is int else -1


def _column(collector: _Collector, key: str, order: np.ndarray | None) -> np.ndarray:
    """A collected column as numpy (over the collector's array, which it holds from then on),
    in file order."""
    arr = getattr(collector, key)
    setattr(collector, key, None)
    col = np.frombuffer(arr, arr.typecode) if len(arr) else np.zeros(0, arr.typecode)
    return col[order] if order is not None else col


def _json_string(raw: bytes) -> str | None:
    """A JSON string's text from its bytes between the quotes; None if it is not valid."""
    try:
        return json.loads(b'"' + raw + b'"')
    except ValueError:
        return None


def _tracer(top: dict, runtime: Counter) -> str:
    if any(str(name).startswith("hip") for name in runtime):  # a name may be any JSON value
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


def _device_names(top: dict) -> dict[int, str]:
    props = top.get("deviceProperties")
    if not isinstance(props, list):
        return {}
    return {p["id"]: str(p.get("name", "")) for p in props
            if isinstance(p, dict) and isinstance(p.get("id"), int)}
