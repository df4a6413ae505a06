"""The numbers of a trace, from the same analysis code as our own runs: per-layer wall, kernel
sum, overlap, all-stream-idle bubble by gap class and where the stalls are, all-reduce time per
call, kernel counts per layer, streams and hardware queues, per-kernel times, each decode step's
time split into layers, other work and idle (module steps); and two traces side by side.

`analyze` takes a loaded trace (formats.load_trace, any format), first recognises a trace that
holds no step (a graph capture, warm-up only: module capture; its report has no layer numbers),
else finds the steady-state decode layers (segment.segment_ops; graph-replayed kernels apart from
eager ones) and runs `analysis.summarize` over them; a trace written by `streamlab run` keeps the
layers and nodes it was written with, so its numbers are the run's. Rendering lives in
streamlab.report.trace_view; `TraceReport.to_dict` is the one JSON form.
"""

from __future__ import annotations

import gc
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

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
from streamlab.timeline import Timeline
from streamlab.trace.capture import NotAStep, recognise
from streamlab.trace.formats import load_trace
from streamlab.trace.loaded import DeviceOps, LoadedTrace, TraceInfo
from streamlab.trace.segment import (
    NodeMap,
    Segmentation,
    load_node_map,
    map_nodes,
    segment_ops,
)
from streamlab.trace.steps import (
    Origins,
    QueueUse,
    StepSplit,
    origins,
    queue_use,
    step_split,
)


@dataclass
class TraceReport:
    path: str
    info: TraceInfo
    segmentation: Segmentation | None  # None: the trace's own layers (a streamlab run), or none
    timeline: Timeline  # with steady layers numbered, nodes when mapped
    summary: Summary | None  # None: a trace with no step to measure (not_a_step)
    allreduce: dict | None  # per call: p10, p50, p90, mean, n, per_layer
    stall_sites: list[dict]
    kernels: list[dict]  # per kernel name over the steady layers (all, without layers)
    kernels_per_layer: Stat | None
    streams: list[dict]
    outside: dict = field(default_factory=dict)  # device operations outside steady layers
    not_a_step: NotAStep | None = None  # a graph capture or warm-up: no layer numbers
    steps: StepSplit | None = None  # per decode step: time per output token split
    origins: Origins | None = None  # graph-replayed vs eager operations
    queues: list[QueueUse] = field(default_factory=list)  # hardware queues, when known

    @property
    def layers(self) -> int:
        return 0 if self.summary is None else len(self.summary.layers)

    def to_dict(self) -> dict:
        s = self.summary
        seg = self.segmentation
        out = {"file": self.path, "source": asdict(self.timeline.source),
               "loader": self.info.to_dict(),
               "not_a_step": self.not_a_step.to_dict() if self.not_a_step else None}
        if s is None:
            return out | {"layers": None, "kernels": self.kernels, "streams": self.streams,
                          "hardware_queues": [q.to_dict() for q in self.queues]}
        return out | {
            "layers": {"method": seg.method if seg else "recorded",
                       "description": seg.description if seg else "layers recorded by the run",
                       "found": seg.found if seg else self.layers, "steady": self.layers,
                       "dropped": seg.dropped if seg else {},
                       "period": seg.period if seg else None,
                       "layers_per_unit": seg.layers_per_unit if seg else 1,
                       "ars_per_layer": seg.ars_per_layer if seg else None},
            "wall_us": _stat(s.wall), "kernel_sum_us": _stat(s.kernel_sum), "busy_us": _stat(s.busy),
            "overlap": _stat(s.overlap), "bubble_us": _stat(s.bubble),
            "bubble_by_class_us": {k: _stat(v) for k, v in s.bubble_by_class.items()},
            "gap_counts_per_layer": {c: _stat(Stat.of([ls.gap_counts[c] for ls in s.layers]))
                                     for c in GAP_CLASSES},
            "stalls_per_layer": _stat(s.stalls),
            "stall_sites": self.stall_sites,
            "allreduce_per_call_us": self.allreduce,
            "kernels_per_layer": _stat(self.kernels_per_layer),
            "streams": self.streams,
            "physical_streams": len(s.streams),
            "hardware_queues": [q.to_dict() for q in self.queues],
            "kernels": self.kernels,
            "nodes": {n: asdict(v) for n, v in s.nodes.items()},
            "outside_layers": self.outside,
            "per_step": self.steps.to_dict() if self.steps else None,
            "origins": self.origins.to_dict() if self.origins else None,
        }


def _stat(s: Stat | None) -> dict | None:
    return None if s is None else {"median": s.median, "p20": s.p20, "p80": s.p80, "n": s.n}


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
        return TraceReport(info.path, info, None, loaded.timeline, None, None, [],
                           _kernels(ops, everything, 1), None, _streams(ops, everything, 1),
                           not_a_step=verdict, queues=queue_use(ops))
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
    summary = summarize(timeline)
    layers = len(summary.layers)
    inside = ops.layer >= 0
    return TraceReport(info.path, info, seg, timeline, summary, _allreduce(summary),
                       [asdict(site) for site in stall_sites(summary)],
                       _kernels(ops, inside, layers),
                       Stat.of([ls.kernels for ls in summary.layers]),
                       _streams(ops, inside, layers), _outside(ops),
                       steps=step_split(timeline, info.replays, windows, per_unit),
                       origins=origins(ops, len(info.replays)), queues=queue_use(ops))


def _allreduce(summary: Summary) -> dict | None:
    calls = [c for ls in summary.layers for c in ls.allreduce]
    if not calls:
        return None
    p10, p50, p90 = percentiles(calls, (10, 50, 90))
    return {"p10": p10, "p50": p50, "p90": p90, "mean": float(sum(calls) / len(calls)),
            "min": float(min(calls)), "max": float(max(calls)), "n": len(calls),
            "per_layer": len(calls) / len(summary.layers)}


