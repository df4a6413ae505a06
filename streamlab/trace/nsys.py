"""Read an Nsight Systems SQLite export (`nsys export --type sqlite report.nsys-rep`).

Tables (Nsight Systems export schema, 2021.5 to 2025.x; columns looked up, not assumed):
- `CUPTI_ACTIVITY_KIND_KERNEL`: `start`, `end` (ns), `deviceId`, `streamId`, `correlationId`,
  and the name as a `StringIds` id in `demangledName` (as Kineto names kernels), else
  `shortName`, else `mangledName`; required;
- `CUPTI_ACTIVITY_KIND_MEMCPY` / `_MEMSET`: the same stamps and ids; `copyKind` names a copy;
- `CUPTI_ACTIVITY_KIND_RUNTIME`: `nameId` (-> `StringIds`, e.g. `cudaGraphLaunch_v10000`: the
  version suffix is dropped) and `correlationId`: graph launches group the kernels they replay,
  since CUPTI gives a replayed kernel its launch's correlation id, as in Kineto;
- `NVTX_EVENTS`: `text` or `textId`: ranges counted, capture / warm-up marks among them;
- `TARGET_INFO_GPU`: `id`, `name` (the device names).
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np

from streamlab.errors import EXIT_BAD_INPUT, Failure
from streamlab.trace.assemble import RawOps, assemble
from streamlab.trace.loaded import KINDS, LoadedTrace, TraceInfo, as_text
from streamlab.trace.names import ALLREDUCE, GRAPH_LAUNCH, MARKS
from streamlab.trace.sqlite_util import columns, connect, int_columns, tables

__all__ = ["read_nsys"]

NS = 1e-3  # us per ns
KERNEL = "CUPTI_ACTIVITY_KIND_KERNEL"
VERSION = re.compile(r"_v\d+$")  # cudaLaunchKernel_v7000 -> cudaLaunchKernel
# CUpti_ActivityMemcpyKind
COPY_KINDS = {1: "HtoD", 2: "DtoH", 3: "HtoA", 4: "AtoH", 5: "AtoA", 6: "AtoD", 7: "DtoA",
              8: "DtoD", 9: "HtoH", 10: "PtoP"}


def read_nsys(path: Path, *, clip: bool = True, gpu: str | None = None) -> LoadedTrace:
    """The kernels, copies and memsets of an Nsight Systems export, of one GPU."""
    with connect(path) as db:
        have = tables(db)
        if KERNEL not in have:
            raise Failure(f"{path}: an Nsight Systems export without {KERNEL}: was CUDA tracing on "
                          "(nsys profile --trace=cuda) and did the run launch kernels?",
                          EXIT_BAD_INPUT)
        strings = dict(db.execute("SELECT id, value FROM StringIds")) if "StringIds" in have else {}
        cols = columns(db, KERNEL)
        name_col = next((c for c in ("demangledName", "shortName", "mangledName") if c in cols), None)
        if name_col is None or not {"start", "end"} <= cols:
            raise Failure(f"{path}: {KERNEL} lacks start / end or a kernel name column "
                          f"(demangledName, shortName); its columns: {', '.join(sorted(cols))}",
                          EXIT_BAD_INPUT)
        parts = [_rows(db, KERNEL, cols, name_col)]
        for table, what in (("CUPTI_ACTIVITY_KIND_MEMCPY", "memcpy"),
                            ("CUPTI_ACTIVITY_KIND_MEMSET", "memset")):
            if table in have:
                parts.append(_rows(db, table, columns(db, table),
                                   "copyKind" if what == "memcpy" else None, what))
        runtime, graph_corr = _runtime(db, have, strings)
        nvtx, marks = _nvtx(db, have, strings)
        gpus = dict(db.execute("SELECT id, name FROM TARGET_INFO_GPU")) \
            if "TARGET_INFO_GPU" in have and {"id", "name"} <= columns(db, "TARGET_INFO_GPU") else {}
        meta = dict(db.execute("SELECT name, value FROM META_DATA_EXPORT")) \
            if "META_DATA_EXPORT" in have else {}
    names: dict[str, int] = {}
    name, kind = [], []
    for _, ids, what in parts:
        used, inverse = np.unique(ids, return_inverse=True)
        labels = [strings.get(i, f"string {i}") if what == "kernel" else
                  f"Memcpy {COPY_KINDS.get(i, i)}" if what == "memcpy" else "Memset"
                  for i in used.tolist()]
        name.append(np.array([names.setdefault(x, len(names)) for x in labels], np.int64)[inverse]
                    if ids.size else np.zeros(0, np.int64))
        kind.append(np.full(ids.size, KINDS.index(what), np.int8))
    name = np.concatenate(name)
    kind = np.concatenate(kind)
    is_ar = np.array([bool(ALLREDUCE.search(n)) for n in names], bool)
    if name.size:
        kind[(kind == KINDS.index("kernel")) & is_ar[name]] = KINDS.index("allreduce")
    start, end, device, stream, corr = (np.concatenate([rows[k] for rows, _, _ in parts])
                                        for k in range(5))
    stream_ids, stream_ix = np.unique(stream, return_inverse=True)
    base = int(start.min()) if start.size else 0
    raw = RawOps(list(names), name, stream_ids.tolist(), stream_ix.astype(np.int64), kind, device,
                 (start - base) * NS, (end - start) * NS, corr)
    info = TraceInfo(str(path), "nsys-sqlite", "nsys", events=int(name.size) + sum(runtime.values()),
                     runtime_calls=sum(runtime.values()),
                     runtime_by_name=dict(sorted(runtime.items(), key=lambda kv: (-kv[1], kv[0]))),
                     graph_launches=sum(v for k, v in runtime.items() if GRAPH_LAUNCH.search(k)),
                     markers=marks,
                     gpus_listed=len(gpus),
                     metadata=as_text({"nvtx_ranges": nvtx} | {k: v for k, v in meta.items()
                                                              if k == "EXPORT_SCHEMA_VERSION"}))
    return assemble(raw, info, graph_corr=graph_corr, device_names=gpus, gpu=gpu, clip=clip)


def _rows(db, table: str, cols: set[str], name_col: str | None, what: str = "kernel"):
    """(start, end, device, stream, correlation) columns and the name ids (or copy kinds)."""
    pick = [c if c in cols else "NULL" for c in ("start", "end", "deviceId", "streamId",
                                                 "correlationId")]
    extra = name_col if name_col in cols else "0"
    got = int_columns(db, f"SELECT {', '.join(pick)}, {extra} FROM {table} ORDER BY start", 6)
    return got[:5], got[5], what


def _runtime(db, have: set[str], strings: dict[int, str]) -> tuple[Counter, set[int]]:
    table = "CUPTI_ACTIVITY_KIND_RUNTIME"
    if table not in have or not {"nameId", "correlationId"} <= columns(db, table):
        return Counter(), set()
    rows = db.execute(f"SELECT nameId, correlationId FROM {table}").fetchall()
    label = {i: VERSION.sub("", strings.get(i, f"string {i}")) for i in {n for n, _ in rows}}
    runtime = Counter(label[n] for n, _ in rows)
    return runtime, {c for n, c in rows if GRAPH_LAUNCH.search(label[n])}


def _nvtx(db, have: set[str], strings: dict[int, str]) -> tuple[int, dict[str, int]]:
    """NVTX ranges, and capture / warm-up marks among their names."""
    if "NVTX_EVENTS" not in have:
        return 0, {}
    cols = columns(db, "NVTX_EVENTS")
    text = "text" if "text" in cols else "NULL"
    text_id = "textId" if "textId" in cols else "NULL"
    rows = db.execute(f"SELECT {text}, {text_id} FROM NVTX_EVENTS").fetchall()
    marks: Counter = Counter()
    for t, tid in rows:
        label = t if t is not None else strings.get(tid, "")
        for mark in MARKS:
            marks[mark.decode()] += mark.decode() in label
    return len(rows), {k: v for k, v in marks.items() if v}
