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
from itertools import islice
from operator import itemgetter
from pathlib import Path

import numpy as np

from streamlab.errors import EXIT_BAD_INPUT, Failure
from streamlab.trace.assemble import RawOps, assemble, index_of, ns_to_us
from streamlab.trace.loaded import KIND, KINDS, LoadedTrace, TraceInfo

__all__ = ["read_rocprof_csv"]

REQUIRED = ("kernel_name", "start_timestamp", "end_timestamp")
WANT = ("kernel_name", "start_timestamp", "end_timestamp", "agent_id", "queue_id", "stream_id",
        "correlation_id")
ROWS = 1 << 16  # rows turned into numpy columns at a time
BUFFER = 1 << 20
DIGITS = re.compile(r"-?\d+")


def read_rocprof_csv(binary, path: Path, *, clip: bool = True, gpu: str | None = None) -> LoadedTrace:
    """The kernel dispatches of a kernel_trace.csv in the byte stream `binary`, of one GPU."""
    text = io.TextIOWrapper(io.BufferedReader(_Raw(binary), BUFFER), encoding="utf-8",
                            errors="strict", newline="")
    try:
        rows = csv.reader(text)
        header = [h.strip().lower() for h in next(rows, [])]
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise Failure(f"{path}: a CSV without the kernel_trace columns "
                          f"{', '.join(missing)}; pass rocprofv3's kernel_trace.csv", EXIT_BAD_INPUT)
        at = [header.index(c) for c in WANT if c in header]
        present = [c for c in WANT if c in header]
        width = len(header)
        names: dict[str, int] = {}
        parts: list[dict[str, np.ndarray]] = []
        line = 1
        while chunk := list(islice(rows, ROWS)):
            bad = next((i for i, r in enumerate(chunk) if len(r) != width), None)
            if bad is not None:
                raise Failure(f"{path}:{line + bad + 1}: {len(chunk[bad])} fields where the "
                              f"header has {width}", EXIT_BAD_INPUT)
            cols = dict(zip(present, zip(*(itemgetter(*at)(r) for r in chunk))))
            part = {c: _ints(path, cols[c], c, line + 1) for c in present if c != "kernel_name"}
            part["kernel_name"] = np.array([names.setdefault(x, len(names))
                                            for x in cols["kernel_name"]], np.int64)
            parts.append(part)
            line += len(chunk)
    except UnicodeDecodeError as e:
        raise Failure(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})", EXIT_BAD_INPUT) from None
    except csv.Error as e:
        raise Failure(f"{path}: malformed CSV: {e}", EXIT_BAD_INPUT) from None
    except (EOFError, OSError, zlib.error) as e:
        raise Failure(f"{path}: the file cannot be read to its end ({e}): truncated?",
                      EXIT_BAD_INPUT) from None
    columns = {c: np.concatenate([p[c] for p in parts]) if parts else np.zeros(0, np.int64)
               for c in present}
    name = columns["kernel_name"]
    n = name.size
    start, end = columns["start_timestamp"], columns["end_timestamp"]
    agent = columns.get("agent_id", np.zeros(n, np.int64))
    queue = columns.get("queue_id", np.zeros(n, np.int64))
    stream = columns.get("stream_id", queue)
    corr = columns.get("correlation_id", np.full(n, -1, np.int64))
    stream_ids, stream_ix = index_of(stream)
    queue_ids, queue_ix = index_of(queue)
    start, dur = ns_to_us(start, end)
    raw = RawOps(list(names), name, stream_ids.tolist(), stream_ix,
                 np.full(n, KINDS.index("kernel"), KIND), agent, start, dur, corr, queue=queue_ix,
                 queue_ids=queue_ids.tolist())
    info = TraceInfo(str(path), "rocprofv3-csv", "rocprofiler-sdk", events=n,
                     missing_stream=0 if "stream_id" in columns else n)
    del columns, name, stream, stream_ix, queue, queue_ix, agent, start, end, dur, corr
    return assemble(raw, info, graph_corr=set(), device_names={}, gpu=gpu, clip=clip)


def _ints(path: Path, values: tuple[str, ...], column: str, first_line: int) -> np.ndarray:
    """A column of integers; "Agent 7" reads as 7. Failure naming the first bad row (its line
    in the file: `first_line` is the first value's)."""
    try:
        return np.array(values, dtype=np.int64)
    except (ValueError, OverflowError):
        pass
    out = np.empty(len(values), np.int64)
    for i, v in enumerate(values):
        m = DIGITS.search(v)
        if m is None or (column.endswith("timestamp") and m.group() != v.strip()):
            raise Failure(f"{path}:{first_line + i}: {column} {v!r} is not an integer "
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
