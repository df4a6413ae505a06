"""Read a rocpd database: the SQLite file rocprofv3 writes by default since ROCm 7.0.

Schema (rocprofiler-sdk's rocpd_tables.sql / rocpd_views.sql, schema_version 3): each table is
written as `<name>_<uuid>` with a view `<name>` over it; both are accepted (several uuid tables
of one name, from merged databases, are read together).
- `rocpd_kernel_dispatch`: per dispatch `kernel_id` (-> `rocpd_info_kernel_symbol.id`:
  display_name / kernel_name), `event_id` (-> `rocpd_event.correlation_id`) and either
  `start`, `end` (ns), `agent_id`, `queue_id`, `stream_id` (ROCm 7.0-7.2), or `track_id`
  (-> `rocpd_track.agent_id / queue_id / stream_id`) with `start_id` / `end_id`
  (-> `rocpd_timestamp.value`) (the newer development layout);
- `rocpd_memory_copy`: the same stamps and ids, `name_id` (-> `rocpd_string`), `dst_agent_id`,
  `src_agent_id`;
- `rocpd_region` (HIP and marker API calls): `name_id`, `event_id`: graph launches group the
  kernels they replay by correlation id, as in Kineto;
- `rocpd_info_agent`: `type` ('GPU'), `type_index` (the GPU index), `product_name`, `name`.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np

from streamlab.errors import EXIT_BAD_INPUT, Failure
from streamlab.trace.assemble import RawOps, assemble, index_of, ns_to_us
from streamlab.trace.loaded import INDEX, KIND, KINDS, LoadedTrace, TraceInfo, as_text
from streamlab.trace.names import GRAPH_LAUNCH
from streamlab.trace.sqlite_util import connect, int_columns, tables

__all__ = ["read_rocpd"]

UUID = re.compile(r"[0-9a-fA-F_-]+")  # the suffix of a rocpd table: its session's uuid


def read_rocpd(path: Path, *, clip: bool = True, gpu: str | None = None) -> LoadedTrace:
    """The kernel dispatches and memory copies of a rocpd database, of one GPU."""
    with connect(path) as db:
        have = tables(db)
        name = {base: _source(have, base) for base in (
            "rocpd_kernel_dispatch", "rocpd_memory_copy", "rocpd_region", "rocpd_info_agent",
            "rocpd_info_kernel_symbol", "rocpd_string", "rocpd_event", "rocpd_track",
            "rocpd_timestamp", "rocpd_info_queue", "rocpd_info_stream", "rocpd_metadata")}
        if name["rocpd_kernel_dispatch"] is None:
            raise Failure(f"{path}: a rocpd database without the rocpd_kernel_dispatch table: was "
                          "kernel tracing on (rocprofv3 --kernel-trace or --runtime-trace)?",
                          EXIT_BAD_INPUT)
        for base in ("rocpd_info_kernel_symbol", "rocpd_info_agent"):
            if name[base] is None:
                raise Failure(f"{path}: a rocpd database without the {base} table",
                              EXIT_BAD_INPUT)
        kernels = _ops(db, name, "rocpd_kernel_dispatch", "kernel_id")
        copies = _ops(db, name, "rocpd_memory_copy", "name_id") if name["rocpd_memory_copy"] \
            else None
        symbols = {i: (d or k or f"kernel {i}").removesuffix(".kd") for i, k, d in db.execute(
            f"SELECT id, kernel_name, display_name FROM {name['rocpd_info_kernel_symbol']}")}
        agents = {i: (t, ti, p or n or "") for i, t, ti, p, n in db.execute(
            f"SELECT id, type, type_index, product_name, name FROM {name['rocpd_info_agent']}")}
        strings = dict(db.execute(f"SELECT id, string FROM {name['rocpd_string']}")) \
            if name["rocpd_string"] else {}
        runtime, graph_corr = _api(db, name, strings)
        meta = dict(db.execute(f"SELECT tag, value FROM {name['rocpd_metadata']}")) \
            if name["rocpd_metadata"] else {}
    return _build(path, kernels, copies, symbols, agents, strings, runtime, graph_corr, meta,
                  clip, gpu)


def _source(have: set[str], base: str) -> str | None:
    """The view `base`, else its uuid tables `base_<uuid>` (UNION ALL of several); None when
    absent."""
    if base in have:
        return f"`{base}`"
    parts = sorted(t for t in have if t.startswith(base + "_") and UUID.fullmatch(t[len(base) + 1:]))
    if not parts:
        return None
    return "(" + " UNION ALL ".join(f"SELECT * FROM `{t}`" for t in parts) + ")"


def _ops(db, name: dict, table: str, what: str) -> dict[str, np.ndarray]:
    """start, end (ns), agent, queue, stream, correlation and `what` per row of a dispatch or
    copy table, in either layout (module doc)."""
    src = name[table]
    cols = _columns_of(db, src)
    corr = (f"(SELECT correlation_id FROM {name['rocpd_event']} E WHERE E.id = K.event_id)"
            if name["rocpd_event"] and "event_id" in cols else "NULL")
    if {"start", "end"} <= cols:
        q = "K.queue_id" if "queue_id" in cols else "NULL"
        s = "K.stream_id" if "stream_id" in cols else "NULL"
        agent = "K.agent_id" if "agent_id" in cols else (  # a copy: its GPU end
            f"(CASE WHEN (SELECT type FROM {name['rocpd_info_agent']} A WHERE A.id = "
            "K.dst_agent_id) = 'GPU' THEN K.dst_agent_id ELSE K.src_agent_id END)")
        sql = (f"SELECT K.start, K.end, {agent}, {q}, {s}, {corr}, K.{what} "
               f"FROM {src} K ORDER BY K.start")
    else:
        ts, tr = name["rocpd_timestamp"], name["rocpd_track"]
        if ts is None or tr is None:
            raise Failure(f"{table}: rows with start_id / end_id need the rocpd_timestamp and "
                          "rocpd_track tables, which the database lacks", EXIT_BAD_INPUT)
        sql = (f"SELECT S.value, E.value, T.agent_id, T.queue_id, T.stream_id, {corr}, K.{what} "
               f"FROM {src} K JOIN {ts} S ON S.id = K.start_id JOIN {ts} E ON E.id = K.end_id "
               f"LEFT JOIN {tr} T ON T.id = K.track_id ORDER BY S.value")
    keys = ("start", "end", "agent", "queue", "stream", "corr", what)
    dtypes = (np.int64, np.int64, INDEX, INDEX, INDEX, np.int64, INDEX)
    return dict(zip(keys, int_columns(db, sql, dtypes)))


def _columns_of(db, src: str) -> set[str]:
    cur = db.execute(f"SELECT * FROM {src} LIMIT 0")
    return {d[0] for d in cur.description}


def _api(db, name: dict, strings: dict[int, str]) -> tuple[Counter, set[int]]:
    """HIP and marker API calls by name, and the correlation ids of graph launches."""
    if name["rocpd_region"] is None:
        return Counter(), set()
    corr = (f"(SELECT correlation_id FROM {name['rocpd_event']} E WHERE E.id = R.event_id)"
            if name["rocpd_event"] else "NULL")
    rows = db.execute(f"SELECT R.name_id, {corr} FROM {name['rocpd_region']} R").fetchall()
    runtime = Counter(strings.get(n, f"string {n}") for n, _ in rows)
    launches = {n for n in {n for n, _ in rows} if GRAPH_LAUNCH.search(strings.get(n, ""))}
    return runtime, {c for n, c in rows if n in launches and c is not None}


def _build(path: Path, kernels, copies, symbols, agents, strings, runtime, graph_corr, meta,
           clip: bool, gpu: str | None) -> LoadedTrace:
    names: dict[str, int] = {}
    used, name = index_of(kernels.pop("kernel_id"))
    lut = np.array([names.setdefault(symbols.get(k, f"kernel {k}"), len(names)) for k in used.tolist()], INDEX)
    parts = [kernels | {"name": lut[name] if lut.size else name,
                        "kind": np.full(name.size, KINDS.index("kernel"), KIND)}]
    del name
    if copies is not None and copies["start"].size:
        used, name = index_of(copies.pop("name_id"))
        lut = np.array([names.setdefault(strings.get(n, "MEMORY_COPY"), len(names)) for n in used.tolist()],
                       INDEX)
        parts.append(copies | {"name": lut[name], "kind": np.full(name.size, KINDS.index("memcpy"), KIND)})
        del name
    cols = {k: parts[0].pop(k) if len(parts) == 1 else np.concatenate([p.pop(k) for p in parts])
            for k in ("name", "kind", "start", "end", "agent", "queue", "stream", "corr")}
    gpu_index = {i: (ti if ti is not None else i) for i, (t, ti, _) in agents.items()}
    used, agent = index_of(cols.pop("agent"))
    device = np.array([gpu_index.get(a, -1) for a in used.tolist()], INDEX)[agent]
    del agent
    stream = cols.pop("stream")
    missing = stream < 0
    stream[missing] = cols["queue"][missing]  # no stream id: the queue stands for it
    stream_ids, stream = index_of(stream)
    queue_ids, queue = index_of(cols.pop("queue"))
    start, dur = ns_to_us(cols.pop("start"), cols.pop("end"))
    raw = RawOps(list(names), cols.pop("name"), [str(s) for s in stream_ids.tolist()], stream,
                 cols.pop("kind"), device, start, dur, cols.pop("corr"), queue=queue,
                 queue_ids=[str(q) for q in queue_ids.tolist()])
    del stream, device, start, dur, queue
    info = TraceInfo(str(path), "rocpd", "rocprofiler-sdk", events=int(raw.name.size),
                     runtime_calls=sum(runtime.values()),
                     runtime_by_name=dict(sorted(runtime.items(), key=lambda kv: (-kv[1], kv[0]))),
                     graph_launches=sum(v for k, v in runtime.items() if GRAPH_LAUNCH.search(k)),
                     missing_stream=int(missing.sum()),
                     gpus_listed=sum(t == "GPU" for t, _, _ in agents.values()),
                     metadata=as_text({k: v for k, v in meta.items() if k in ("schema_version", "uuid")}))
    del missing
    names_by_gpu = {gpu_index[i]: n for i, (t, _, n) in agents.items() if t == "GPU"}
    return assemble(raw, info, graph_corr=graph_corr, device_names=names_by_gpu, gpu=gpu,
                    clip=clip)
