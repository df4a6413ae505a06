"""The numbers of a trace, from the same analysis code as our own runs: per-layer wall, kernel
sum, overlap, all-stream-idle bubble by gap class and where the stalls are, all-reduce time per
call, kernel counts per layer, streams and hardware queues, per-kernel times, each decode step's
time split into layers, other work and idle (module steps); and two traces side by side.

`analyze` takes a loaded trace (formats.load_trace, any format), first recognises a trace that
holds no step (a graph capture, warm-up only: module capture; its summary has no layer numbers),
else finds the steady-state decode layers (segment.segment_ops; graph-replayed kernels apart from
eager ones) and runs `analysis.summarize` over them; a trace written by `streamlab run` keeps the
layers and nodes it was written with, so its numbers are the run's. The numbers are a typed
`results.TraceSummary` (trace.explain adds what the dependency graph says); `diff` puts two of
them side by side as a `results.TraceDiff`. Nothing here prints: streamlab.report.trace_view does.
"""

from __future__ import annotations

import gc
import os
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from streamlab.analysis import (
    GAP_CLASSES,
    Stat,
    Summary,
    percentiles,
    stall_sites,
    summarize,
)
from streamlab.errors import EXIT_BAD_INPUT, EXIT_NOT_A_STEP, Failure
from streamlab.results import (
    AllReduceCalls,
    DiffRow,
    KernelChange,
    LayerFigures,
    OutsideLayers,
    TraceDiff,
    TraceKernel,
    TraceLayers,
    TraceSource,
    TraceStream,
    TraceSummary,
)
from streamlab.timeline import Timeline
from streamlab.trace.capture import recognise
from streamlab.trace.formats import load_trace
from streamlab.trace.loaded import DeviceOps, LoadedTrace, TraceInfo
from streamlab.trace.segment import (
    NodeMap,
    Segmentation,
    load_node_map,
    map_nodes,
    segment_ops,
)
from streamlab.trace.steps import graph_and_eager, queue_use, step_split

__all__ = ["TraceReport", "analyze", "diff", "diff_traces", "summarize_trace"]


@dataclass(frozen=True)
class TraceReport:
    """A trace read and measured: `summary`, its typed numbers (what `--json` writes and
    report/ prints), and what the analyses that need the trace's dependency graph
    (trace.explain) read beside them."""

    summary: TraceSummary
    timeline: Timeline  # steady layers numbered, nodes when mapped
    info: TraceInfo
    stats: Summary | None  # analysis.summarize of the steady layers; None: no step
    segmentation: Segmentation | None  # None: the trace's own layers (a streamlab run), or no step

    @property
    def path(self) -> str:
        return self.info.path


def summarize_trace(path: str | os.PathLike, *, layer_regex: str | None = None,
                    ars_per_layer: int | None = None, nodes: str | os.PathLike | None = None,
                    ar_offset: int | None = None, clip: bool = True,
                    gpu: str | None = None) -> TraceReport:
    """The report of the trace at `path` (any format; one GPU: `gpu`, default the one with the
    most device time)."""
    node_map = load_node_map(nodes) if nodes is not None else None
    return analyze(load_trace(path, clip=clip, gpu=gpu), layer_regex=layer_regex,
                   ars_per_layer=ars_per_layer, node_map=node_map, ar_offset=ar_offset)


