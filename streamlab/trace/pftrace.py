"""Read a Perfetto protobuf trace (.pftrace), as rocprofv3 writes it (`--output-format
pftrace`), through the TracePacket protos that the `perfetto` Python package ships (compiled
for `protobuf`; no trace_processor binary, so it works offline and in CI).

The file is a protobuf `Trace`: length-delimited `TracePacket`s, read one at a time (memory
stays flat). What is used:
- `track_descriptor`: track uuid -> name. rocprofv3 names GPU tracks
  "COMPUTE AGENT [a] STREAM [s] (GPU)" and "COPY to AGENT [a] STREAM [s] (GPU)" (or
  "COMPUTE ... QUEUE [q] ..." with --group-by-queue): the agent and stream come from there;
- `track_event` slices (SLICE_BEGIN / SLICE_END on a track; name, categories and debug
  annotation names interned per packet sequence in `interned_data`, cleared when a packet says
  SEQ_INCREMENTAL_STATE_CLEARED): category `kernel_dispatch` -> a kernel, `memory_copy` -> a
  copy; `hip_api`, `hsa_api`, `marker_api`, `rccl_api` -> API calls counted by name;
- debug annotations `queue` (the hardware queue), `corr_id` (the correlation id: graph launches
  group the kernels they replay) and `agent`.
Slices on tracks named like GPU work (GPU, COMPUTE, STREAM) with other categories count as
device work too, so other writers' GPU tracks read; a trace with none ends in one Failure.
"""

from __future__ import annotations

import re
from array import array
from collections import Counter
from pathlib import Path

import numpy as np

from streamlab.errors import EXIT_BAD_INPUT, EXIT_ENVIRONMENT, Failure
from streamlab.trace.assemble import RawOps, assemble, ns_to_us
from streamlab.trace.loaded import INDEX, KIND, KINDS, LoadedTrace, TraceInfo, as_text
from streamlab.trace.names import GRAPH_LAUNCH, MARKS

__all__ = ["read_pftrace"]

DEVICE_CATEGORIES = {"kernel_dispatch": "kernel", "memory_copy": "memcpy"}
API_CATEGORIES = {"hip_api", "hsa_api", "marker_api", "rccl_api", "rocdecode_api", "rocjpeg_api"}
GPU_TRACK = re.compile(r"GPU|COMPUTE|STREAM|COPY to AGENT", re.IGNORECASE)
TRACK_IDS = re.compile(r"AGENT \[(\d+)\].*?(STREAM|QUEUE) \[(\d+)\]", re.IGNORECASE)
SLICE_BEGIN, SLICE_END = 1, 2
INCREMENTAL_STATE_CLEARED = 1
CHUNK = 1 << 17  # bytes read at a time (the reader's memory is ~40 bytes a slice besides)


def _protos():
    try:
        from perfetto.protos.perfetto.trace import perfetto_trace_pb2
    except ImportError:
        raise Failure("reading a Perfetto .pftrace needs the perfetto and protobuf packages: "
                      "pip install perfetto protobuf (or pip install streamlab[traces])",
                      EXIT_ENVIRONMENT) from None
    return perfetto_trace_pb2


class _Sequence:
    """Interned strings of one packet sequence."""

    def __init__(self) -> None:
        self.names: dict[int, str] = {}
        self.categories: dict[int, str] = {}
        self.annotations: dict[int, str] = {}
        self.default_track = 0


