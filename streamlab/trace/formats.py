"""Which trace format a file is, told from its content (never its name), and the reader for it.

`load_trace` opens a file once, decompresses gzip when the magic bytes say so, looks at the
first bytes (JSON and its first key, the SQLite header and the tables it holds, a CSV header, a
protobuf TracePacket) and hands the stream or file to the reader of that format. Every reader
produces the same LoadedTrace (module loaded), so segmentation, the summary and the diff work on
any of them unchanged. `FORMATS` says, per format, which tools' output and schema versions the
reader was written against; `TraceInfo.format` and `TraceInfo.schema` say which one was found.
"""

from __future__ import annotations

import gzip
import os
import sqlite3
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from streamlab.errors import EXIT_BAD_INPUT, Failure
from streamlab.trace.loaded import LoadedTrace

__all__ = ["FORMATS", "Format", "detect", "load_trace"]

HEAD = 1 << 16  # decompressed bytes looked at to tell the format
SQLITE_MAGIC = b"SQLite format 3\x00"


@dataclass(frozen=True)
class Format:
    name: str  # TraceInfo.format
    title: str
    schema: str  # the tools and schema versions the reader was written against


FORMATS = {f.name: f for f in (
    Format("kineto", "PyTorch profiler (Kineto) / Chrome trace JSON",
           "Kineto traces of PyTorch 1.9-2.x (CUPTI and roctracer), Chrome JSON object and "
           "array formats"),
    Format("streamlab", "streamlab run trace (Chrome JSON written by streamlab.trace.chrome)",
           "streamlab's own writer: layers and nodes as recorded"),
    Format("rocprofv3-json", "rocprofv3 JSON (rocprofiler-sdk, --output-format json)",
           "rocprofiler-sdk 0.5-1.x JSON (ROCm 6.3-7.x): rocprofiler-sdk-tool[].buffer_records"
           ".{kernel_dispatch, memory_copy, hip_api}, agents, kernel_symbols, strings"),
    Format("rocpd", "rocpd SQLite database (rocprofv3's default output since ROCm 7.0)",
           "rocpd schema_version 3 (rocprofiler-sdk 1.0, ROCm 7.0-7.2): rocpd_kernel_dispatch "
           "with start/end/agent/queue/stream, or with track_id and rocpd_timestamp"),
    Format("rocprofv3-csv", "rocprofv3 kernel_trace.csv (--output-format csv)",
           "rocprofv3 kernel_trace.csv of ROCm 6.2-7.x (Agent_Id as a number or \"Agent N\", "
           "with or without Stream_Id) and rocpd2csv's (a leading Guid column)"),
    Format("pftrace", "Perfetto protobuf trace (.pftrace, rocprofv3 --output-format pftrace)",
           "Perfetto TracePacket / TrackEvent protos of the perfetto 0.59 Python package; "
           "rocprofv3's kernel_dispatch / memory_copy / hip_api slices (ROCm 6.3-7.x)"),
    Format("nsys-sqlite", "Nsight Systems SQLite export (nsys export --type sqlite)",
           "Nsight Systems 2021.5-2025.x export schema: CUPTI_ACTIVITY_KIND_KERNEL / MEMCPY / "
           "MEMSET, CUPTI_ACTIVITY_KIND_RUNTIME, NVTX_EVENTS, StringIds, TARGET_INFO_GPU"),
)}
EXPECTED = ("expected one of: " + "; ".join(f.title for n, f in FORMATS.items()
                                              if n != "streamlab"))


def load_trace(path: str | os.PathLike, *, clip: bool = True, gpu: str | None = None) -> LoadedTrace:
    """Read a trace in any format of FORMATS, told apart by content, as a LoadedTrace of one GPU
    (`gpu`, default: the one with the most device time)."""
    path = Path(path)
    try:
        raw = open(path, "rb")  # noqa: SIM115  (closed by the with below; open's error named)
    except OSError as e:
        raise Failure(f"{path}: cannot read the trace: {e.strerror or e}", EXIT_BAD_INPUT) from None
    with raw:
        gz = raw.read(2) == b"\x1f\x8b"
        raw.seek(0)
        binary = gzip.GzipFile(fileobj=raw, mode="rb") if gz else raw
        stream = _Prefixed(binary)
        fmt = detect(path, stream.head, gz)
        loaded = _READERS[fmt.name](path, stream, clip=clip, gpu=gpu)
    if loaded.info.format == fmt.name:
        loaded.info.schema = fmt.schema
    else:  # a Kineto-looking file written by streamlab
        loaded.info.schema = FORMATS[loaded.info.format].schema
    return loaded


