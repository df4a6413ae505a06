"""From the columns a reader found to a LoadedTrace: one path for every format, so each quirk is
handled once.

A reader fills `RawOps` (microseconds, stream and queue ids as the file writes them, correlation
ids, the GPU of each operation, and for Kineto the stream waits on recorded events) and a
`TraceInfo`; `assemble` then
- refuses timestamps that are not numbers or negative (one Failure naming the operation);
- keeps one GPU: `gpu` when given, else the GPU with the most device time, and says which and
  why (`TraceInfo.gpu_choice`, `TraceInfo.gpus`): a trace of several GPUs is summarised per GPU;
- gives kernels whose name says all-reduce the `allreduce` kind (analysis.is_allreduce_kernel);
- rebases time to that GPU's first operation, sets negative durations to zero (counted) and
  clips an operation still running when the next one on its stream starts (counted; a stream
  runs its work in order, and roctracer / rocprofiler stamps are known to overlap by a few ns);
- groups operations into graph replays: all kernels of a replayed graph carry the correlation id
  of its launch (`graph_corr`, the launches' ids); each operation's replay, or -1 when eager;
- turns stream waits on recorded events into edges between operations (`event_edges`).

Memory. A compact trace format (SQLite, protobuf) spends 45-75 bytes on an operation, so the
assembly must not spend more than that on top of the columns themselves: it works in place on
the reader's columns (which it consumes), in the narrow dtypes of loaded.DeviceOps, and bounds
its temporaries (chunks, one permutation at a time).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from streamlab.analysis import is_allreduce_kernel
from streamlab.errors import EXIT_BAD_INPUT, Failure
from streamlab.results import TraceGpu
from streamlab.timeline import Source
from streamlab.trace.loaded import INDEX, KIND, KINDS, DeviceOps, LoadedTrace, TraceInfo

__all__ = ["EventWaits", "RawOps", "assemble", "index_of", "ns_to_us"]

CHUNK = 1 << 14  # elements per step of the chunked passes: temporaries of 128 KB
KERNEL, ALLREDUCE = KINDS.index("kernel"), KINDS.index("allreduce")


@dataclass
class EventWaits:
    """Stream waits on a recorded event (CUPTI's cudaStreamWaitEvent records in Kineto): per
    wait, its GPU, the waiting stream and the stream waited on (indices into RawOps.stream_ids,
    -1 for a stream with no operation), the correlation id of the cudaEventRecord it waits for
    and its own."""

    device: np.ndarray
    stream: np.ndarray
    on_stream: np.ndarray
    record: np.ndarray
    corr: np.ndarray


@dataclass
class RawOps:
    """Device operations as a reader found them, in any order; `assemble` consumes the columns
    (rebased, clipped and reordered in place)."""

    names: list[str]
    name: np.ndarray  # index into names
    stream_ids: list  # stream ids as written (int or str)
    stream: np.ndarray  # index into stream_ids
    kind: np.ndarray  # index into loaded.KINDS (kernel, memcpy, memset; all-reduces found here)
    device: np.ndarray  # GPU id, -1 unknown
    start: np.ndarray  # float64 microseconds, any origin
    dur: np.ndarray  # float64 microseconds
    corr: np.ndarray  # int64 correlation id, -1 none
    queue: np.ndarray | None = None  # index into queue_ids (hardware queue)
    queue_ids: list = field(default_factory=list)
    waits: EventWaits | None = None


def ns_to_us(start: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer nanosecond stamps as float microseconds from the first start, and durations, in
    the same buffers (int64 -> float64 views; chunked, so no full-length temporary)."""
    base = int(start.min()) if start.size else 0
    us, dur = start.view(np.float64), end.view(np.float64)
    for i in range(0, start.size, CHUNK):
        s, e = start[i:i + CHUNK], end[i:i + CHUNK]
        d = (e - s) * 1e-3
        us[i:i + CHUNK] = (s - base) * 1e-3
        dur[i:i + CHUNK] = d
    return us, dur


def index_of(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct values, sorted, and each value's index among them (loaded.INDEX), written
    over `values` when it has that dtype (chunked): a column of ids becomes a column of
    indices without a full-length temporary."""
    used = np.unique(values)
    out = values if values.dtype == INDEX else np.empty(values.size, INDEX)
    for i in range(0, values.size, CHUNK):
        out[i:i + CHUNK] = np.searchsorted(used, values[i:i + CHUNK])
    return used, out


def assemble(raw: RawOps, info: TraceInfo, *, graph_corr, device_names: dict[int, str],
             gpu: str | None = None, clip: bool = True, shared_ids_are_replays: bool = False,
             detail: dict | None = None) -> LoadedTrace:
    """The LoadedTrace of one GPU of `raw` (see the module doc). `graph_corr`: correlation ids of
    graph launches; `shared_ids_are_replays`: with no CPU-side record at all, operations that
    share a correlation id are taken as one replay."""
    path = info.path
    _check_times(raw, path)
    chosen = _choose_gpu(raw, info, device_names, gpu)
    cols = _columns(raw, chosen)
    name, stream, kind, start, end, corr, queue = (cols[k] for k in (
        "name", "stream", "kind", "start", "dur", "corr", "queue"))
    is_ar = np.array([is_allreduce_kernel(n) for n in raw.names], bool)
    if kind.size and is_ar.any():
        kind[(kind == KERNEL) & is_ar[name]] = ALLREDUCE
    info.negative_durations = int(np.count_nonzero(end < 0))  # still durations
    if start.size:
        start -= start.min()
    np.maximum(end, 0.0, out=end)
    end += start  # now the ends
    order = _timeline_order(start, end)
    if order is not None:
        for cols_of in (name, stream, kind, start, end, corr, queue):
            if cols_of is not None:
                cols_of[:] = cols_of[order]
        del order
    if clip and start.size:
        _clip(start, end, stream, info)
        order = _timeline_order(start, end)  # a clipped end can reorder equal starts
        if order is not None:
            for cols_of in (name, stream, kind, start, end, corr, queue):
                if cols_of is not None:
                    cols_of[:] = cols_of[order]
    stream, labels = _dense(stream, raw.stream_ids)
    kinds = np.bincount(kind, minlength=len(KINDS))
    first = {k: int(np.argmax(kind == k)) for k in np.flatnonzero(kinds).tolist()}
    info.device_ops = {KINDS[k]: int(kinds[k]) for k in sorted(first, key=first.get)}
    replay = _replays(start, end, corr, np.asarray(sorted(graph_corr), np.int64), info,
                      shared_ids_are_replays)
    info.graph_ops = int(np.count_nonzero(replay >= 0))
    info.eager_ops = int(replay.size - info.graph_ops)
    if raw.waits is not None:
        info.event_edges, info.event_waits_unmatched = _event_edges(raw.waits, chosen, cols["stream"], corr)
    queues: list[str] = []
    if queue is not None:
        queue, queues = _dense(queue, raw.queue_ids)
    ops = DeviceOps(list(raw.names), name, labels, stream, kind, start, end, replay=replay,
                    queue=queue, queues=queues)
    extra = {"file": Path(path).name, "tracer": info.tracer, **(detail or {})}
    if len(info.gpus) > 1:
        extra["gpu"] = info.devices[0]
    if info.same_stream_overlaps:
        extra["same-stream overlaps clipped"] = info.same_stream_overlaps
    if info.missing_stream:
        extra["missing stream ids"] = info.missing_stream
    return LoadedTrace(info, Source("trace", info.device, extra), ops=ops)


def _check_times(raw: RawOps, path: str) -> None:
    """Timestamps and durations that are no finite numbers, or negative start times: one
    Failure naming the first such operation."""
    if np.isfinite(raw.start).all() and np.isfinite(raw.dur).all() and not (raw.start < 0).any():
        return
    bad = ~np.isfinite(raw.start) | ~np.isfinite(raw.dur)
    what = "a timestamp or duration that is not a number (NaN or infinite)"
    if not bad.any():
        bad = raw.start < 0
        what = "a negative timestamp"
    i = int(np.argmax(bad))
    raise Failure(f"{path}: device operation {i} ({raw.names[raw.name[i]]!r}) has {what} "
                  f"(start {float(raw.start[i])} us, duration {float(raw.dur[i])} us); "
                  f"{int(bad.sum())} such "
                  "operation(s): the trace is corrupt or was written by a broken exporter",
                  EXIT_BAD_INPUT)


def _choose_gpu(raw: RawOps, info: TraceInfo, device_names: dict[int, str],
                gpu: str | None) -> int | None:
    """The device id the summary is of (None: there are no operations); fills info.gpus,
    devices, device and gpu_choice."""
    ids = np.unique(raw.device)
    if ids.size > 1:
        at = np.searchsorted(ids, raw.device)
        busy = np.bincount(at, weights=np.maximum(raw.dur, 0.0), minlength=ids.size)
        count = np.bincount(at, minlength=ids.size)
        del at
    else:  # the sum of the durations that are not negative
        busy = np.array([float(raw.dur.sum() - raw.dur[raw.dur < 0].sum())] if ids.size else [])
        count = np.array([raw.device.size] if ids.size else [])
    info.gpus = [TraceGpu(str(d), device_names.get(d, ""), int(c), float(b))
                 for d, c, b in zip(ids.tolist(), count.tolist(), busy.tolist())]
    if gpu is not None:
        match = [i for i, g in enumerate(info.gpus) if g.id == gpu]
        if not match:
            have = ", ".join(f"{g.id} ({g.ops:,} operations)" for g in info.gpus) or "none"
            raise Failure(f"{info.path}: --gpu {gpu}: no device operations on that GPU; GPUs with "
                          f"work: {have}", EXIT_BAD_INPUT)
        pick, why = match[0], f"--gpu {gpu}"
    elif ids.size <= 1:
        pick, why = 0, "the only GPU with work"
    else:
        pick = int(np.argmax(busy))
        why = (f"the GPU with the most device time of the {ids.size} with work "
               "(choose another with --gpu)")
    if not ids.size:
        info.devices, info.gpu_choice = [], "no device operations"
        return None
    chosen = info.gpus[pick]
    info.devices, info.device = [chosen.id], chosen.name
    info.gpu_choice = f"GPU {chosen.id}" + (f" ({chosen.name})" if chosen.name else "") + f": {why}"
    return int(ids[pick])


def _columns(raw: RawOps, chosen: int | None) -> dict[str, np.ndarray | None]:
    """The chosen GPU's operations, each column in its DeviceOps dtype: the reader's own
    arrays where they already are (all on one GPU), else one copy each; the raw columns are
    released as they go."""
    keep = None if chosen is None or bool((raw.device == chosen).all()) \
        else np.flatnonzero(raw.device == chosen)
    raw.device = None
    out = {}
    for key, dtype in (("name", INDEX), ("stream", INDEX), ("kind", KIND), ("start", np.float64),
                       ("dur", np.float64), ("corr", np.int64), ("queue", INDEX)):
        col = getattr(raw, key)
        if col is not None:
            col = (col if keep is None else col[keep]).astype(dtype, copy=False)
        out[key] = col
        setattr(raw, key, None)
    return out


def _timeline_order(start: np.ndarray, end: np.ndarray) -> np.ndarray | None:
    """The permutation into timeline order (by start, then end; stable), or None when the
    operations are in it already (readers that sort by start usually are)."""
    ordered = True
    for i in range(0, max(start.size - 1, 0), CHUNK):
        s, e = start[i:i + CHUNK + 1], end[i:i + CHUNK + 1]
        if not np.all((s[1:] > s[:-1]) | ((s[1:] == s[:-1]) & (e[1:] >= e[:-1]))):
            ordered = False
            break
    return None if ordered else np.lexsort((end, start))


def _clip(starts: np.ndarray, ends: np.ndarray, key: np.ndarray, info: TraceInfo) -> None:
    """On each stream (key), end a device operation where the next one starts, if later. The
    operations are in timeline order, so a stable sort by stream gives each stream's order;
    each clip compares an operation with its successor only."""
    order = np.argsort(key, kind="stable")
    count, total, largest = 0, 0.0, 0.0
    for i in range(0, order.size - 1, CHUNK):
        a, b = order[i:i + CHUNK], order[i + 1:i + 1 + CHUNK]
        a = a[:b.size]
        over = ends[a] - starts[b]
        hit = (key[a] == key[b]) & (over > 0)
        if hit.any():
            count += int(np.count_nonzero(hit))
            total += float(over[hit].sum())
            largest = max(largest, float(over[hit].max()))
            ends[a[hit]] = starts[b[hit]]
    if count:
        info.same_stream_overlaps, info.overlap_clipped_us, info.max_overlap_us = count, total, largest


def _dense(index: np.ndarray, ids: list) -> tuple[np.ndarray, list[str]]:
    """Indices into `ids` renumbered over the ids used (in their order), and those ids as text."""
    used = np.bincount(index, minlength=len(ids)) > 0 if index.size else np.zeros(len(ids), bool)
    labels = [str(ids[i]) for i in np.flatnonzero(used).tolist()]
    if used.all():
        return index, labels
    renumber = (np.cumsum(used) - 1).astype(INDEX)
    return renumber[index], labels


def _replays(starts: np.ndarray, ends: np.ndarray, corr: np.ndarray, graph_corr: np.ndarray,
             info: TraceInfo, shared_ids_are_replays: bool) -> np.ndarray:
    """Group device operations by correlation id: a graph launch's kernels share its id. Fills
    info.replays and info.shared_correlations; returns each operation's replay (-1: eager)."""
    ids = corr[corr >= 0]
    ids.sort()
    dup = ids[1:] == ids[:-1]
    info.shared_correlations = int(np.count_nonzero(dup[1:] & ~dup[:-1]) + (dup[:1].sum()))
    keys = graph_corr if graph_corr.size or not shared_ids_are_replays else np.unique(ids[1:][dup])
    del ids, dup
    replay = np.full(corr.size, -1, INDEX)
    if not keys.size:
        info.replays = []
        return replay
    parts = [np.zeros(0, np.int64)]
    for i in range(0, corr.size, CHUNK):  # the operations whose id is a key
        c = corr[i:i + CHUNK]
        parts.append(i + np.flatnonzero(keys[np.minimum(np.searchsorted(keys, c), keys.size - 1)] == c))
    idx = np.concatenate(parts)
    if idx.size == 0:
        info.replays = []
        return replay
    idx = idx[np.argsort(corr[idx], kind="stable")]
    cuts = np.flatnonzero(np.diff(corr[idx])) + 1
    heads = np.concatenate(([0], cuts))
    first = np.minimum.reduceat(starts[idx], heads)
    last = np.maximum.reduceat(ends[idx], heads)
    sizes = np.diff(np.concatenate((heads, [idx.size])))
    spans = list(zip(first.tolist(), last.tolist(), sizes.tolist()))
    rank = np.empty(len(spans), INDEX)
    order = sorted(range(len(spans)), key=spans.__getitem__)
    rank[order] = np.arange(len(spans), dtype=INDEX)
    replay[idx] = np.repeat(rank, sizes)
    info.replays = [spans[k] for k in order]
    return replay


def _event_edges(w: EventWaits, chosen: int | None, raw_stream: np.ndarray,
                 corr: np.ndarray) -> tuple[list[tuple[int, int]], int]:
    """Edges (waited-for operation, waiting operation), indices in timeline order, from the
    stream waits of the chosen GPU: from the last operation enqueued on the recorded stream
    before the record (correlation ids increase in launch order) to the first one enqueued on
    the waiting stream after the wait; and how many waits named no such operations (work
    outside the trace, or a correlation id missing). `raw_stream`: each operation's index into
    RawOps.stream_ids, in timeline order."""
    mine = w.device == chosen
    rec, at, on, by = w.record[mine], w.corr[mine], w.on_stream[mine], w.stream[mine]
    if not rec.size:
        return [], 0
    ops = np.flatnonzero(corr >= 0)
    by_stream = np.lexsort((corr[ops], raw_stream[ops]))
    ops = ops[by_stream]
    key_stream, key_corr = raw_stream[ops].astype(np.int64), corr[ops]
    width = int(max(key_corr.max(initial=0), rec.max(initial=0), at.max(initial=0))) + 2
    keys = key_stream * width + key_corr
    k = np.searchsorted(keys, on * width + rec, "left") - 1  # the last before the record
    j = np.searchsorted(keys, by * width + at, "right")  # the first after the wait
    ok = (rec >= 0) & (at >= 0) & (on >= 0) & (by >= 0) & (k >= 0) & (j < keys.size)
    ok[ok] &= (key_stream[k[ok]] == on[ok]) & (key_stream[j[ok]] == by[ok])
    edges = [(a, b) for a, b in zip(ops[k[ok]].tolist(), ops[j[ok]].tolist()) if a < b]
    return edges, int(np.count_nonzero(~ok))
