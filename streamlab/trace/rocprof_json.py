"""Read rocprofv3's JSON output (rocprofiler-sdk, `rocprofv3 --output-format json`): streaming,
columns as for Kineto.

The file is one object: `rocprofiler-sdk-tool`, a list with one entry per profiled process
(an object in some versions), each holding
- `buffer_records.kernel_dispatch`: per dispatch `start_timestamp` / `end_timestamp` (ns),
  `dispatch_info.{agent_id, queue_id}.handle`, `dispatch_info.kernel_id`,
  `correlation_id.internal`, `stream_id.handle` (the HIP stream; absent before ROCm 6.4: the
  hardware queue then stands for the stream, counted as a missing stream id);
- `buffer_records.memory_copy`: per copy the same stamps, `dst_agent_id` / `src_agent_id`,
  `operation` (its name from `strings`), `stream_id` when present;
- `buffer_records.hip_api`: per HIP call `kind` and `operation` (the name, from `strings`) and
  its correlation id: graph launches group the kernels they replay (as in Kineto);
- `agents`: agent handle -> GPU (type 2; `gpu_index`, else `logical_node_type_id`) and its
  product name; `kernel_symbols`: kernel id -> name (`formatted_kernel_name`, else the
  demangled or raw symbol without its `.kd`); `strings.buffer_records[kind].operations`: names
  of API calls and copy directions.
The record arrays go through the vectorised scanner (module scan) a block at a time; records it
cannot read with certainty are decoded by json. Each operation keeps its hardware queue (the
queue its stream landed on: GPU_MAX_HW_QUEUES decides how many there are) beside its stream.
"""

from __future__ import annotations

from array import array
from collections import Counter
from pathlib import Path

import numpy as np

from streamlab.errors import EXIT_BAD_INPUT, Failure
from streamlab.trace import scan
from streamlab.trace.assemble import RawOps, assemble
from streamlab.trace.jsonstream import BadEvent, JsonStream
from streamlab.trace.loaded import KIND, KINDS, LoadedTrace, TraceInfo, as_text
from streamlab.trace.names import GRAPH_LAUNCH

__all__ = ["read_rocprof_json"]

DOCUMENT = "rocprofv3 JSON file"
TOOL = "rocprofiler-sdk-tool"
GPU_AGENT = 2  # rocprofiler_agent_type_t: 1 CPU, 2 GPU
NS = 1e-3  # us per ns
# (column, key, key inside its object value or None, required)
_STAMPS = (("start", b"start_timestamp", None, True), ("end", b"end_timestamp", None, True),
           ("corr", b"correlation_id", b"internal", True))
DISPATCH = _STAMPS + (("agent", b"agent_id", b"handle", True),
                      ("queue", b"queue_id", b"handle", True),
                      ("stream", b"stream_id", b"handle", False),
                      ("kernel", b"kernel_id", None, True))
COPY = _STAMPS + (("dst", b"dst_agent_id", b"handle", True),
                  ("src", b"src_agent_id", b"handle", True),
                  ("stream", b"stream_id", b"handle", False),
                  ("kind", b"kind", None, True), ("operation", b"operation", None, True))
API = (("corr", b"correlation_id", b"internal", True), ("kind", b"kind", None, True),
       ("operation", b"operation", None, True))
NUMBER_WIDTH = 24  # bytes: nanosecond stamps since the epoch have 19 digits
ABSENT = -1


