"""The numbers of a trace, from the same analysis code as our own runs: per-layer wall, kernel
sum, overlap, all-stream-idle bubble by gap class and where the stalls are, all-reduce time per
call, kernel counts per layer, streams, per-kernel times; and two traces side by side.

`analyze` takes a loaded trace (kineto.load_trace), finds the steady-state decode layers
(segment.segment) and runs `analysis.summarize` over them; a trace written by `streamlab run`
keeps the layers and nodes it was written with, so its numbers are the run's.
"""

from __future__ import annotations

import gc
import os
import re
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import numpy as np
from rich.console import Console
from rich.table import Table

from streamlab.analysis import (
    GAP_CLASSES,
    Stat,
    Summary,
    percentiles,
    stall_sites,
    summarize,
)
from streamlab.timeline import Timeline
from streamlab.trace.formats import load_trace
from streamlab.trace.loaded import DeviceOps, LoadedTrace, TraceInfo
from streamlab.trace.segment import (
    NodeMap,
    Segmentation,
    load_node_map,
    map_nodes,
    segment_ops,
)


@dataclass
class TraceReport:
    path: str
    info: TraceInfo
    segmentation: Segmentation | None  # None: the trace's own layers (a streamlab run)
    timeline: Timeline  # with steady layers numbered, nodes when mapped
    summary: Summary
    allreduce: dict | None  # per call: p10, p50, p90, mean, n, per_layer
    stall_sites: list[dict]
    kernels: list[dict]  # per kernel name over the steady layers, most time first
    kernels_per_layer: Stat
    streams: list[dict]
    outside: dict = field(default_factory=dict)  # device operations outside steady layers

    @property
    def layers(self) -> int:
        return len(self.summary.layers)

    def to_dict(self) -> dict:
        s = self.summary
        seg = self.segmentation
        return {
            "file": self.path,
            "source": asdict(s.source),
            "loader": self.info.to_dict(),
            "layers": {"method": seg.method if seg else "recorded",
                       "description": seg.description if seg else "layers recorded by the run",
                       "found": seg.found if seg else self.layers, "steady": self.layers,
                       "dropped": seg.dropped if seg else {},
                       "period": seg.period if seg else None,
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
            "kernels": self.kernels,
            "nodes": {n: asdict(v) for n, v in s.nodes.items()},
            "outside_layers": self.outside,
        }


def _stat(s: Stat | None) -> dict | None:
    return None if s is None else {"median": s.median, "p20": s.p20, "p80": s.p80, "n": s.n}


def summarize_trace(path: str | os.PathLike, *, layer_regex: str | None = None,
                    ars_per_layer: int | None = None, nodes: str | os.PathLike | None = None,
                    ar_offset: int | None = None, clip: bool = True) -> TraceReport:
    node_map = load_node_map(nodes) if nodes is not None else None
    return analyze(load_trace(path, clip=clip), layer_regex=layer_regex,
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
    recorded = info.format == "streamlab" and layer_regex is None and ars_per_layer is None \
        and any(iv.layer is not None for iv in loaded.timeline.intervals)
    if recorded:
        seg = None
        timeline = loaded.timeline
        if node_map is not None:
            timeline = map_nodes(timeline, node_map)
        ops = DeviceOps.of(timeline.intervals)
    else:  # a streamlab trace asked to find layers again forgets the recorded ones
        ops = loaded.ops
        mixed = ops.replay is not None and info.graph_ops and info.eager_ops
        seg = segment_ops(ops, loaded.source, ars_per_layer=ars_per_layer,
                          layer_regex=layer_regex, replays=info.replays, ar_offset=ar_offset,
                          node_map=node_map, only=np.flatnonzero(ops.replay >= 0) if mixed else None)
        timeline, ops = seg.timeline, seg.ops
    summary = summarize(timeline)
    layers = len(summary.layers)
    return TraceReport(info.path, info, seg, timeline, summary, _allreduce(summary),
                       [asdict(site) for site in stall_sites(summary)], _kernels(ops, layers),
                       Stat.of([ls.kernels for ls in summary.layers]),
                       _streams(ops, layers), _outside(ops))


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


def _kernels(ops: DeviceOps, layers: int) -> list[dict]:
    """Per kernel name over the steady layers, from columns (a large trace has a million
    operations); sums run in timeline order, as a Python sum over the intervals would."""
    inside = np.flatnonzero(ops.layer >= 0)
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


def _streams(ops: DeviceOps, layers: int) -> list[dict]:
    inside = ops.layer >= 0
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


# --- printing -----------------------------------------------------------------------------

_TEMPLATE = re.compile(r"<[^<>]*>")


def short(name: str, width: int = 64) -> str:
    """A kernel name that fits a table cell: no `void`, no argument list, templates folded."""
    s = name.removeprefix("void ")
    depth, cut = 0, None
    for i, ch in enumerate(s):  # drop a trailing (argument list) at template depth 0
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == "(" and depth == 0 and i > 0:
            cut = i
            break
    if cut is not None:
        s = s[:cut]
    if len(s) > width:
        folded = s
        while True:
            nxt = _TEMPLATE.sub("\0", folded)
            if nxt == folded:
                break
            folded = nxt
        s = folded.replace("\0", "<…>")
    return s if len(s) <= width else s[:width - 1] + "…"


def _say(console: Console, text: str) -> None:
    """A line of text, wrapped by the terminal rather than cut into lines by rich."""
    console.print(text, soft_wrap=True)


def _f(v, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def print_report(console: Console, r: TraceReport, top: int = 25) -> None:
    s, info, seg = r.summary, r.info, r.segmentation
    _say(console, f"[bold]{r.path}[/]  {s.source.describe()}")
    ops = ", ".join(f"{v} {k}" for k, v in sorted(info.device_ops.items()))
    _say(console, f"loaded {info.events:,} events: {ops}; {info.runtime_calls:,} runtime calls"
                  + (f", {info.graph_launches} graph launches ({len(info.replays)} replays)"
                     if info.graph_launches or info.replays else "")
                  + (f", syncs {_kv(info.syncs)}" if info.syncs else "")
                  + (f", stream waits {_kv(info.stream_waits)}" if info.stream_waits else ""))
    notes = []
    if info.same_stream_overlaps:
        notes.append(f"{info.same_stream_overlaps} same-stream overlaps clipped "
                     f"({info.overlap_clipped_us:.2f} us in all, largest {info.max_overlap_us:.2f} us)")
    if info.negative_durations:
        notes.append(f"{info.negative_durations} negative durations set to 0")
    if info.missing_stream:
        notes.append(f"{info.missing_stream} device operations without a stream id (tid used)")
    if notes:
        _say(console, "[yellow]trace quirks:[/] " + "; ".join(notes))
    if seg is None:
        _say(console, f"layers: {r.layers} recorded by the run")
    else:
        drop = ", ".join(f"{v} {k}" for k, v in seg.dropped.items())
        _say(console, f"layers: {seg.description}; {seg.found} found, {r.layers} steady"
                      + (f" (dropped: {drop})" if drop else ""))
    b = s.bubble_by_class
    _say(console, 
        f"[bold]per layer[/] wall {s.wall.median:.1f} us (p20 {s.wall.p20:.1f}, p80 {s.wall.p80:.1f}), "
        f"kernel sum {s.kernel_sum.median:.1f} us, overlap x{s.overlap.median:.2f}, bubble "
        f"{s.bubble.median:.1f} us (launch {b['launch'].median:.1f} / fence {b['fence'].median:.1f}"
        f" / stall {b['stall'].median:.1f}), {r.kernels_per_layer.median:g} kernels, "
        f"{len(s.streams)} streams")
    ar = r.allreduce
    if ar:
        _say(console, f"[bold]all-reduce[/] {ar['p50']:.2f} us per call (p10 {ar['p10']:.2f}, "
                      f"p90 {ar['p90']:.2f}, max {ar['max']:.2f}), {ar['per_layer']:g} calls per "
                      f"layer, {ar['n']} calls")
    else:
        _say(console, "[bold]all-reduce[/] none")
    if r.stall_sites:
        t = Table(title="stalls (>= 2 us all-stream idle), most time first", title_justify="left")
        for col in ("kernel before the gap", "kernel after it", "count", "per layer", "median us",
                    "max us"):
            t.add_column(col, justify="left" if col.startswith("kernel") else "right")
        for site in r.stall_sites[:10]:
            t.add_row(short(site["before"], 40), short(site["after"], 40), str(site["count"]),
                      f"{site['per_layer']:.2f}", f"{site['median_us']:.2f}", f"{site['max_us']:.2f}")
        console.print(t)
    t = Table(title="streams", title_justify="left")
    for col in ("stream", "ops in trace", "per layer", "us per layer"):
        t.add_column(col, justify="left" if col == "stream" else "right")
    for st in r.streams:
        t.add_row(st["stream"], str(st["ops"]), f"{st['per_layer']:g}", f"{st['time_per_layer_us']:.1f}")
    console.print(t)
    t = Table(title=f"kernels in steady layers ({min(top, len(r.kernels))} of {len(r.kernels)}, "
                    "most time first)", title_justify="left")
    for col in ("kernel", "kind", "node", "per layer", "median us", "us per layer", "share"):
        t.add_column(col, justify="left" if col in ("kernel", "kind", "node") else "right")
    for k in r.kernels[:top]:
        t.add_row(short(k["name"]), k["kind"], ",".join(k["nodes"]) or "-", f"{k['per_layer']:g}",
                  f"{k['median_us']:.2f}", f"{k['per_layer_us']:.2f}", f"{100 * k['share']:.1f}%")
    console.print(t)
    if s.nodes:
        t = Table(title="per node (sum of its kernels per occurrence, us)", title_justify="left")
        for col in ("node", "kernels", "median", "p20-p80", "streams"):
            t.add_column(col, justify="left" if col in ("node", "streams") else "right")
        for name, n in s.nodes.items():
            t.add_row(name, f"{n.kernels_per_occurrence:g}", f"{n.median:.2f}",
                      f"{n.p20:.1f}-{n.p80:.1f}", ",".join(n.streams))
        console.print(t)
    if r.outside["ops"]:
        _say(console, f"outside steady layers: {r.outside['ops']} device operations, "
                      f"{r.outside['time_us']:.1f} us")


def _kv(d: dict) -> str:
    return ", ".join(f"{k} x{v}" for k, v in d.items())


def print_diff(console: Console, a: TraceReport, b: TraceReport, d: dict) -> None:
    _say(console, f"[bold]A[/] {a.path}  ({a.layers} steady layers, {a.summary.source.describe()})")
    _say(console, f"[bold]B[/] {b.path}  ({b.layers} steady layers, {b.summary.source.describe()})")
    t = Table(title="per layer", title_justify="left")
    for col in ("", "A", "B", "B - A", "%"):
        t.add_column(col, justify="left" if col == "" else "right")
    for m in d["metrics"]:
        digits = (0 if all(isinstance(m[k], int) for k in ("a", "b")) else
                  2 if "overlap" in m["metric"] or "per layer" in m["metric"] else 1)
        pct = (f"{100 * m['delta'] / m['a']:+.1f}%" if m["delta"] is not None and m["a"] else "")
        t.add_row(m["metric"], _f(m["a"], digits), _f(m["b"], digits),
                  "-" if m["delta"] is None else f"{m['delta']:+.{digits}f}", pct)
    console.print(t)
    if d["kernel_count_changes"]:
        t = Table(title="kernel count per layer changed", title_justify="left")
        for col in ("kernel", "A", "B", "B - A"):
            t.add_column(col, justify="left" if col == "kernel" else "right")
        for r in d["kernel_count_changes"][:15]:
            t.add_row(short(r["name"]), f"{r['per_layer_a']:g}", f"{r['per_layer_b']:g}",
                      f"{r['count_delta']:+g}")
        console.print(t)
    else:
        _say(console, "kernel counts per layer: the same")
    t = Table(title="kernels whose time per layer changed most (us)", title_justify="left")
    for col in ("kernel", "A", "B", "B - A", "median A", "median B"):
        t.add_column(col, justify="left" if col == "kernel" else "right")
    for r in d["kernel_time_changes"]:
        t.add_row(short(r["name"]), f"{r['us_per_layer_a']:.2f}", f"{r['us_per_layer_b']:.2f}",
                  f"{r['us_delta']:+.2f}", _f(r["median_us_a"], 2), _f(r["median_us_b"], 2))
    console.print(t)