@contextmanager
def _gc_paused():
    """The cyclic garbage collector off for a while: analysis makes millions of objects that
    form no cycles (Intervals, gaps), which it would otherwise walk again and again (a fifth
    of the analysis time of a 1 GB trace)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def analyze(loaded: LoadedTrace, *, layer_regex: str | None = None,
            ars_per_layer: int | None = None, node_map: NodeMap | None = None,
            ar_offset: int | None = None) -> TraceReport:
    """The report of a loaded trace (see the module doc), the cyclic garbage collector paused
    meanwhile."""
    with _gc_paused():
        return _analyze(loaded, layer_regex, ars_per_layer, node_map, ar_offset)


def _analyze(loaded: LoadedTrace, layer_regex: str | None, ars_per_layer: int | None,
             node_map: NodeMap | None, ar_offset: int | None) -> TraceReport:
    info = loaded.info
    verdict = recognise(info)
    if verdict is not None:
        ops = loaded.ops
        everything = np.ones(len(ops), bool)
        summary = TraceSummary(
            file=info.path, source=TraceSource.of(loaded.source), loader=info.loader(),
            not_a_step=verdict, layers=None, per_layer=None, allreduce_per_call_us=None,
            stall_sites=(), nodes={}, kernels=_kernels(ops, everything, 1),
            streams=_streams(ops, everything, 1), hardware_queues=queue_use(ops),
            outside_layers=None, per_step=None, graph_and_eager=None, dependencies=None,
            critical_path=None, exposed_communication=None, rank_skew=None, what_if=None,
            roofline=None, plots=())
        return TraceReport(summary, loaded.timeline, info, None, None)
    if not len(loaded.ops):
        raise Failure(f"{info.path}: no device operations (kernels, copies) in this {info.format} "
                      "trace: was GPU activity recorded (kernel tracing on)?", EXIT_BAD_INPUT)
    recorded = info.format == "streamlab" and layer_regex is None and ars_per_layer is None \
        and any(iv.layer is not None for iv in loaded.timeline.intervals)
    if recorded:
        seg = None
        timeline = loaded.timeline
        if node_map is not None:
            timeline = map_nodes(timeline, node_map)
        ops = DeviceOps.of(timeline.intervals)
        windows, per_unit = list(timeline.layers), 1
    else:  # a streamlab trace asked to find layers again forgets the recorded ones
        ops = loaded.ops
        mixed = ops.replay is not None and info.graph_ops and info.eager_ops
        seg = segment_ops(ops, loaded.source, ars_per_layer=ars_per_layer,
                          layer_regex=layer_regex, replays=info.replays, ar_offset=ar_offset,
                          node_map=node_map, only=np.flatnonzero(ops.replay >= 0) if mixed else None)
        timeline, ops = seg.timeline, seg.ops
        windows, per_unit = seg.windows, seg.layers_per_unit
    stats = summarize(timeline)
    steady = len(stats.layers)
    inside = ops.layer >= 0
    summary = TraceSummary(  # what the dependency graph says: trace.explain
        file=info.path, source=TraceSource.of(timeline.source), loader=info.loader(),
        not_a_step=None, layers=_layers(seg, steady), per_layer=_figures(stats),
        allreduce_per_call_us=_allreduce(stats), stall_sites=tuple(stall_sites(stats)),
        nodes=dict(stats.nodes), kernels=_kernels(ops, inside, steady),
        streams=_streams(ops, inside, steady), hardware_queues=queue_use(ops),
        outside_layers=_outside(ops), per_step=step_split(timeline, info.replays, windows, per_unit),
        graph_and_eager=graph_and_eager(ops, len(info.replays)), dependencies=None,
        critical_path=None, exposed_communication=None, rank_skew=None, what_if=None,
        roofline=None, plots=())
    return TraceReport(summary, timeline, info, stats, seg)


def _layers(seg: Segmentation | None, steady: int) -> TraceLayers:
    if seg is None:
        return TraceLayers("recorded", "layers recorded by the run", steady, steady, {}, None, 1, None)
    return TraceLayers(seg.method, seg.description, seg.found, steady, dict(seg.dropped), seg.period,
                       seg.layers_per_unit, seg.ars_per_layer)


def _figures(s: Summary) -> LayerFigures:
    return LayerFigures(
        wall_us=s.wall, kernel_sum_us=s.kernel_sum, busy_us=s.busy, overlap=s.overlap,
        bubble_us=s.bubble, bubble_by_class_us=dict(s.bubble_by_class),
        gap_counts={c: Stat.of([ls.gap_counts[c] for ls in s.layers]) for c in GAP_CLASSES},
        stalls=s.stalls, kernels=Stat.of([ls.kernels for ls in s.layers]),
        physical_streams=len(s.streams))


def _allreduce(summary: Summary) -> AllReduceCalls | None:
    calls = [c for ls in summary.layers for c in ls.allreduce]
    if not calls:
        return None
    p10, p50, p90 = percentiles(calls, (10, 50, 90))
    return AllReduceCalls(p10=p10, p50=p50, p90=p90, mean=float(sum(calls) / len(calls)),
                          min=float(min(calls)), max=float(max(calls)), n=len(calls),
                          per_layer=len(calls) / len(summary.layers))


def _first_seen(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct ids in order of first appearance, and where each first appears."""
    uniq, first = np.unique(ids, return_index=True)
    order = np.argsort(first)
    return uniq[order], first[order]