class _Records:
    """Integer fields of the records of one buffer_records array, as columns (a
    jsonstream.Sink): the scanner reads `"key": N` and `"key": {"inner": N` at any depth of a
    record where each key occurs once; json reads the rest."""

    def __init__(self, fields, what: str) -> None:
        self.fields, self.what = fields, what
        keys = {key for _, key, _, _ in fields} | {inner for _, _, inner, _ in fields if inner}
        self.keys = tuple(sorted(keys))
        self.columns = {name: array("q") for name, _, _, _ in fields}

    def take(self, data, first: int) -> tuple[int, int]:
        block = scan.Block(data, self.keys)
        n = block.count
        values, good = {}, np.ones(n, bool)
        for name, key, inner, required in self.fields:
            j = block.field(key, None)
            present = j >= 0
            k = block.inner_key(np.maximum(j, 0), inner) if inner else np.maximum(j, 0)
            v, bad = block.numbers(np.maximum(k, 0), True, NUMBER_WIDTH)
            ok = present & (k >= 0) & ~bad
            good &= ok | ((not required) & (j == scan.ABSENT))
            values[name] = np.where(ok, v, ABSENT)
        stop = int(np.argmin(good)) if not good.all() else n  # json reads the first unsure one
        for name, col in values.items():
            self.columns[name].frombytes(col[:stop].astype(np.int64).tobytes())
        return stop, int(block.ends[stop - 1]) + 1 if stop else 0

    def add(self, element, index: int) -> None:
        if type(element) is not dict:
            raise BadEvent(f"a {self.what} record that is not an object")
        row = []
        for name, key, inner, required in self.fields:
            value = element.get(key.decode(), ABSENT)
            if inner and isinstance(value, dict):
                value = value.get(inner.decode(), ABSENT)
            if value is ABSENT and not required:
                row.append(ABSENT)
                continue
            if type(value) is not int:
                raise BadEvent(f"a {self.what} record without an integer {key.decode()}"
                               + (f".{inner.decode()}" if inner else ""))
            row.append(value)
        for (name, _, _, _), value in zip(self.fields, row):
            self.columns[name].append(value)

    def col(self, name: str) -> np.ndarray:
        return np.frombuffer(self.columns[name], np.int64).copy()


class _Symbols:
    """kernel_symbols entries: kernel id -> name (module doc), read by the scanner where the
    names are plain strings (a jsonstream.Sink); the table of a long run holds thousands of
    long names, most of the file's text besides the dispatches."""

    KEYS = (b"kernel_id", b"formatted_kernel_name", b"demangled_kernel_name", b"kernel_name")

    def __init__(self) -> None:
        self.names: dict[int, str] = {}

    def take(self, data, first: int) -> tuple[int, int]:
        block = scan.Block(data, self.KEYS)
        n = block.count
        ids, bad = block.numbers(np.maximum(block.field(b"kernel_id"), 0), True, NUMBER_WIDTH)
        ok = (block.field(b"kernel_id") >= 0) & ~bad
        picked = np.full(n, -1, np.int64)
        for key in self.KEYS[1:]:  # the first present, non-empty name, in order of preference
            j = block.field(key)
            s = block.string_value(np.maximum(j, 0))
            usable = (j >= 0) & (s >= 0) & (picked < 0)
            usable[usable] &= (block.e[s[usable]] - block.o[s[usable]] > 1) & ~block.escaped[s[usable]]
            picked[usable] = s[usable]
            ok &= (j != scan.UNSURE) & ((j < 0) | (s >= 0))
        ok &= picked >= 0
        stop = int(np.argmin(ok)) if not ok.all() else n
        for kid, raw in zip(ids[:stop].tolist(), block.texts(picked[:stop])):
            self.names[kid] = raw.decode("utf-8", "replace").removesuffix(".kd")
        return stop, int(block.ends[stop - 1]) + 1 if stop else 0

    def add(self, element, index: int) -> None:
        if type(element) is not dict or type(element.get("kernel_id")) is not int:
            raise BadEvent("a kernel_symbols entry without an integer kernel_id")
        self.names[element["kernel_id"]] = _kernel_name(element)


