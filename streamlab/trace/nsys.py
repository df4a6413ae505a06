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
from streamlab.trace.assemble import RawOps, assemble, index_of, ns_to_us
from streamlab.trace.loaded import INDEX, KIND, KINDS, LoadedTrace, TraceInfo, as_text
from streamlab.trace.names import GRAPH_LAUNCH, MARKS
from streamlab.trace.sqlite_util import columns, connect, int_columns, tables

__all__ = ["read_nsys"]

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
    for part in parts:  # name ids (StringIds, copy kinds) -> indices into names, in place
        used, index = index_of(part.pop("name"))
        what = part["what"]
        labels = [strings.get(i, f"string {i}") if what == "kernel" else
                  f"Memcpy {COPY_KINDS.get(i, i)}" if what == "memcpy" else "Memset"
                  for i in used.tolist()]
        lut = np.array([names.setdefault(x, len(names)) for x in labels], INDEX)
        part["name"] = lut[index] if len(lut) else index
        part["kind"] = np.full(index.size, KINDS.index(what), KIND)
    cols = {k: _joined(parts, k) for k in ("name", "kind", "start", "end", "device", "stream", "corr")}
    stream_ids, stream = index_of(cols.pop("stream"))
    start, dur = ns_to_us(cols.pop("start"), cols.pop("end"))
    raw = RawOps(list(names), cols.pop("name"), stream_ids.tolist(), stream, cols.pop("kind"),
                 cols.pop("device"), start, dur, cols.pop("corr"))
    del stream, start, dur
    info = TraceInfo(str(path), "nsys-sqlite", "nsys", events=raw.name.size + sum(runtime.values()),
                     runtime_calls=sum(runtime.values()),
                     runtime_by_name=dict(sorted(runtime.items(), key=lambda kv: (-kv[1], kv[0]))),
                     graph_launches=sum(v for k, v in runtime.items() if GRAPH_LAUNCH.search(k)),
                     markers=marks, gpus_listed=len(gpus),
                     metadata=as_text({"nvtx_ranges": nvtx} | {k: v for k, v in meta.items()
                                                              if k == "EXPORT_SCHEMA_VERSION"}))
    return assemble(raw, info, graph_corr=graph_corr, device_names=gpus, gpu=gpu, clip=clip)


def _joined(parts: list[dict], key: str) -> np.ndarray:
    """One column of all tables' rows (the kernel table's own array when it is the only one),
    each table's part released as it is copied."""
    if len(parts) == 1:
        return parts[0].pop(key)
    return np.concatenate([p.pop(key) for p in parts])


def _rows(db, table: str, cols: set[str], name_col: str | None, what: str = "kernel") -> dict:
    """start, end (ns), device, stream, correlation and the name id (or copy kind) of a table's
    rows, by start."""
    pick = [c if c in cols else "NULL" for c in ("start", "end", "deviceId", "streamId",
                                                 "correlationId")]
    extra = name_col if name_col in cols else "0"
    keys = ("start", "end", "device", "stream", "corr", "name")
    got = int_columns(db, f"SELECT {', '.join(pick)}, {extra} FROM {table} ORDER BY start",
                      (np.int64, np.int64, INDEX, INDEX, np.int64, INDEX))
    return dict(zip(keys, got)) | {"what": what}


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
