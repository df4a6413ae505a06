"""A trace's decode steps and where their time goes, beside the per-layer numbers.

- `step_split`: per step (one graph replay, from its start to the next replay's start; the last
  one to the trace's last operation, so the eager sampling after the graph counts), its wall
  time, which for a decode step is the time per output token, split into the layers found in it
  (their windows), work outside layers (busy time of any stream outside those windows: embedding,
  head, sampling, eager kernels) and idle (no stream busy, outside layers); medians over steps.
  Without graph replays the steps are not known: the whole trace is one window.
- `graph_and_eager`: graph-replayed and eager device operations apart (count, time, the eager
  kernels).
- `queue_use`: per hardware queue (rocprofiler's queue id), the operations, their time and the
  streams that landed on it: with more streams than queues (GPU_MAX_HW_QUEUES), streams share.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from streamlab.analysis import Stat, busy_union
from streamlab.results import GraphAndEager, HardwareQueue, StepSplit
from streamlab.timeline import Interval, Timeline
from streamlab.trace.loaded import DeviceOps

__all__ = ["graph_and_eager", "queue_use", "step_split"]


def step_split(timeline: Timeline, replays: list[tuple[float, float, int]],
               windows: list[tuple[float, float]], layers_per_unit: int = 1) -> StepSplit | None:
    """See the module doc; None for a timeline without operations."""
    if not timeline.intervals:
        return None
    last = max(iv.end for iv in timeline.intervals)
    if replays:
        starts = sorted(s for s, _, _ in replays)
        steps = list(zip(starts, starts[1:] + [max(last, max(e for _, e, _ in replays))]))
        basis = "graph replay"
    else:
        steps = [(timeline.intervals[0].start, last)]
        basis = "whole trace (no graph replays)"
    busy = _segments(busy_union(timeline.intervals + [Interval("", "", s, e) for s, e in windows]))
    inside = _segments(busy_union([Interval("", "", s, e) for s, e in windows]))
    first = np.array(sorted(s for s, _ in windows), np.float64)
    wall, lay, out, idle, count = [], [], [], [], []
    for a, b in steps:
        covered, in_layers = _covered(busy, a, b), _covered(inside, a, b)
        wall.append(b - a)
        lay.append(in_layers)
        out.append(covered - in_layers)
        idle.append((b - a) - covered)
        count.append(int(np.count_nonzero((first >= a) & (first < b))) * layers_per_unit)
    return StepSplit(basis, len(steps), Stat.of(wall), Stat.of(lay), Stat.of(out), Stat.of(idle),
                     Stat.of(count))


def _segments(periods: list[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    arr = np.asarray(periods, np.float64).reshape(-1, 2)
    return arr[:, 0], arr[:, 1]


def _covered(segments: tuple[np.ndarray, np.ndarray], a: float, b: float) -> float:
    """Time of [a, b) covered by sorted disjoint segments."""
    s, e = segments
    lo, hi = np.searchsorted(e, a, "right"), np.searchsorted(s, b, "left")
    return float(np.sum(np.clip(e[lo:hi], a, b) - np.clip(s[lo:hi], a, b)))


def graph_and_eager(ops: DeviceOps, replays: int) -> GraphAndEager | None:
    """Graph-replayed and eager operations apart; None when the trace does not say."""
    if ops.replay is None:
        return None
    graph = ops.replay >= 0
    dur = ops.end - ops.start
    eager_names = Counter(ops.name[~graph].tolist())
    return GraphAndEager(replays, int(graph.sum()), float(dur[graph].sum()), int((~graph).sum()),
                         float(dur[~graph].sum()),
                         tuple((ops.names[n], c) for n, c in eager_names.most_common(5)))


def queue_use(ops: DeviceOps) -> tuple[HardwareQueue, ...]:
    """Per hardware queue, most operations first; none when the trace has no queue ids."""
    if ops.queue is None or not len(ops):
        return ()
    dur = ops.end - ops.start
    rows = []
    for q in np.unique(ops.queue).tolist():
        on = ops.queue == q
        streams = Counter(ops.stream[on].tolist())
        rows.append(HardwareQueue(ops.queues[q], int(on.sum()), float(dur[on].sum()),
                                  tuple(ops.streams[s] for s, _ in streams.most_common())))
    return tuple(sorted(rows, key=lambda r: (-r.ops, r.queue)))