def read_rocprof_json(binary, path: Path, *, clip: bool = True, gpu: str | None = None) -> LoadedTrace:
    """The kernel dispatches and memory copies of a rocprofv3 JSON file, of one GPU."""
    stream = JsonStream(binary, path, DOCUMENT)
    dispatch, copy, api = _Records(DISPATCH, "kernel_dispatch"), _Records(COPY, "memory_copy"), \
        _Records(API, "hip_api")
    sinks = {"kernel_dispatch": dispatch, "memory_copy": copy, "hip_api": api}
    tools: list[dict] = []
    symbols = _Symbols()

    def on_buffer(key: str) -> bool:
        if key in sinks:
            stream.records(f"buffer_records.{key}", sinks[key])
        else:
            stream.skip()
        return True

    def on_tool(key: str) -> bool:
        if key == "buffer_records":
            stream.object(on_buffer)
        elif key == "kernel_symbols":
            stream.records(key, symbols)
        elif key not in ("agents", "strings", "metadata"):
            stream.skip()
        else:
            return False
        return True

    def on_top(key: str) -> bool:
        if key != TOOL:
            stream.skip()
        elif stream.peek() == "[":
            stream.each(lambda _: tools.append(stream.object(on_tool)))
        else:
            tools.append(stream.object(on_tool))
        return True

    if stream.peek() != "{":
        raise stream.fail(f"expected an object with {TOOL!r}", at=False)
    top = stream.object(on_top)
    stream.end()
    if TOOL not in top:
        raise stream.fail(f"no {TOOL!r} entry", at=False)
    return _build(path, tools, symbols.names, dispatch, copy, api, clip, gpu)


def _build(path: Path, tools: list[dict], symbols: dict[int, str], dispatch: _Records,
           copy: _Records, api: _Records, clip: bool, gpu: str | None) -> LoadedTrace:
    agents, operations, meta = _tables(path, tools)
    kid = dispatch.col("kernel")
    used, inverse = np.unique(kid, return_inverse=True)
    missing = [k for k in used.tolist() if k not in symbols]
    if missing:
        raise Failure(f"{path}: kernel_dispatch records name kernel ids {missing[:5]} that "
                      "kernel_symbols does not list: the file is incomplete", EXIT_BAD_INPUT)
    names: dict[str, int] = {}
    name = np.array([names.setdefault(symbols[k], len(names)) for k in used.tolist()],
                    np.int64)[inverse] if kid.size else np.zeros(0, np.int64)
    kind = np.full(name.size, KINDS.index("kernel"), KIND)
    dev = _gpu_of(path, agents, dispatch.col("agent"))
    # copies: on the GPU end of the copy (the destination when both are GPUs)
    c_op = copy.col("operation")
    c_names = [names.setdefault(operations.get((k, o), f"MEMORY_COPY {o}"), len(names))
               for k, o in zip(copy.col("kind").tolist(), c_op.tolist())]
    dst, src = copy.col("dst"), copy.col("src")
    on_gpu = np.where(np.isin(dst, [h for h, a in agents.items() if a[0] == GPU_AGENT]), dst, src)
    c_dev = _gpu_of(path, agents, on_gpu)
    queue = np.concatenate((dispatch.col("queue"), np.full(c_op.size, -1, np.int64)))
    stream_h = np.concatenate((dispatch.col("stream"), copy.col("stream")))
    missing_stream = stream_h == ABSENT
    stream_key = np.where(missing_stream, queue, stream_h)  # no stream id: the queue stands for it
    stream_ids, stream = np.unique(stream_key, return_inverse=True)
    stream_labels = [str(s) if s >= 0 else "copy" for s in stream_ids.tolist()]
    queue_ids, q = np.unique(queue, return_inverse=True)
    start = np.concatenate((dispatch.col("start"), copy.col("start")))
    end = np.concatenate((dispatch.col("end"), copy.col("end")))
    raw = RawOps(list(names), np.concatenate((name, np.asarray(c_names, np.int64))),
                 stream_labels, stream.astype(np.int64),
                 np.concatenate((kind, np.full(c_op.size, KINDS.index("memcpy"), KIND))),
                 np.concatenate((dev, c_dev)), start * NS, (end - start) * NS,
                 np.concatenate((dispatch.col("corr"), copy.col("corr"))),
                 queue=q.astype(np.int64),
                 queue_ids=[str(x) if x >= 0 else "copy engine" for x in queue_ids.tolist()])
    runtime = Counter()
    a_corr, a_kind, a_op = api.col("corr"), api.col("kind"), api.col("operation")
    pairs, counts = np.unique(np.stack((a_kind, a_op)), axis=1, return_counts=True) \
        if a_kind.size else (np.zeros((2, 0), np.int64), np.zeros(0, np.int64))
    launch_pairs = []
    for (k, o), c in zip(pairs.T.tolist(), counts.tolist()):
        api_name = operations.get((k, o), f"HIP call {k}.{o}")
        runtime[api_name] += c
        if GRAPH_LAUNCH.search(api_name):
            launch_pairs.append((k, o))
    launches = np.zeros(a_corr.size, bool)
    for k, o in launch_pairs:
        launches |= (a_kind == k) & (a_op == o)
    info = TraceInfo(str(path), "rocprofv3-json", "rocprofiler-sdk",
                     events=int(kid.size + c_op.size + a_corr.size),
                     runtime_calls=int(a_corr.size),
                     runtime_by_name=dict(sorted(runtime.items(), key=lambda kv: (-kv[1], kv[0]))),
                     graph_launches=int(launches.sum()),
                     missing_stream=int(missing_stream.sum()),
                     gpus_listed=sum(a[0] == GPU_AGENT for a in agents.values()),
                     metadata=as_text(meta))
    device_names = {a[1]: a[2] for a in agents.values() if a[0] == GPU_AGENT}
    return assemble(raw, info, graph_corr=set(a_corr[launches].tolist()),
                    device_names=device_names, gpu=gpu, clip=clip)