def read_pftrace(binary, path: Path, *, clip: bool = True, gpu: str | None = None) -> LoadedTrace:
    """The GPU slices of a .pftrace in the byte stream `binary`, of one GPU."""
    pb = _protos()
    from google.protobuf.message import DecodeError

    tracks: dict[int, str] = {}
    sequences: dict[int, _Sequence] = {}
    open_slices: dict[int, list] = {}
    rows = _Rows()
    api: Counter = Counter()
    graph_corr: set[int] = set()
    marks: Counter = Counter()
    packets = 0
    for index, data in _packets(binary, path):
        packets += 1
        try:
            packet = pb.TracePacket.FromString(data)
        except DecodeError as e:
            raise Failure(f"{path}: TracePacket {index} does not decode ({e}): not a Perfetto "
                          "trace, or a corrupt one", EXIT_BAD_INPUT) from None
        seq_id = packet.trusted_packet_sequence_id
        if packet.sequence_flags & INCREMENTAL_STATE_CLEARED or seq_id not in sequences:
            sequences[seq_id] = _Sequence()
        seq = sequences[seq_id]
        if packet.HasField("trace_packet_defaults"):
            seq.default_track = packet.trace_packet_defaults.track_event_defaults.track_uuid
        if packet.HasField("interned_data"):
            interned = packet.interned_data
            seq.names.update((x.iid, x.name) for x in interned.event_names)
            seq.categories.update((x.iid, x.name) for x in interned.event_categories)
            seq.annotations.update((x.iid, x.name) for x in interned.debug_annotation_names)
        if packet.HasField("track_descriptor"):
            d = packet.track_descriptor
            tracks[d.uuid] = d.name or d.static_name or (d.thread.thread_name if d.HasField("thread")
                                                          else "")
        if not packet.HasField("track_event"):
            continue
        ev = packet.track_event
        track = ev.track_uuid if ev.HasField("track_uuid") else seq.default_track
        if ev.type == SLICE_BEGIN:
            name = ev.name if ev.HasField("name") else seq.names.get(ev.name_iid, "?")
            cats = list(ev.categories) + [seq.categories.get(i, "") for i in ev.category_iids]
            notes = {}
            for a in ev.debug_annotations:
                key = a.name if a.HasField("name") else seq.annotations.get(a.name_iid, "")
                if key in ("queue", "corr_id", "stream"):
                    notes[key] = a.int_value if a.HasField("int_value") else a.uint_value
            open_slices.setdefault(track, []).append(
                (name, cats[0] if cats else "", packet.timestamp, notes))
        elif ev.type == SLICE_END and open_slices.get(track):
            name, cat, start, notes = open_slices[track].pop()
            if cat in API_CATEGORIES:
                api[name] += 1
                if GRAPH_LAUNCH.search(name) and "corr_id" in notes:
                    graph_corr.add(notes["corr_id"])
                for mark in MARKS:
                    marks[mark.decode()] += mark.decode() in name
            else:
                rows.add(track, name, cat, start, packet.timestamp, notes.get("queue", -1),
                         notes.get("corr_id", -1))
    return _build(path, rows, tracks, api, graph_corr, marks, packets, clip, gpu)


def _packets(binary, path: Path):
    """(index, bytes) of each TracePacket of the protobuf Trace in the stream."""
    buf, pos, index = b"", 0, 0
    eof = False

    def need(n: int) -> bool:
        nonlocal buf, pos, eof
        while len(buf) - pos < n and not eof:
            try:
                data = binary.read1(CHUNK)
            except (EOFError, OSError) as e:
                raise Failure(f"{path}: the file cannot be read to its end after TracePacket "
                              f"{index} ({e}): truncated?", EXIT_BAD_INPUT) from None
            if not data:
                eof = True
            buf, pos = buf[pos:] + data, 0
        return len(buf) - pos >= n

    while need(1):
        need(20)  # a tag and a length: two varints of at most 10 bytes
        tag, pos = _varint(buf, pos, path, index)
        length, pos = _varint(buf, pos, path, index)
        field, wire = tag >> 3, tag & 7
        if wire != 2:
            raise Failure(f"{path}: at TracePacket {index}: field {field} of wire type {wire}, "
                          "expected length-delimited packets: not a Perfetto trace", EXIT_BAD_INPUT)
        if not need(length):
            raise Failure(f"{path}: the file ends inside TracePacket {index} ({len(buf) - pos:,} "
                          f"of its {length:,} bytes): truncated", EXIT_BAD_INPUT)
        if field == 1:
            yield index, buf[pos:pos + length]
            index += 1
        pos += length


def _varint(buf: bytes, pos: int, path: Path, index: int) -> tuple[int, int]:
    value, shift = 0, 0
    while pos < len(buf) and shift <= 63:
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7
    raise Failure(f"{path}: the file ends inside the header of TracePacket {index}, or it is "
                  "malformed: truncated, or not a Perfetto trace", EXIT_BAD_INPUT)


