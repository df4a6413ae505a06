"""Small trace files in the formats no public sample exists for here, written from the tools'
documented schemas (see each reader's module doc): rocpd SQLite, Nsight Systems SQLite, rocprofv3
JSON and kernel_trace.csv, and a Perfetto .pftrace as rocprofv3 writes it. Each writer takes the
same device operations and graph launches (`Program`), so a test can check that every format
reads to the same Timeline as the Kineto trace they came from.
"""

from __future__ import annotations

import csv
import gzip
import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

UUID = "_0000019a_2b3c_7d4e_8f90_a1b2c3d4e5f6"  # rocpd tables carry their session's uuid
GPU_AGENTS = {0: 3, 1: 4}  # GPU index -> agent id (agents 1, 2 are CPUs)


@dataclass
class Op:
    name: str
    stream: int
    start_ns: int
    end_ns: int
    corr: int
    kind: str = "kernel"  # kernel | memcpy
    gpu: int = 0
    queue: int = 1


@dataclass
class Program:
    ops: list[Op]
    launches: list[tuple[int, int]] = field(default_factory=list)  # (correlation, ns) graph launches
    api: list[tuple[str, int, int]] = field(default_factory=list)  # (name, correlation, ns) others


def from_kineto(doc: dict) -> Program:
    """The device operations and graph launches of a synthetic Kineto trace (tests'
    decode_trace): microsecond stamps that are multiples of 0.5 become exact nanoseconds."""
    ops, launches, api = [], [], []
    for ev in doc["traceEvents"]:
        args = ev.get("args", {})
        if ev.get("cat") in ("kernel", "gpu_memcpy"):
            ops.append(Op(ev["name"], args["stream"], round(ev["ts"] * 1000),
                          round((ev["ts"] + ev["dur"]) * 1000), args["correlation"],
                          "memcpy" if ev["cat"] == "gpu_memcpy" else "kernel"))
        elif ev.get("cat") == "cuda_runtime":
            (launches if "GraphLaunch" in ev["name"] else api).append(
                (args["correlation"], round(ev["ts"] * 1000)) if "GraphLaunch" in ev["name"]
                else (ev["name"], args["correlation"], round(ev["ts"] * 1000)))
    return Program(ops, launches, api)


# --- rocpd (schema_version 3, rocprofiler-sdk 1.0 / ROCm 7.0: rocpd_tables.sql, rocpd_views.sql)

ROCPD_TABLES = {
    "rocpd_metadata": '"id" INTEGER PRIMARY KEY AUTOINCREMENT, "tag" TEXT NOT NULL, "value" TEXT NOT NULL',
    "rocpd_string": '"id" INTEGER PRIMARY KEY AUTOINCREMENT, "guid" TEXT, "string" TEXT NOT NULL UNIQUE',
    "rocpd_info_agent": '"id" INTEGER PRIMARY KEY AUTOINCREMENT, "guid" TEXT, "nid" INTEGER, '
                        '"pid" INTEGER, "type" TEXT, "absolute_index" INTEGER, "logical_index" INTEGER, '
                        '"type_index" INTEGER, "uuid" INTEGER, "name" TEXT, "model_name" TEXT, '
                        '"vendor_name" TEXT, "product_name" TEXT, "user_name" TEXT, "extdata" JSONB',
    "rocpd_info_queue": '"id" INTEGER PRIMARY KEY AUTOINCREMENT, "guid" TEXT, "nid" INTEGER, '
                        '"pid" INTEGER, "name" TEXT, "extdata" JSONB',
    "rocpd_info_stream": '"id" INTEGER PRIMARY KEY AUTOINCREMENT, "guid" TEXT, "nid" INTEGER, '
                         '"pid" INTEGER, "name" TEXT, "extdata" JSONB',
    "rocpd_info_kernel_symbol": '"id" INTEGER PRIMARY KEY AUTOINCREMENT, "guid" TEXT, "nid" INTEGER, '
                                '"pid" INTEGER, "code_object_id" INTEGER, "kernel_name" TEXT, '
                                '"display_name" TEXT, "kernel_object" INTEGER, "extdata" JSONB',
    "rocpd_event": '"id" INTEGER PRIMARY KEY AUTOINCREMENT, "guid" TEXT, "category_id" INTEGER, '
                   '"stack_id" INTEGER, "parent_stack_id" INTEGER, "correlation_id" INTEGER, '
                   '"extdata" JSONB',
    "rocpd_region": '"id" INTEGER PRIMARY KEY AUTOINCREMENT, "guid" TEXT, "nid" INTEGER, '
                    '"pid" INTEGER, "tid" INTEGER, "start" BIGINT NOT NULL, "end" BIGINT NOT NULL, '
                    '"name_id" INTEGER NOT NULL, "event_id" INTEGER, "extdata" JSONB',
    "rocpd_kernel_dispatch": '"id" INTEGER PRIMARY KEY AUTOINCREMENT, "guid" TEXT, "nid" INTEGER, '
                             '"pid" INTEGER, "tid" INTEGER, "agent_id" INTEGER NOT NULL, '
                             '"kernel_id" INTEGER NOT NULL, "dispatch_id" INTEGER NOT NULL, '
                             '"queue_id" INTEGER NOT NULL, "stream_id" INTEGER NOT NULL, '
                             '"start" BIGINT NOT NULL, "end" BIGINT NOT NULL, '
                             '"private_segment_size" INTEGER, "group_segment_size" INTEGER, '
                             '"workgroup_size_x" INTEGER, "workgroup_size_y" INTEGER, '
                             '"workgroup_size_z" INTEGER, "grid_size_x" INTEGER, "grid_size_y" INTEGER, '
                             '"grid_size_z" INTEGER, "region_name_id" INTEGER, "event_id" INTEGER, '
                             '"extdata" JSONB',
    "rocpd_memory_copy": '"id" INTEGER PRIMARY KEY AUTOINCREMENT, "guid" TEXT, "nid" INTEGER, '
                         '"pid" INTEGER, "tid" INTEGER, "start" BIGINT NOT NULL, "end" BIGINT NOT NULL, '
                         '"name_id" INTEGER NOT NULL, "dst_agent_id" INTEGER, "dst_address" INTEGER, '
                         '"src_agent_id" INTEGER, "src_address" INTEGER, "size" INTEGER NOT NULL, '
                         '"queue_id" INTEGER, "stream_id" INTEGER, "region_name_id" INTEGER, '
                         '"event_id" INTEGER, "extdata" JSONB',
}