def _tables(path: Path, tools: list[dict]):
    """agents (handle -> (type, GPU index, product name)), the names of operations
    ((kind, operation) -> name) and a little metadata."""
    agents: dict[int, tuple[int, int, str]] = {}
    operations: dict[tuple[int, int], str] = {}
    meta: dict = {}
    try:
        for tool in tools:
            for a in tool.get("agents") or []:
                index = a.get("gpu_index", -1)
                if not isinstance(index, int) or index < 0:
                    index = a.get("logical_node_type_id", a.get("node_id", -1))
                product = a.get("product_name") or a.get("name") or ""
                arch = a.get("name") or ""
                label = f"{product} ({arch})" if arch and arch != product else product
                agents[a["id"]["handle"]] = (a.get("type"), index, label)
            records = (tool.get("strings") or {}).get("buffer_records") or []
            for kind, entry in enumerate(records):
                for op, name in enumerate(entry.get("operations") or []):
                    operations[(kind, op)] = name
            m = tool.get("metadata") or {}
            meta.update({k: m[k] for k in ("pid", "init_time", "fini_time") if k in m})
            if isinstance(m.get("node"), dict):
                meta["hostname"] = m["node"].get("hostname")
    except (KeyError, TypeError, AttributeError) as e:
        raise Failure(f"{path}: the agents / strings tables are not as "
                      f"rocprofiler-sdk writes them ({type(e).__name__}: {e})", EXIT_BAD_INPUT) from None
    return agents, operations, meta


def _kernel_name(symbol: dict) -> str:
    for key in ("formatted_kernel_name", "demangled_kernel_name", "kernel_name"):
        name = symbol.get(key)
        if isinstance(name, str) and name and name != "0":
            return name.removesuffix(".kd")
    return f"kernel {symbol.get('kernel_id')}"


def _gpu_of(path: Path, agents: dict, handles: np.ndarray) -> np.ndarray:
    """GPU index of each agent handle; Failure for a handle the agents table does not list."""
    if not handles.size:
        return np.zeros(0, np.int64)
    uniq, inverse = np.unique(handles, return_inverse=True)
    unknown = [h for h in uniq.tolist() if h not in agents]
    if unknown:
        raise Failure(f"{path}: records name agent handles {unknown[:5]} that the agents table "
                      f"does not list (it lists {sorted(agents)[:10]})", EXIT_BAD_INPUT)
    return np.array([agents[h][1] for h in uniq.tolist()], np.int64)[inverse]