class _Rows:
    """Finished non-API slices as compact columns (a slice costs ~38 bytes, less than the file
    spends on it): track, name, category and queue as indices (into `tracks`, `names`, `cats`,
    `queues`: the values as written, in order of first use; queue -1: none given), stamps (ns),
    correlation."""

    def __init__(self) -> None:
        self.tracks: dict[int, int] = {}  # track uuid -> index
        self.names: dict[str, int] = {}
        self.cats: dict[str, int] = {}
        self.queues: dict[int, int] = {}
        self.cols = {k: array(t) for k, t in (("track", "i"), ("name", "i"), ("cat", "h"),
                                              ("start", "q"), ("end", "q"), ("queue", "i"),
                                              ("corr", "q"))}

    def add(self, track, name, cat, start, end, queue, corr) -> None:
        c = self.cols
        c["track"].append(self.tracks.setdefault(track, len(self.tracks)))
        c["name"].append(self.names.setdefault(name, len(self.names)))
        c["cat"].append(self.cats.setdefault(cat, len(self.cats)))
        c["start"].append(start)
        c["end"].append(end)
        c["queue"].append(self.queues.setdefault(queue, len(self.queues)))
        c["corr"].append(corr)

    def pop(self, key: str) -> np.ndarray:
        """A column as numpy over the collected array (released here)."""
        arr = self.cols.pop(key)
        return np.frombuffer(arr, arr.typecode) if len(arr) else np.zeros(0, arr.typecode)


def _build(path: Path, rows: _Rows, tracks, api, graph_corr, marks, packets, clip, gpu) -> LoadedTrace:
    uuids = list(rows.tracks)  # per track index: its uuid, label and what it says
    labels = [tracks.get(t, str(t)) for t in uuids]
    ids = [TRACK_IDS.search(tracks.get(t, "")) for t in uuids]
    cat_names = list(rows.cats)
    device_cat = np.array([c in DEVICE_CATEGORIES for c in cat_names] or [False], bool)
    gpu_track = np.array([bool(GPU_TRACK.search(x)) for x in labels] or [False], bool)
    track, cat = rows.pop("track"), rows.pop("cat")
    keep = device_cat[cat] | gpu_track[track]
    if not keep.any():
        shown = ", ".join(sorted({t for t in tracks.values() if t})[:6]) or "none named"
        raise Failure(f"{path}: a Perfetto trace with no GPU tracks: no kernel_dispatch / "
                      f"memory_copy slices and no track named like GPU work (GPU, COMPUTE, STREAM); "
                      f"its tracks: {shown}", EXIT_BAD_INPUT)
    pick = None if keep.all() else np.flatnonzero(keep)
    del keep

    def column(values: np.ndarray) -> np.ndarray:
        return values if pick is None else values[pick]

    track, cat = column(track), column(cat)
    name, start, end = column(rows.pop("name")), column(rows.pop("start")), column(rows.pop("end"))
    queue, corr = column(rows.pop("queue")), column(rows.pop("corr"))
    # per track: its agent and stream (from the name), and a queue when the track is one
    agent_of = np.array([int(m.group(1)) if m else -1 for m in ids], INDEX)
    stream_label = [m.group(3) if m else (label or str(t)) for m, label, t in zip(ids, labels, uuids)]
    stream_ids = sorted(set(stream_label))
    stream_of = np.array([stream_ids.index(x) for x in stream_label], INDEX)
    queues = rows.queues  # a slice without a queue annotation: its track's, when it is a queue
    queue_of = np.array([queues.setdefault(int(m.group(3)) if m and m.group(2).upper() == "QUEUE" else -1,
                                           len(queues)) for m in ids], INDEX)
    if -1 in queues:
        unknown = queue == queues[-1]
        queue[unknown] = queue_of[track[unknown]]
        del unknown
    kind_of = np.array([KINDS.index(DEVICE_CATEGORIES.get(c, "kernel")) for c in cat_names], KIND)
    kind = kind_of[cat]
    del cat
    start, dur = ns_to_us(start, end)
    raw = RawOps(list(rows.names), name, stream_ids, stream_of[track], kind, agent_of[track], start, dur,
                 corr, queue=queue, queue_ids=[str(q) if q >= 0 else "-" for q in queues])
    del name, track, kind, start, dur, end, corr, queue
    info = TraceInfo(str(path), "pftrace", "perfetto", events=packets,
                     runtime_calls=sum(api.values()),
                     runtime_by_name=dict(sorted(api.items(), key=lambda kv: (-kv[1], kv[0]))),
                     graph_launches=sum(v for k, v in api.items() if GRAPH_LAUNCH.search(k)),
                     markers={k: v for k, v in marks.items() if v},
                     metadata=as_text({"tracks": len(tracks)}))
    return assemble(raw, info, graph_corr=graph_corr, device_names={}, gpu=gpu, clip=clip)