def _first_seen(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct ids in order of first appearance, and where each first appears."""
    uniq, first = np.unique(ids, return_index=True)
    order = np.argsort(first)
    return uniq[order], first[order]


def _kernels(ops: DeviceOps, mask: np.ndarray, layers: int) -> list[dict]:
    """Per kernel name over the operations `mask` (those in steady layers), from columns (a
    large trace has a million operations); sums run in timeline order, as a Python sum over the
    intervals would."""
    inside = np.flatnonzero(mask)
    name, dur = ops.name[inside], (ops.end - ops.start)[inside]
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
    rows = []
    for n, at, d in zip(names.tolist(), first.tolist(), per_name):
        time = float(sums[n])
        rows.append({"name": ops.names[n], "kind": ops.kinds[ops.kind[inside[at]]],
                     "nodes": sorted(nodes.get(n, ())), "calls": int(calls[n]),
                     "per_layer": int(calls[n]) / max(layers, 1), "total_us": time,
                     "per_layer_us": time / max(layers, 1),
                     "median_us": percentiles(d, (50,))[0], "share": time / total,
                     "streams": sorted(streams[n])})
    rows.sort(key=lambda r: (-r["total_us"], r["name"]))
    return rows


def _streams(ops: DeviceOps, inside: np.ndarray, layers: int) -> list[dict]:
    count = np.bincount(ops.stream, minlength=len(ops.streams))
    per = np.bincount(ops.stream[inside], minlength=len(ops.streams))
    time = np.bincount(ops.stream[inside], weights=(ops.end - ops.start)[inside],
                       minlength=len(ops.streams))
    order = sorted(_first_seen(ops.stream)[0].tolist(), key=lambda s: -count[s])
    return [{"stream": ops.streams[s], "ops": int(count[s]),
             "per_layer": int(per[s]) / max(layers, 1),
             "time_per_layer_us": float(time[s]) / max(layers, 1)} for s in order]


def _outside(ops: DeviceOps) -> dict:
    out = np.flatnonzero(ops.layer < 0)
    name = ops.name[out]
    counts = np.bincount(name, minlength=len(ops.names))
    top = sorted(_first_seen(name)[0].tolist(), key=lambda n: -counts[n])[:5]
    return {"ops": int(out.size), "time_us": float(sum((ops.end - ops.start)[out].tolist())),
            "top": [(ops.names[n], int(counts[n])) for n in top]}


# --- two traces ---------------------------------------------------------------------------

def diff_reports(a: TraceReport, b: TraceReport, top: int = 10) -> dict:
    """Two reports side by side (B - A); Failure (EXIT_NOT_A_STEP) when either trace holds no
    step to measure."""
    for r in (a, b):
        if r.not_a_step is not None:
            raise Failure(f"{r.path}: {r.not_a_step.line()}", EXIT_NOT_A_STEP)
    sa, sb = a.summary, b.summary

    def row(what, va, vb):
        return {"metric": what, "a": va, "b": vb,
                "delta": None if va is None or vb is None else vb - va}

    metrics = [row("wall us (median)", sa.wall.median, sb.wall.median),
               row("wall us p20", sa.wall.p20, sb.wall.p20),
               row("wall us p80", sa.wall.p80, sb.wall.p80),
               row("kernel sum us", sa.kernel_sum.median, sb.kernel_sum.median),
               row("overlap", sa.overlap.median, sb.overlap.median),
               row("bubble us", sa.bubble.median, sb.bubble.median)]
    metrics += [row(f"  {c} us", sa.bubble_by_class[c].median, sb.bubble_by_class[c].median)
                for c in GAP_CLASSES]
    metrics.append(row("stalls per layer", sa.stalls.median, sb.stalls.median))
    ara, arb = a.allreduce or {}, b.allreduce or {}
    for q in ("p10", "p50", "p90"):
        metrics.append(row(f"AR us per call {q}", ara.get(q), arb.get(q)))
    metrics += [row("AR calls per layer", ara.get("per_layer"), arb.get("per_layer")),
                row("kernels per layer", a.kernels_per_layer.median, b.kernels_per_layer.median),
                row("streams", len(sa.streams), len(sb.streams)),
                row("steady layers", a.layers, b.layers)]
    ka = {r["name"]: r for r in a.kernels}
    kb = {r["name"]: r for r in b.kernels}
    names = list(dict.fromkeys(list(ka) + list(kb)))
    per = []
    for n in names:
        ra, rb = ka.get(n), kb.get(n)
        per.append({"name": n,
                    "per_layer_a": ra["per_layer"] if ra else 0.0,
                    "per_layer_b": rb["per_layer"] if rb else 0.0,
                    "us_per_layer_a": ra["per_layer_us"] if ra else 0.0,
                    "us_per_layer_b": rb["per_layer_us"] if rb else 0.0,
                    "median_us_a": ra["median_us"] if ra else None,
                    "median_us_b": rb["median_us"] if rb else None})
    for r in per:
        r["count_delta"] = r["per_layer_b"] - r["per_layer_a"]
        r["us_delta"] = r["us_per_layer_b"] - r["us_per_layer_a"]
    counts = sorted((r for r in per if r["count_delta"] != 0),
                    key=lambda r: (-abs(r["count_delta"]), r["name"]))
    times = sorted(per, key=lambda r: (-abs(r["us_delta"]), r["name"]))[:top]
    return {"a": a.path, "b": b.path, "metrics": metrics, "kernel_count_changes": counts,
            "kernel_time_changes": times}
