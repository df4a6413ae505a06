"""Numbers from a Timeline: layer wall, kernel time, overlap, all-stream-idle bubble by gap class,
all-reduce time per call, and per-node latency.

Pure functions over Timeline intervals (microseconds), so a GPU run, a simulation and an external
trace are measured by the same code. Nothing here decides what is steady state: every layer in
the timeline counts; the caller trims warm-up before calling.

Layers and replays. A layer is identified by `(layer, visit)`. A stream *enters* layer L when its
previous layered interval belonged to another layer (or it had none); `visit` is how many times
that stream entered L before. Replaying a captured N-layer graph thus gives visits 0, 1, 2, ...
of each layer index, the same on every stream, while a trace that numbers its layers
consecutively has visit 0 everywhere. Streams are looked at one by one because a stream runs its
kernels in order, whereas across streams a layer's tail may overlap the next layer's head.
Limit: replays of a one-layer graph never leave layer 0, so they merge; give each replay its own
layer index there (layer = replay * layers + i).

An occurrence of a node is its kernels inside one `(layer, visit)`; a node of several kernels
(a fused group, a split GEMM) counts as the sum of their durations there, so node latency is
comparable whether a backend launches one kernel or three.
"""

from __future__ import annotations

import bisect
import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from streamlab.timeline import Interval, Source, Timeline

GAP_CLASSES = ("launch", "fence", "stall")
FENCE_US = 1.0  # below: back-to-back launch latency
STALL_US = 2.0  # at or above: the GPU waited on something (cross-stream fence, graph re-entry)


@dataclass(frozen=True)
class Stat:
    median: float
    p20: float
    p80: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Stat:
        p20, p50, p80 = percentiles(values, (20, 50, 80))
        return cls(median=p50, p20=p20, p80=p80, n=len(values))


@dataclass(frozen=True)
class Gap:
    """An all-stream-idle period and the kernels around it, to say where a stall happens."""

    start: float
    end: float
    duration: float
    cls: str  # launch | fence | stall
    before: Interval | None  # the kernel that ended last before the gap
    after: Interval | None  # the kernel that started first after the gap


@dataclass
class LayerStats:
    layer: int
    visit: int
    start: float
    end: float
    wall: float  # end - start: the layer bounds when known, else first start to last end
    kernel_sum: float  # sum of the layer's kernel durations
    busy: float  # union of the layer's kernels over all streams
    overlap: float  # kernel_sum / busy; > 1 means kernels ran concurrently
    bubble: float  # all-stream-idle time inside [start, end)
    bubble_by_class: dict[str, float]
    gap_counts: dict[str, int]
    stalls: list[Gap]
    allreduce: list[float]  # duration of each all-reduce call in the layer
    kernels: int
    streams: list[str]


@dataclass(frozen=True)
class NodeStats:
    node: str
    occurrences: int
    kernels: int  # kernels over all occurrences
    kernels_per_occurrence: float  # median
    kernel_names: list[str]  # distinct, in order of first appearance
    streams: list[str]
    median: float  # of the per-occurrence sum of kernel durations
    p20: float
    p80: float
    mean: float  # what a replay timed with events sees: a node may differ by layer (its routing)


@dataclass
class Summary:
    source: Source
    layers: list[LayerStats]
    nodes: dict[str, NodeStats]
    wall: Stat  # over layers
    kernel_sum: Stat
    busy: Stat
    overlap: Stat
    bubble: Stat
    bubble_by_class: dict[str, Stat]  # each class's own spread over layers: they do not add up
    stalls: Stat  # stall count per layer
    allreduce: Stat | None  # per call over all layers; None when there is no all-reduce
    streams: list[str]
    bubble_split: dict[str, float] = field(default_factory=dict)  # median_split of the bubble by class


