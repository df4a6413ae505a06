"""Read rocprofv3's kernel_trace.csv (`rocprofv3 --kernel-trace --output-format csv`, and
rocpd2csv's out_kernel_trace.csv).

Columns are found by name in the header, whatever their order or case: `Kernel_Name`,
`Start_Timestamp`, `End_Timestamp` (ns) required; `Agent_Id` (a number, or "Agent N" since
ROCm 6.4), `Queue_Id`, `Stream_Id` (absent before ROCm 6.4: the queue then stands for the
stream), `Correlation_Id`, `Kind` optional; a leading `Guid` column (rocpd2csv) is ignored. The
CSV holds no API calls, so graph replays are not known.
"""

from __future__ import annotations

import csv
import io
import re
import zlib
from pathlib import Path

import numpy as np

from streamlab.errors import EXIT_BAD_INPUT, Failure
from streamlab.trace.assemble import RawOps, assemble
from streamlab.trace.loaded import KINDS, LoadedTrace, TraceInfo
from streamlab.trace.names import ALLREDUCE

__all__ = ["read_rocprof_csv"]

NS = 1e-3  # us per ns
REQUIRED = ("kernel_name", "start_timestamp", "end_timestamp")
DIGITS = re.compile(r"-?\d+")


def read_rocprof_csv(binary, path: Path, *, clip: bool = True, gpu: str | None = None) -> LoadedTrace:
    """The kernel dispatches of a kernel_trace.csv in the byte stream `binary`, of one GPU."""
    text = io.TextIOWrapper(_Raw(binary), encoding="utf-8", errors="strict", newline="")
    try:
        rows = csv.reader(text)
        header = [h.strip().lower() for h in next(rows, [])]
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise Failure(f"{path}: a CSV without the kernel_trace columns "
                          f"{', '.join(missing)}; pass rocprofv3's kernel_trace.csv", EXIT_BAD_INPUT)
        at = {c: header.index(c) for c in header}
        want = ("kernel_name", "start_timestamp", "end_timestamp", "agent_id", "queue_id",
                "stream_id", "correlation_id")
        columns: dict[str, list[str]] = {c: [] for c in want if c in at}
        width = len(header)
        for line, row in enumerate(rows, start=2):
            if len(row) != width:
                if not row:
                    continue
                raise Failure(f"{path}:{line}: {len(row)} fields where the header has {width}",
                              EXIT_BAD_INPUT)
            for c, values in columns.items():
                values.append(row[at[c]])
    except UnicodeDecodeError as e:
        raise Failure(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})", EXIT_BAD_INPUT) from None
    except csv.Error as e:
        raise Failure(f"{path}: malformed CSV: {e}", EXIT_BAD_INPUT) from None
    except (EOFError, OSError, zlib.error) as e:
        raise Failure(f"{path}: the file cannot be read to its end ({e}): truncated?",
                      EXIT_BAD_INPUT) from None
    n = len(columns["kernel_name"])
    start = _ints(path, columns, "start_timestamp")
    end = _ints(path, columns, "end_timestamp")
    agent = _ints(path, columns, "agent_id") if "agent_id" in columns else np.zeros(n, np.int64)
    queue = _ints(path, columns, "queue_id") if "queue_id" in columns else np.zeros(n, np.int64)
    stream = _ints(path, columns, "stream_id") if "stream_id" in columns else queue
    corr = _ints(path, columns, "correlation_id") if "correlation_id" in columns \
        else np.full(n, -1, np.int64)
    names, name = np.unique(np.array(columns["kernel_name"], dtype=object), return_inverse=True)
    names = [str(x) for x in names]
    is_ar = np.array([bool(ALLREDUCE.search(x)) for x in names], bool)
    kind = np.where(is_ar[name] if n else np.zeros(0, bool), KINDS.index("allreduce"),
                    KINDS.index("kernel")).astype(np.int8)
    stream_ids, stream_ix = np.unique(stream, return_inverse=True)
    queue_ids, queue_ix = np.unique(queue, return_inverse=True)
    base = int(start.min()) if n else 0
    raw = RawOps(names, name.astype(np.int64), stream_ids.tolist(), stream_ix.astype(np.int64),
                 kind, agent, (start - base) * NS, (end - start) * NS, corr,
                 queue=queue_ix.astype(np.int64), queue_ids=queue_ids.tolist())
    info = TraceInfo(str(path), "rocprofv3-csv", "rocprofiler-sdk", events=n,
                     missing_stream=0 if "stream_id" in columns else n)
    return assemble(raw, info, graph_corr=set(), device_names={}, gpu=gpu, clip=clip)


def _ints(path: Path, columns: dict[str, list[str]], column: str) -> np.ndarray:
    """A column of integers; "Agent 7" reads as 7. Failure naming the first bad row."""
    values = columns[column]
    try:
        return np.array(values, dtype=np.int64)
    except (ValueError, OverflowError):
        pass
    out = np.empty(len(values), np.int64)
    for i, v in enumerate(values):
        m = DIGITS.search(v)
        if m is None or (column.endswith("timestamp") and m.group() != v.strip()):
            raise Failure(f"{path}:{i + 2}: {column} {v!r} is not an integer "
                          "(nanoseconds for timestamps)", EXIT_BAD_INPUT)
        out[i] = int(m.group())
    return out


class _Raw(io.RawIOBase):
    """A readable raw stream over the format sniffer's stream (formats._Prefixed)."""

    def __init__(self, stream) -> None:
        self.stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.stream.read1(len(buffer))
        buffer[:len(data)] = data
        return len(data)