def write_rocpd(path: Path, program: Program, *, tables: tuple[str, ...] | None = None) -> Path:
    """A rocpd database of the program: uuid-suffixed tables and the views over them. `tables`:
    the tables to create (default all), to make broken databases."""
    db = sqlite3.connect(path)
    for name, cols in ROCPD_TABLES.items():
        if tables is not None and name not in tables:
            continue
        db.execute(f"CREATE TABLE `{name}{UUID}` ({cols})")
        db.execute(f"CREATE VIEW `{name}` AS SELECT * FROM `{name}{UUID}`")
    if tables is not None:
        db.commit()
        db.close()
        return path
    t = lambda name: f"`{name}{UUID}`"
    db.executemany(f"INSERT INTO {t('rocpd_metadata')} (tag, value) VALUES (?, ?)",
                   [("schema_version", "3"), ("uuid", UUID)])
    agents = [(1, "CPU", 0, "AMD EPYC 9575F"), (2, "CPU", 1, "AMD EPYC 9575F"),
              (3, "GPU", 0, "AMD Instinct MI355X"), (4, "GPU", 1, "AMD Instinct MI355X")]
    db.executemany(f"INSERT INTO {t('rocpd_info_agent')} (id, nid, pid, type, type_index, name, "
                   "product_name) VALUES (?, 1, 1, ?, ?, ?, ?)",
                   [(i, ty, ti, "gfx950" if ty == "GPU" else p, p) for i, ty, ti, p in agents])
    strings: dict[str, int] = {}

    def sid(text: str) -> int:
        if text not in strings:
            strings[text] = len(strings) + 1
            db.execute(f"INSERT INTO {t('rocpd_string')} (id, string) VALUES (?, ?)",
                       (strings[text], text))
        return strings[text]

    symbols: dict[str, int] = {}
    events = 0
    for i, op in enumerate(program.ops):
        events += 1
        db.execute(f"INSERT INTO {t('rocpd_event')} (id, correlation_id) VALUES (?, ?)",
                   (events, op.corr))
        if op.kind == "memcpy":
            db.execute(f"INSERT INTO {t('rocpd_memory_copy')} (start, end, name_id, dst_agent_id, "
                       "src_agent_id, size, queue_id, stream_id, event_id) VALUES "
                       "(?, ?, ?, ?, 1, 4096, ?, ?, ?)",
                       (op.start_ns, op.end_ns, sid("MEMORY_COPY_HOST_TO_DEVICE"),
                        GPU_AGENTS[op.gpu], op.queue, op.stream, events))
            continue
        if op.name not in symbols:
            symbols[op.name] = len(symbols) + 1
            db.execute(f"INSERT INTO {t('rocpd_info_kernel_symbol')} (id, code_object_id, "
                       "kernel_name, display_name) VALUES (?, 1, ?, ?)",
                       (symbols[op.name], op.name + ".kd", op.name))
        db.execute(f"INSERT INTO {t('rocpd_kernel_dispatch')} (agent_id, kernel_id, dispatch_id, "
                   "queue_id, stream_id, start, end, workgroup_size_x, workgroup_size_y, "
                   "workgroup_size_z, grid_size_x, grid_size_y, grid_size_z, event_id) VALUES "
                   "(?, ?, ?, ?, ?, ?, ?, 256, 1, 1, 1024, 1, 1, ?)",
                   (GPU_AGENTS[op.gpu], symbols[op.name], i + 1, op.queue, op.stream,
                    op.start_ns, op.end_ns, events))
    for name, corr, ns in [("hipGraphLaunch", c, ns) for c, ns in program.launches] + program.api:
        events += 1
        db.execute(f"INSERT INTO {t('rocpd_event')} (id, correlation_id) VALUES (?, ?)",
                   (events, corr))
        db.execute(f"INSERT INTO {t('rocpd_region')} (nid, pid, tid, start, end, name_id, "
                   "event_id) VALUES (1, 1, 1, ?, ?, ?, ?)", (ns, ns + 2000, sid(name), events))
    db.commit()
    db.close()
    return path