def percentiles(values: Iterable[float], qs: Sequence[float] = (20, 50, 80)) -> tuple[float, ...]:
    """Linear-interpolated percentiles (numpy's default), as plain floats for JSON."""
    arr = np.asarray(list(values), dtype=float)
    if arr.size == 0:
        raise ValueError("percentiles of no values")
    return tuple(float(x) for x in np.percentile(arr, qs))


def spread(values: Sequence[float]) -> float:
    """(max - min) / median: how far repeats of one measurement disagree, relative to it."""
    if not values:
        raise ValueError("spread of no values")
    return (max(values) - min(values)) / percentiles(values, (50,))[0]


def classify(duration: float) -> str:
    if duration < FENCE_US:
        return "launch"
    return "fence" if duration < STALL_US else "stall"


ALLREDUCE_KERNEL = re.compile(r"all_?reduce|cross_device_reduce", re.IGNORECASE)  # NCCL / RCCL,
# torch symmetric memory, vLLM / SGLang custom all-reduce (cross_device_reduce_1stage)


def is_allreduce_node(name: str | None) -> bool:
    """The layer's all-reduce nodes are named allreduce_*."""
    return (name or "").startswith("allreduce")


def is_allreduce_kernel(name: str) -> bool:
    """A kernel name that says all-reduce (the trace readers give such kernels the `allreduce`
    kind)."""
    return ALLREDUCE_KERNEL.search(name) is not None


def is_allreduce(iv: Interval) -> bool:
    """The one all-reduce classifier: an interval of the `allreduce` kind (a run's collective
    node, or a kernel a trace reader found by `is_allreduce_kernel`), or of an allreduce_* node."""
    return iv.kind == "allreduce" or is_allreduce_node(iv.node)


# Kernel classes by name, first match wins, tried on the DAG node and then on the kernel name
# (all-reduces by `is_allreduce`, which also knows the loaders' `allreduce` kind). Names seen in
# our runs (Triton: _gemm_kernel, _mla_split_kernel, _gate_up_kernel, ...), in CUTLASS / cuBLAS
# / hipBLASLt (sm90_xmma_gemm, nvjet, Cijk_...), NCCL / RCCL (ncclDevKernel_AllGather_RING_LL),
# flash / paged attention and the MoE kernels of vLLM and SGLang.
KERNEL_CLASSES = (
    ("allgather", re.compile(r"all_?gather", re.IGNORECASE)),
    ("reducescatter", re.compile(r"reduce_?scatter", re.IGNORECASE)),
    ("alltoall", re.compile(r"all_?to_?all", re.IGNORECASE)),
    ("moe", re.compile(r"moe|expert|gate_up|_down_kernel|^shared_", re.IGNORECASE)),
    ("attention", re.compile(r"attn|attention|flash|fmha|mla|mqa|paged|sdpa", re.IGNORECASE)),
    ("gemm", re.compile(r"gemm|gemv|matmul|_mm_|bmm|proj|cutlass|cublas|xmma|nvjet|^Cijk|"
                        r"hipblaslt|wgmma", re.IGNORECASE)),
    ("norm", re.compile(r"norm", re.IGNORECASE)),
    ("rope", re.compile(r"rope|rotary", re.IGNORECASE)),
    ("topk", re.compile(r"top_?k|sampl|argmax|softmax", re.IGNORECASE)),
    ("quant", re.compile(r"quant", re.IGNORECASE)),
)
COLLECTIVE_CLASSES = ("allreduce", "allgather", "reducescatter", "alltoall")


def kernel_class(iv: Interval) -> str:
    """The class of a kernel: allreduce, one of KERNEL_CLASSES, or its kind (memcpy, memset)
    or `other` when nothing matches."""
    return _class_of(iv.node, iv.name, iv.kind)


@functools.lru_cache(maxsize=1 << 16)
def _class_of(node: str | None, name: str, kind: str) -> str:
    """kernel_class by what decides it (a trace repeats a few hundred kernel names a million
    times, some of them kilobytes of C++ template)."""
    if is_allreduce(Interval(name, "", 0.0, 0.0, node, kind=kind)):
        return "allreduce"
    for text in (node, name):
        if text:
            for cls, rx in KERNEL_CLASSES:
                if rx.search(text):
                    return cls
    return kind if kind != "kernel" else "other"