def detect(path: Path, head: bytes, gz: bool) -> Format:
    """The format of a file whose first decompressed bytes are `head`."""
    if head.startswith(SQLITE_MAGIC):
        if gz:
            raise Failure(f"{path}: a gzip-compressed SQLite database: decompress it first "
                          "(gunzip), SQLite reads only plain files", EXIT_BAD_INPUT)
        return FORMATS[_sqlite_kind(path)]
    text = head.lstrip(b" \t\r\n\xef\xbb\xbf")
    if text[:1] in (b"{", b"["):
        after = text[1:].lstrip(b" \t\r\n")
        if after.startswith(b'"rocprofiler-sdk-tool"'):
            return FORMATS["rocprofv3-json"]
        return FORMATS["kineto"]
    first_line = text.split(b"\n", 1)[0]
    if b"Kernel_Name" in first_line and b"Start_Timestamp" in first_line:
        return FORMATS["rocprofv3-csv"]
    if head[:1] == b"\x0a" and _looks_like_packet(head):
        return FORMATS["pftrace"]
    if not head:
        raise Failure(f"{path}: the file is empty; {EXPECTED}", EXIT_BAD_INPUT)
    if b"," in first_line and first_line.isascii():
        raise Failure(f"{path}: a CSV file without rocprofv3's kernel_trace columns (Kernel_Name, "
                      f"Start_Timestamp, End_Timestamp): header {first_line[:120].decode()!r}; "
                      "pass rocprofv3's kernel_trace.csv", EXIT_BAD_INPUT)
    shown = text[:1].decode("utf-8", "replace") if text[:1].isascii() else f"byte {text[0]:#04x}"
    raise Failure(f"{path}: not a trace this tool reads: starts with {shown!r}; {EXPECTED}",
                  EXIT_BAD_INPUT)


def _sqlite_kind(path: Path) -> str:
    """rocpd or nsys-sqlite, from the tables of the database."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            names = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
        finally:
            db.close()
    except sqlite3.DatabaseError as e:
        raise Failure(f"{path}: an SQLite file that cannot be read: {e}", EXIT_BAD_INPUT) from None
    if any(n.startswith("rocpd_") for n in names):
        return "rocpd"
    if "StringIds" in names or any(n.startswith("CUPTI_ACTIVITY_KIND_") for n in names):
        return "nsys-sqlite"
    shown = ", ".join(sorted(names)[:12]) or "none"
    raise Failure(f"{path}: an SQLite database that is neither a rocpd database (rocpd_* tables) "
                  f"nor an Nsight Systems export (StringIds, CUPTI_ACTIVITY_KIND_* tables); its "
                  f"tables: {shown}", EXIT_BAD_INPUT)


def _looks_like_packet(head: bytes) -> bool:
    """Whether head starts as a protobuf Trace: field 1 (a TracePacket, length-delimited)
    whose length varint is sane."""
    n, shift, i = 0, 0, 1
    while i < min(len(head), 11):
        b = head[i]
        n |= (b & 0x7F) << shift
        i += 1
        if not b & 0x80:
            return 0 < n < (1 << 30)
        shift += 7
    return False


class _Prefixed:
    """The decompressed stream with its first HEAD bytes read ahead (`head`); `read1` gives
    them first. A read error met while reading ahead is raised when the data before it is
    used up, as the readers expect of a stream."""

    def __init__(self, binary) -> None:
        self.binary = binary
        parts, got, self.error = [], 0, None
        while got < HEAD:
            try:
                data = binary.read1(HEAD - got)
            except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as e:
                self.error = e
                break
            if not data:
                break
            parts.append(data)
            got += len(data)
        self.head = b"".join(parts)
        self.at = 0

    def read1(self, n: int = -1) -> bytes:
        if self.at < len(self.head):
            size = len(self.head) - self.at if n < 0 else min(n, len(self.head) - self.at)
            self.at += size
            return self.head[self.at - size:self.at]
        if self.error is not None:
            raise self.error
        return self.binary.read1(n)

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            parts = [self.read1()]
            while parts[-1]:
                parts.append(self.read1(1 << 20))
            return b"".join(parts)
        parts, got = [], 0
        while got < n:
            data = self.read1(n - got)
            if not data:
                break
            parts.append(data)
            got += len(data)
        return b"".join(parts)


def _kineto(path: Path, stream, *, clip: bool, gpu: str | None) -> LoadedTrace:
    from streamlab.trace.kineto import read_kineto

    return read_kineto(stream, path, clip=clip, gpu=gpu)


def _rocprof_json(path: Path, stream, *, clip: bool, gpu: str | None) -> LoadedTrace:
    from streamlab.trace.rocprof_json import read_rocprof_json

    return read_rocprof_json(stream, path, clip=clip, gpu=gpu)


def _rocprof_csv(path: Path, stream, *, clip: bool, gpu: str | None) -> LoadedTrace:
    from streamlab.trace.rocprof_csv import read_rocprof_csv

    return read_rocprof_csv(stream, path, clip=clip, gpu=gpu)


def _pftrace(path: Path, stream, *, clip: bool, gpu: str | None) -> LoadedTrace:
    from streamlab.trace.pftrace import read_pftrace

    return read_pftrace(stream, path, clip=clip, gpu=gpu)


def _rocpd(path: Path, stream, *, clip: bool, gpu: str | None) -> LoadedTrace:
    from streamlab.trace.rocpd import read_rocpd

    return read_rocpd(path, clip=clip, gpu=gpu)


def _nsys(path: Path, stream, *, clip: bool, gpu: str | None) -> LoadedTrace:
    from streamlab.trace.nsys import read_nsys

    return read_nsys(path, clip=clip, gpu=gpu)


_READERS: dict[str, Callable[..., LoadedTrace]] = {
    "kineto": _kineto, "rocprofv3-json": _rocprof_json, "rocprofv3-csv": _rocprof_csv,
    "pftrace": _pftrace, "rocpd": _rocpd, "nsys-sqlite": _nsys}