# --- Nsight Systems SQLite export ----------------------------------------------------------

NSYS_TABLES = {
    "StringIds": "id INTEGER PRIMARY KEY, value TEXT NOT NULL",
    "TARGET_INFO_GPU": "id INTEGER NOT NULL, name TEXT, busLocation TEXT, totalMemory INTEGER",
    "CUPTI_ACTIVITY_KIND_KERNEL": "start INTEGER NOT NULL, end INTEGER NOT NULL, deviceId INTEGER, "
                                  "contextId INTEGER, streamId INTEGER, correlationId INTEGER, "
                                  "globalPid INTEGER, demangledName INTEGER, shortName INTEGER, "
                                  "mangledName INTEGER, launchType INTEGER, gridX INTEGER, "
                                  "blockX INTEGER, graphNodeId INTEGER",
    "CUPTI_ACTIVITY_KIND_MEMCPY": "start INTEGER NOT NULL, end INTEGER NOT NULL, deviceId INTEGER, "
                                  "contextId INTEGER, streamId INTEGER, correlationId INTEGER, "
                                  "globalPid INTEGER, bytes INTEGER, copyKind INTEGER",
    "CUPTI_ACTIVITY_KIND_RUNTIME": "start INTEGER NOT NULL, end INTEGER NOT NULL, eventClass INTEGER, "
                                   "globalTid INTEGER, correlationId INTEGER, nameId INTEGER, "
                                   "returnValue INTEGER, callchainId INTEGER",
    "NVTX_EVENTS": "start INTEGER NOT NULL, end INTEGER, eventType INTEGER, rangeId INTEGER, "
                   "category INTEGER, color INTEGER, text TEXT, globalTid INTEGER, textId INTEGER",
    "META_DATA_EXPORT": "name TEXT, value TEXT",
}


def write_nsys(path: Path, program: Program, *, tables: tuple[str, ...] | None = None,
               nvtx: tuple[str, ...] = ()) -> Path:
    db = sqlite3.connect(path)
    for name, cols in NSYS_TABLES.items():
        if tables is None or name in tables:
            db.execute(f"CREATE TABLE {name} ({cols})")
    if tables is not None:
        db.commit()
        db.close()
        return path
    db.execute("INSERT INTO META_DATA_EXPORT VALUES ('EXPORT_SCHEMA_VERSION', '3.11.1')")
    db.execute("INSERT INTO TARGET_INFO_GPU (id, name) VALUES (0, 'NVIDIA H100 80GB HBM3')")
    strings: dict[str, int] = {}

    def sid(text: str) -> int:
        if text not in strings:
            strings[text] = len(strings) + 1
            db.execute("INSERT INTO StringIds VALUES (?, ?)", (strings[text], text))
        return strings[text]

    for op in program.ops:
        if op.kind == "memcpy":
            db.execute("INSERT INTO CUPTI_ACTIVITY_KIND_MEMCPY VALUES (?, ?, ?, 1, ?, ?, 1, 4096, 1)",
                       (op.start_ns, op.end_ns, op.gpu, op.stream, op.corr))
        else:
            short = op.name.split("<")[0].split("(")[0].removeprefix("void ").split("::")[-1]
            db.execute("INSERT INTO CUPTI_ACTIVITY_KIND_KERNEL VALUES "
                       "(?, ?, ?, 1, ?, ?, 1, ?, ?, ?, 1, 1024, 256, 0)",
                       (op.start_ns, op.end_ns, op.gpu, op.stream, op.corr, sid(op.name),
                        sid(short), sid("_Z" + short)))
    for name, corr, ns in [("cudaGraphLaunch_v10000", c, ns) for c, ns in program.launches] + \
            [(n + "_v7000", c, ns) for n, c, ns in program.api]:
        db.execute("INSERT INTO CUPTI_ACTIVITY_KIND_RUNTIME VALUES (?, ?, 0, 1, ?, ?, 0, 0)",
                   (ns, ns + 2000, corr, sid(name)))
    for i, text in enumerate(nvtx):
        db.execute("INSERT INTO NVTX_EVENTS (start, end, eventType, text) VALUES (?, ?, 59, ?)",
                   (i * 1000, i * 1000 + 500, text))
    db.commit()
    db.close()
    return path