def _kernels(ops: DeviceOps, mask: np.ndarray, layers: int) -> tuple[TraceKernel, ...]:
    """Per kernel name over the operations `mask` (those in steady layers), from columns (a
    large trace has a million operations); sums run in timeline order, as a Python sum over the
    intervals would."""
    inside = np.flatnonzero(mask)
    name, dur = ops.name[inside].astype(np.int64), (ops.end - ops.start)[inside]
    names, first = _first_seen(name)
    rank = np.zeros(len(ops.names), np.int64)
    rank[names] = np.arange(names.size)
    grouped = np.argsort(rank[name], kind="stable")  # by name, first seen first
    total = sum(dur[grouped].tolist()) or 1.0
    sums = np.bincount(name, weights=dur, minlength=len(ops.names))
    calls = np.bincount(name, minlength=len(ops.names))
    nodes: dict[int, set] = {}
    if ops.nodes is not None:
        for n, i in zip(name.tolist(), inside.tolist()):
            if ops.nodes[i]:
                nodes.setdefault(n, set()).add(ops.nodes[i])
    streams: dict[int, list[str]] = {}
    width = len(ops.streams)
    for pair in np.unique(name * width + ops.stream[inside]).tolist():
        streams.setdefault(pair // width, []).append(ops.streams[pair % width])
    per_name = np.split(dur[grouped], np.cumsum(calls[names])[:-1])
    per = max(layers, 1)
    rows = [TraceKernel(name=ops.names[n], kind=ops.kinds[ops.kind[inside[at]]],
                        nodes=tuple(sorted(nodes.get(n, ()))), calls=int(calls[n]),
                        per_layer=int(calls[n]) / per, total_us=float(sums[n]),
                        per_layer_us=float(sums[n]) / per, median_us=percentiles(d, (50,))[0],
                        share=float(sums[n]) / total, streams=tuple(sorted(streams[n])))
            for n, at, d in zip(names.tolist(), first.tolist(), per_name)]
    return tuple(sorted(rows, key=lambda r: (-r.total_us, r.name)))


def _streams(ops: DeviceOps, inside: np.ndarray, layers: int) -> tuple[TraceStream, ...]:
    count = np.bincount(ops.stream, minlength=len(ops.streams))
    per = np.bincount(ops.stream[inside], minlength=len(ops.streams))
    time = np.bincount(ops.stream[inside], weights=(ops.end - ops.start)[inside],
                       minlength=len(ops.streams))
    order = sorted(_first_seen(ops.stream)[0].tolist(), key=lambda s: -count[s])
    return tuple(TraceStream(ops.streams[s], int(count[s]), int(per[s]) / max(layers, 1),
                             float(time[s]) / max(layers, 1)) for s in order)


def _outside(ops: DeviceOps) -> OutsideLayers:
    out = np.flatnonzero(ops.layer < 0)
    name = ops.name[out]
    counts = np.bincount(name, minlength=len(ops.names))
    top = sorted(_first_seen(name)[0].tolist(), key=lambda n: -counts[n])[:5]
    return OutsideLayers(int(out.size), float(sum((ops.end - ops.start)[out].tolist())),
                         tuple((ops.names[n], int(counts[n])) for n in top))


# --- two traces ---------------------------------------------------------------------------

def diff_traces(a: str | os.PathLike, b: str | os.PathLike, *, layer_regex: str | None = None,
                ars_per_layer: int | None = None, nodes: str | os.PathLike | None = None,
                ar_offset: int | None = None, gpu: str | None = None, top: int = 10) -> TraceDiff:
    """The traces at `a` and `b` summarised alike (summarize_trace) and side by side."""
    a, b = (summarize_trace(p, layer_regex=layer_regex, ars_per_layer=ars_per_layer, nodes=nodes,
                            ar_offset=ar_offset, gpu=gpu).summary for p in (a, b))
    return diff(a, b, top)


def diff(a: TraceSummary, b: TraceSummary, top: int = 10) -> TraceDiff:
    """Two trace summaries side by side (B - A); Failure (EXIT_NOT_A_STEP) when either trace
    holds no step to measure."""
    for s in (a, b):
        if s.not_a_step is not None:
            raise Failure(f"{s.file}: {s.not_a_step.message}", EXIT_NOT_A_STEP)
    la, lb = a.per_layer, b.per_layer
    ara, arb = a.allreduce_per_call_us, b.allreduce_per_call_us

    def ar(calls: AllReduceCalls | None, what: str) -> float | None:
        return None if calls is None else getattr(calls, what)

    metrics = [DiffRow("wall us (median)", "us", la.wall_us.median, lb.wall_us.median),
               DiffRow("wall us p20", "us", la.wall_us.p20, lb.wall_us.p20),
               DiffRow("wall us p80", "us", la.wall_us.p80, lb.wall_us.p80),
               DiffRow("kernel sum us", "us", la.kernel_sum_us.median, lb.kernel_sum_us.median),
               DiffRow("overlap", "ratio", la.overlap.median, lb.overlap.median),
               DiffRow("bubble us", "us", la.bubble_us.median, lb.bubble_us.median)]
    metrics += [DiffRow(f"  {c} us", "us", la.bubble_by_class_us[c].median, lb.bubble_by_class_us[c].median)
                for c in GAP_CLASSES]
    metrics.append(DiffRow("stalls per layer", "ratio", la.stalls.median, lb.stalls.median))
    metrics += [DiffRow(f"AR us per call {q}", "us", ar(ara, q), ar(arb, q)) for q in ("p10", "p50", "p90")]
    metrics += [DiffRow("AR calls per layer", "ratio", ar(ara, "per_layer"), ar(arb, "per_layer")),
                DiffRow("kernels per layer", "count", la.kernels.median, lb.kernels.median),
                DiffRow("streams", "count", la.physical_streams, lb.physical_streams),
                DiffRow("steady layers", "count", a.steady_layers, b.steady_layers)]
    ka = {k.name: k for k in a.kernels}
    kb = {k.name: k for k in b.kernels}
    changes = []
    for name in dict.fromkeys(list(ka) + list(kb)):
        x, y = ka.get(name), kb.get(name)
        changes.append(KernelChange(
            name=name, per_layer_a=x.per_layer if x else 0.0, per_layer_b=y.per_layer if y else 0.0,
            us_per_layer_a=x.per_layer_us if x else 0.0, us_per_layer_b=y.per_layer_us if y else 0.0,
            median_us_a=x.median_us if x else None, median_us_b=y.median_us if y else None))
    counts = sorted((c for c in changes if c.count_delta != 0),
                    key=lambda c: (-abs(c.count_delta), c.name))
    times = sorted(changes, key=lambda c: (-abs(c.us_delta), c.name))[:top]
    return TraceDiff(a=a.file, b=b.file, metrics=tuple(metrics), kernel_count_changes=tuple(counts),
                     kernel_time_changes=tuple(times), summary_a=a, summary_b=b)
