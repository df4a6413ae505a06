"""From the columns a reader found to a LoadedTrace: one path for every format, so each quirk is
handled once.

A reader fills `RawOps` (absolute microseconds, stream and queue ids as the file writes them,
correlation ids, the GPU of each operation) and a `TraceInfo`; `assemble` then
- refuses timestamps that are not numbers or negative (one Failure naming the operation);
- keeps one GPU: `gpu` when given, else the GPU with the most device time, and says which and
  why (`TraceInfo.gpu_choice`, `TraceInfo.gpus`): a trace of several GPUs is summarised per GPU;
- rebases time to that GPU's first operation, sets negative durations to zero (counted) and
  clips an operation still running when the next one on its stream starts (counted; a stream
  runs its work in order, and roctracer / rocprofiler stamps are known to overlap by a few ns);
- groups operations into graph replays: all kernels of a replayed graph carry the correlation id
  of its launch (`graph_corr`, the launches' ids); each operation's replay, or -1 when eager.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from streamlab.errors import EXIT_BAD_INPUT, Failure
from streamlab.results import TraceGpu
from streamlab.timeline import Source
from streamlab.trace.loaded import KINDS, DeviceOps, LoadedTrace, TraceInfo

__all__ = ["RawOps", "assemble"]


@dataclass
class RawOps:
    """Device operations as a reader found them, in any order."""

    names: list[str]
    name: np.ndarray  # int64 index into names
    stream_ids: list  # stream ids as written (int or str)
    stream: np.ndarray  # int64 index into stream_ids
    kind: np.ndarray  # index into loaded.KINDS
    device: np.ndarray  # int64 GPU id, -1 unknown
    start: np.ndarray  # float64 microseconds, absolute
    dur: np.ndarray  # float64 microseconds
    corr: np.ndarray  # int64 correlation id, -1 none
    queue: np.ndarray | None = None  # int64 index into queue_ids (hardware queue)
    queue_ids: list = field(default_factory=list)


def assemble(raw: RawOps, info: TraceInfo, *, graph_corr, device_names: dict[int, str],
             gpu: str | None = None, clip: bool = True, shared_ids_are_replays: bool = False,
             detail: dict | None = None) -> LoadedTrace:
    """The LoadedTrace of one GPU of `raw` (see the module doc). `graph_corr`: correlation ids of
    graph launches; `shared_ids_are_replays`: with no CPU-side record at all, operations that
    share a correlation id are taken as one replay."""
    path = info.path
    _check_times(raw, path)
    keep = _choose_gpu(raw, info, device_names, gpu)
    name, stream, kind, corr = raw.name[keep], raw.stream[keep], raw.kind[keep], raw.corr[keep]
    queue = None if raw.queue is None else raw.queue[keep]
    ts, dur = raw.start[keep], raw.dur[keep]
    info.negative_durations = int(np.count_nonzero(dur < 0))
    starts = ts - (ts.min() if ts.size else 0.0)
    ends = starts + np.maximum(dur, 0.0)
    if clip and ts.size:
        _clip(starts, ends, stream, info)
    used, label = np.unique(stream, return_inverse=True)
    labels = [str(raw.stream_ids[s]) for s in used.tolist()]
    codes, first, counts = np.unique(kind, return_index=True, return_counts=True)
    info.device_ops = {KINDS[k]: c for _, k, c in sorted(zip(first.tolist(), codes.tolist(),
                                                              counts.tolist()))}
    replay = _replays(starts, ends, corr, np.asarray(sorted(graph_corr), np.int64), info,
                      shared_ids_are_replays)
    info.graph_ops = int(np.count_nonzero(replay >= 0))
    info.eager_ops = int(replay.size - info.graph_ops)
    queues: list[str] = []
    if queue is not None:
        qused, queue = np.unique(queue, return_inverse=True)
        queues = [str(raw.queue_ids[q]) for q in qused.tolist()]
    at = np.lexsort((ends, starts))  # timeline order (stable, as Timeline sorts)
    ops = DeviceOps(list(raw.names), name[at], labels, label[at], kind[at], starts[at], ends[at],
                    replay=replay[at], queue=None if queue is None else queue[at], queues=queues)
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
    bad = ~np.isfinite(raw.start) | ~np.isfinite(raw.dur)
    what = "a timestamp or duration that is not a number (NaN or infinite)"
    if not bad.any():
        bad = raw.start < 0
        what = "a negative timestamp"
    if bad.any():
        i = int(np.argmax(bad))
        raise Failure(f"{path}: device operation {i} ({raw.names[raw.name[i]]!r}) has {what} "
                      f"(start {float(raw.start[i])} us, duration {float(raw.dur[i])} us); "
                      f"{int(bad.sum())} such "
                      "operation(s): the trace is corrupt or was written by a broken exporter",
                      EXIT_BAD_INPUT)


def _choose_gpu(raw: RawOps, info: TraceInfo, device_names: dict[int, str],
                gpu: str | None) -> np.ndarray:
    """Indices of the operations of the GPU the summary is of; fills info.gpus, devices,
    device and gpu_choice."""
    ids, inverse = np.unique(raw.device, return_inverse=True)
    busy = np.bincount(inverse, weights=np.maximum(raw.dur, 0.0), minlength=ids.size)
    count = np.bincount(inverse, minlength=ids.size)
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
        return np.zeros(0, np.int64)
    chosen = info.gpus[pick]
    info.devices, info.device = [chosen.id], chosen.name
    info.gpu_choice = f"GPU {chosen.id}" + (f" ({chosen.name})" if chosen.name else "") + f": {why}"
    return np.flatnonzero(inverse == pick)


def _clip(starts: np.ndarray, ends: np.ndarray, key: np.ndarray, info: TraceInfo) -> None:
    """On each stream (key), end a device operation where the next one starts, if later.
    Each clip compares an operation with its successor only, so one vectorised pass does."""
    order = np.lexsort((ends, starts, key))
    a, b = order[:-1], order[1:]
    over = ends[a] - starts[b]
    hit = (key[a] == key[b]) & (over > 0)
    if hit.any():
        info.same_stream_overlaps = int(np.count_nonzero(hit))
        info.overlap_clipped_us = float(over[hit].sum())
        info.max_overlap_us = float(over[hit].max())
        ends[a[hit]] = starts[b[hit]]


def _replays(starts: np.ndarray, ends: np.ndarray, corr: np.ndarray, graph_corr: np.ndarray,
             info: TraceInfo, shared_ids_are_replays: bool) -> np.ndarray:
    """Group device operations by correlation id: a graph launch's kernels share its id. Fills
    info.replays and info.shared_correlations; returns each operation's replay (-1: eager)."""
    ids, counts = np.unique(corr[corr >= 0], return_counts=True)
    info.shared_correlations = int(np.count_nonzero(counts > 1))
    keys = graph_corr if graph_corr.size or not shared_ids_are_replays else ids[counts > 1]
    replay = np.full(corr.size, -1, np.int64)
    idx = np.flatnonzero(np.isin(corr, keys))
    if idx.size == 0:
        info.replays = []
        return replay
    idx = idx[np.argsort(corr[idx], kind="stable")]
    groups = np.split(idx, np.flatnonzero(np.diff(corr[idx])) + 1)
    spans = [(float(starts[g].min()), float(ends[g].max()), int(g.size)) for g in groups]
    order = sorted(range(len(groups)), key=lambda k: spans[k])
    for rank, k in enumerate(order):
        replay[groups[k]] = rank
    info.replays = [spans[k] for k in order]
    return replay