# --- rocprofv3 kernel_trace.csv and JSON ---------------------------------------------------

CSV_HEADER = ["Kind", "Agent_Id", "Queue_Id", "Stream_Id", "Thread_Id", "Dispatch_Id", "Kernel_Id",
              "Kernel_Name", "Correlation_Id", "Start_Timestamp", "End_Timestamp", "LDS_Block_Size",
              "Scratch_Size", "VGPR_Count", "Accum_VGPR_Count", "SGPR_Count", "Workgroup_Size_X",
              "Workgroup_Size_Y", "Workgroup_Size_Z", "Grid_Size_X", "Grid_Size_Y", "Grid_Size_Z"]


def write_rocprof_csv(path: Path, program: Program) -> Path:
    """rocprofv3's kernel_trace.csv (ROCm 6.4+ columns, Agent_Id as "Agent N", every field
    quoted as rocprofv3 quotes strings)."""
    ids: dict[str, int] = {}
    with open(path, "w", newline="") as f:
        w = csv.writer(f, quoting=csv.QUOTE_NONNUMERIC)
        w.writerow(CSV_HEADER)
        for i, op in enumerate(o for o in program.ops if o.kind == "kernel"):
            w.writerow(["KERNEL_DISPATCH", f"Agent {op.gpu}", op.queue, op.stream, 4242, i + 1,
                        ids.setdefault(op.name, len(ids) + 1), op.name, op.corr, op.start_ns,
                        op.end_ns, 0, 0, 16, 0, 32, 256, 1, 1, 1024, 1, 1])
    return path


def write_rocprof_json(path: Path, program: Program) -> Path:
    """rocprofv3's JSON (rocprofiler-sdk-tool[0]: agents, kernel_symbols, strings,
    buffer_records.{kernel_dispatch, memory_copy, hip_api}), gzip when the name ends in .gz."""
    symbols: dict[str, int] = {}
    for op in program.ops:
        if op.kind == "kernel":
            symbols.setdefault(op.name, len(symbols) + 1)
    kinds = ["NONE", "HIP_RUNTIME_API", "MEMORY_COPY", "KERNEL_DISPATCH"]
    hip_ops = ["hipLaunchKernel", "hipGraphLaunch", "hipMemcpyAsync"]
    tool = {
        "metadata": {"pid": 4242, "node": {"hostname": "test"}},
        "agents": [{"id": {"handle": 100 + a}, "type": t, "name": n, "product_name": p,
                    "gpu_index": gi, "logical_node_type_id": gi}
                   for a, t, n, p, gi in [(1, 1, "EPYC", "AMD EPYC", -1),
                                          (3, 2, "gfx950", "AMD Instinct MI355X", 0),
                                          (4, 2, "gfx950", "AMD Instinct MI355X", 1)]],
        "kernel_symbols": [{"kernel_id": k, "kernel_name": n + ".kd", "formatted_kernel_name": n,
                            "demangled_kernel_name": n + ".kd"} for n, k in symbols.items()],
        "strings": {"buffer_records": [{"kind": k, "operations": (
            hip_ops if k == "HIP_RUNTIME_API" else ["MEMORY_COPY_NONE", "MEMORY_COPY_HOST_TO_DEVICE"]
            if k == "MEMORY_COPY" else [])} for k in kinds]},
        "buffer_records": {
            "kernel_dispatch": [
                {"size": 184, "kind": 3, "operation": 2, "thread_id": 4242,
                 "correlation_id": {"internal": op.corr, "external": 0},
                 "start_timestamp": op.start_ns, "end_timestamp": op.end_ns,
                 "dispatch_info": {"size": 72, "agent_id": {"handle": 100 + GPU_AGENTS[op.gpu]},
                                   "queue_id": {"handle": op.queue}, "kernel_id": symbols[op.name],
                                   "dispatch_id": i + 1, "workgroup_size": {"x": 256, "y": 1, "z": 1},
                                   "grid_size": {"x": 1024, "y": 1, "z": 1}},
                 "stream_id": {"handle": op.stream}}
                for i, op in enumerate(program.ops) if op.kind == "kernel"],
            "memory_copy": [
                {"size": 80, "kind": 2, "operation": 1, "thread_id": 4242,
                 "correlation_id": {"internal": op.corr, "external": 0},
                 "start_timestamp": op.start_ns, "end_timestamp": op.end_ns,
                 "dst_agent_id": {"handle": 100 + GPU_AGENTS[op.gpu]}, "src_agent_id": {"handle": 101},
                 "bytes": 4096, "stream_id": {"handle": op.stream}}
                for op in program.ops if op.kind == "memcpy"],
            "hip_api": [{"size": 64, "kind": 1, "operation": 1, "correlation_id": {"internal": c,
                                                                                   "external": 0},
                         "start_timestamp": ns, "end_timestamp": ns + 2000, "thread_id": 4242}
                        for c, ns in program.launches],
        },
    }
    data = json.dumps({"rocprofiler-sdk-tool": [tool]}).encode()
    path.write_bytes(gzip.compress(data, mtime=0) if path.name.endswith(".gz") else data)
    return path