def _union(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merged busy periods; intervals that touch or overlap merge (a zero gap is no gap)."""
    if starts.size == 0:
        return starts, ends
    order = np.lexsort((ends, starts))
    s, reach = starts[order], np.maximum.accumulate(ends[order])
    breaks = s[1:] > reach[:-1]
    first = np.concatenate(([True], breaks))
    last = np.concatenate((breaks, [True]))
    return s[first], reach[last]


def _arrays(intervals: Sequence[Interval]) -> tuple[np.ndarray, np.ndarray]:
    return (np.fromiter((iv.start for iv in intervals), float, len(intervals)),
            np.fromiter((iv.end for iv in intervals), float, len(intervals)))


def busy_union(intervals: Sequence[Interval]) -> list[tuple[float, float]]:
    """Periods during which at least one stream runs a kernel, in time order."""
    s, e = _union(*_arrays(intervals))
    return [(float(a), float(b)) for a, b in zip(s, e)]


class _Idle:
    """Busy union and neighbour look-up built once, so per-layer gap queries stay cheap."""

    def __init__(self, intervals: Sequence[Interval]) -> None:
        self.seg_start, self.seg_end = _union(*_arrays(intervals))
        self.by_start = sorted(intervals, key=lambda iv: (iv.start, iv.end))
        self.starts = [iv.start for iv in self.by_start]
        self.by_end = sorted(intervals, key=lambda iv: (iv.end, iv.start))
        self.ends = [iv.end for iv in self.by_end]

    def gaps(self, start: float, end: float) -> list[Gap]:
        lo = int(np.searchsorted(self.seg_end, start, side="right"))
        hi = int(np.searchsorted(self.seg_start, end, side="left"))
        out, cursor = [], start
        for s, e in zip(self.seg_start[lo:hi], self.seg_end[lo:hi]):
            if s > cursor:
                out.append(self._gap(cursor, float(s)))
            cursor = max(cursor, float(e))
        if cursor < end:
            out.append(self._gap(cursor, end))
        return out

    def _gap(self, start: float, end: float) -> Gap:
        i = bisect.bisect_right(self.ends, start) - 1
        j = bisect.bisect_left(self.starts, end)
        return Gap(start=start, end=end, duration=end - start, cls=classify(end - start),
                   before=self.by_end[i] if i >= 0 else None,
                   after=self.by_start[j] if j < len(self.by_start) else None)


def gaps(intervals: Sequence[Interval], start: float, end: float) -> list[Gap]:
    """All-stream-idle gaps inside [start, end), cut at the window edges and classified by the
    cut length; neighbours are searched over all of `intervals`, so a gap at a layer's start
    names the previous layer's last kernel."""
    return _Idle(intervals).gaps(start, end)


def chained_bounds(intervals: Sequence[Interval], per_replay: int) -> list[tuple[float, float]]:
    """Layer windows for replays of a graph of `per_replay` layers, layers numbered
    replay * per_replay + i: a layer runs from its first kernel to the next layer's first kernel
    in the same replay (so an idle gap at a layer boundary, such as a re-entry stall, counts in
    the layer before it); the last layer of a replay ends at its last kernel."""
    first: dict[int, float] = {}
    last: dict[int, float] = {}
    for iv in intervals:
        if iv.layer is not None:
            first[iv.layer] = min(first.get(iv.layer, iv.start), iv.start)
            last[iv.layer] = max(last.get(iv.layer, iv.end), iv.end)
    n = max(first) + 1 if first else 0
    return [(first[i], first[i + 1] if (i + 1) % per_replay and i + 1 in first else last[i])
            for i in range(n)]


def assign_layers(timeline: Timeline) -> Timeline:
    """Give intervals without a layer index the index of the layer bounds their start lies in."""
    if not timeline.layers or all(iv.layer is not None for iv in timeline.intervals):
        return timeline
    order = sorted(range(len(timeline.layers)), key=lambda i: timeline.layers[i])
    starts = [timeline.layers[i][0] for i in order]
    out = []
    for iv in timeline.intervals:
        k = bisect.bisect_right(starts, iv.start) - 1
        if iv.layer is None and k >= 0 and iv.start < timeline.layers[order[k]][1]:
            iv = replace(iv, layer=order[k])
        out.append(iv)
    return Timeline(out, timeline.source, list(timeline.layers), list(timeline.edges))


def visits(intervals: Sequence[Interval]) -> dict[tuple[int, int], list[Interval]]:
    """Layered intervals grouped by (layer, visit), in order of first start (see module doc)."""
    current: dict[str, int] = {}  # stream -> layer of its previous layered interval
    entered: dict[tuple[str, int], int] = {}  # (stream, layer) -> visit it is in
    out: dict[tuple[int, int], list[Interval]] = {}
    for iv in sorted(intervals, key=lambda iv: (iv.start, iv.end)):
        if iv.layer is None:
            continue
        if current.get(iv.stream) != iv.layer:
            current[iv.stream] = iv.layer
            entered[(iv.stream, iv.layer)] = entered.get((iv.stream, iv.layer), -1) + 1
        out.setdefault((iv.layer, entered[(iv.stream, iv.layer)]), []).append(iv)
    return out


def _calls(layer_intervals: Sequence[Interval]) -> list[float]:
    """All-reduce durations per call: the kernels of one all-reduce node, or one unattributed
    all-reduce kernel."""
    calls: dict[object, float] = {}
    for i, iv in enumerate(layer_intervals):
        if is_allreduce(iv):
            key = iv.node if iv.node is not None else i
            calls[key] = calls.get(key, 0.0) + iv.duration
    return list(calls.values())


def _layer_stats(layer: int, visit: int, ivs: list[Interval], bounds: tuple[float, float] | None,
                 idle: _Idle) -> LayerStats:
    start, end = bounds if bounds else (min(iv.start for iv in ivs), max(iv.end for iv in ivs))
    kernel_sum = float(sum(iv.duration for iv in ivs))
    s, e = _union(*_arrays(ivs))
    busy = float(np.sum(e - s))
    found = idle.gaps(start, end)
    return LayerStats(
        layer=layer, visit=visit, start=start, end=end, wall=end - start,
        kernel_sum=kernel_sum, busy=busy, overlap=kernel_sum / busy if busy > 0 else 0.0,
        bubble=float(sum(g.duration for g in found)),
        bubble_by_class={c: float(sum(g.duration for g in found if g.cls == c))
                         for c in GAP_CLASSES},
        gap_counts={c: sum(g.cls == c for g in found) for c in GAP_CLASSES},
        stalls=[g for g in found if g.cls == "stall"],
        allreduce=_calls(ivs), kernels=len(ivs), streams=sorted({iv.stream for iv in ivs}))


def _node_stats(groups: dict[tuple[int, int], list[Interval]]) -> dict[str, NodeStats]:
    occ: dict[str, list[list[Interval]]] = {}
    for ivs in groups.values():
        per_node: dict[str, list[Interval]] = {}
        for iv in ivs:
            if iv.node is not None:
                per_node.setdefault(iv.node, []).append(iv)
        for node, kernels in per_node.items():
            occ.setdefault(node, []).append(kernels)
    out = {}
    for node, occurrences in occ.items():
        times = [sum(iv.duration for iv in o) for o in occurrences]
        p20, p50, p80 = percentiles(times)
        flat = [iv for o in occurrences for iv in o]
        out[node] = NodeStats(
            node=node, occurrences=len(occurrences), kernels=len(flat),
            kernels_per_occurrence=percentiles((len(o) for o in occurrences), (50,))[0],
            kernel_names=list(dict.fromkeys(iv.name for iv in flat)),
            streams=sorted({iv.stream for iv in flat}), median=p50, p20=p20, p80=p80,
            mean=sum(times) / len(times))
    return out


@dataclass(frozen=True)
class StallSite:
    """Where >= 2 us all-stream-idle gaps happen: between the kernel that ended last before the
    gap (`before`) and the one that started first after it (`after`), named by node when known."""

    before: str
    after: str
    count: int
    per_layer: float
    total_us: float
    median_us: float
    max_us: float


def _label(iv: Interval | None, edge: str) -> str:
    return edge if iv is None else iv.node or iv.name


def stall_sites(summary: Summary) -> list[StallSite]:
    """Stall sites over the summary's layers, most total time first (ties: most frequent)."""
    sites: dict[tuple[str, str], list[float]] = {}
    for ls in summary.layers:
        for g in ls.stalls:
            sites.setdefault((_label(g.before, "(start)"), _label(g.after, "(end)")), []).append(g.duration)
    ranked = sorted(sites.items(), key=lambda kv: (-sum(kv[1]), -len(kv[1])))
    return [StallSite(before=a, after=b, count=len(d), per_layer=len(d) / len(summary.layers),
                      total_us=float(sum(d)), median_us=percentiles(d, (50,))[0], max_us=float(max(d)))
            for (a, b), d in ranked]


def median_split(totals: Sequence[float], parts: Sequence[dict[str, float]]) -> dict[str, float]:
    """The parts of the median total: those of the layer whose total is the median, or for an
    even count the mean of the two middle layers' (the median is then their mean), so the parts
    add up to the median total exactly, unlike the median of each part taken on its own."""
    order = sorted(range(len(totals)), key=lambda i: totals[i])
    n = len(order)
    middle = [order[n // 2]] if n % 2 else [order[n // 2 - 1], order[n // 2]]
    return {k: float(sum(parts[i][k] for i in middle) / len(middle)) for k in parts[middle[0]]}


def summarize(timeline: Timeline) -> Summary:
    """Per-layer and per-node statistics, and their spread over layers.

    Layer bounds set a layer's window only when that layer index is visited once (bounds are
    indexed by layer, so they cannot tell replays apart). The bubble is idle time of all
    intervals, whatever their layer, inside the window; busy and overlap use the layer's own.
    """
    timeline = assign_layers(timeline)
    groups = visits(timeline.intervals)
    if not groups:
        raise ValueError("summarize needs intervals with layer indices or layer bounds")
    n_visits: dict[int, int] = {}
    for layer, _ in groups:
        n_visits[layer] = n_visits.get(layer, 0) + 1
    idle = _Idle(timeline.intervals)
    layers = [
        _layer_stats(layer, visit, ivs,
                     timeline.layers[layer]
                     if n_visits[layer] == 1 and 0 <= layer < len(timeline.layers) else None,
                     idle)
        for (layer, visit), ivs in groups.items()]
    calls = [c for ls in layers for c in ls.allreduce]
    return Summary(
        source=timeline.source, layers=layers, nodes=_node_stats(groups),
        wall=Stat.of([ls.wall for ls in layers]),
        kernel_sum=Stat.of([ls.kernel_sum for ls in layers]),
        busy=Stat.of([ls.busy for ls in layers]),
        overlap=Stat.of([ls.overlap for ls in layers]),
        bubble=Stat.of([ls.bubble for ls in layers]),
        bubble_by_class={c: Stat.of([ls.bubble_by_class[c] for ls in layers])
                         for c in GAP_CLASSES},
        stalls=Stat.of([len(ls.stalls) for ls in layers]),
        allreduce=Stat.of(calls) if calls else None,
        streams=timeline.streams,
        bubble_split=median_split([ls.bubble for ls in layers], [ls.bubble_by_class for ls in layers]))