# --- Perfetto .pftrace, as rocprofv3 writes it (generatePerfetto.cpp) ----------------------

def write_pftrace(path: Path, program: Program) -> Path:
    """Track descriptors "COMPUTE AGENT [a] STREAM [s] (GPU)" and "THREAD 0 (4242)", slices
    with interned names, categories and debug annotation names on sequence 1 (state cleared on
    its first packet), debug annotations queue / corr_id as rocprofv3 adds them."""
    from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

    trace = pb.Trace()
    seq = 1
    thread_uuid = 900
    tracks: dict[tuple[int, int, str], int] = {}
    first = trace.packet.add()
    first.trusted_packet_sequence_id = seq
    first.sequence_flags = 1  # SEQ_INCREMENTAL_STATE_CLEARED
    first.track_descriptor.uuid = thread_uuid
    first.track_descriptor.name = "THREAD 0 (4242)"
    names: dict[str, int] = {}
    categories = {"kernel_dispatch": 1, "memory_copy": 2, "hip_api": 3}
    notes = {"queue": 1, "corr_id": 2}
    interned = first.interned_data
    for c, i in categories.items():
        interned.event_categories.add(iid=i, name=c)
    for n, i in notes.items():
        interned.debug_annotation_names.add(iid=i, name=n)
    slices = [(op.start_ns, op.end_ns, op.name, "memory_copy" if op.kind == "memcpy" else
               "kernel_dispatch", op) for op in program.ops]
    slices += [(ns, ns + 2000, "hipGraphLaunch", "hip_api", c) for c, ns in program.launches]
    for start, end, name, cat, what in sorted(slices, key=lambda x: x[0]):
        if cat == "hip_api":
            uuid, corr, queue = thread_uuid, what, None
        else:
            label = "COPY to" if cat == "memory_copy" else "COMPUTE"
            key = (GPU_AGENTS[what.gpu] - 1, what.stream, label)
            if key not in tracks:
                tracks[key] = 1000 + len(tracks)
                d = trace.packet.add()
                d.trusted_packet_sequence_id = seq
                d.track_descriptor.uuid = tracks[key]
                d.track_descriptor.name = f"{label} AGENT [{key[0]}] STREAM [{key[1]}] (GPU)"
            uuid, corr, queue = tracks[key], what.corr, what.queue
        b = trace.packet.add()
        b.timestamp = start
        b.trusted_packet_sequence_id = seq
        if name not in names:
            names[name] = len(names) + 1
            b.interned_data.event_names.add(iid=names[name], name=name)
        e = b.track_event
        e.type = 1  # SLICE_BEGIN
        e.track_uuid = uuid
        e.name_iid = names[name]
        e.category_iids.append(categories[cat])
        for key, value in (("corr_id", corr), ("queue", queue)):
            if value is not None:
                a = e.debug_annotations.add()
                a.name_iid = notes[key]
                a.uint_value = value
        f = trace.packet.add()
        f.timestamp = end
        f.trusted_packet_sequence_id = seq
        f.track_event.type = 2  # SLICE_END
        f.track_event.track_uuid = uuid
    path.write_bytes(trace.SerializeToString())
    return path
