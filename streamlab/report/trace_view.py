"""Rendering of trace summaries (streamlab.trace.summary.TraceReport) for a terminal: the lines
and rich tables `streamlab trace summary` and `trace diff` print. Nothing here computes a number;
a value that is missing prints as "-".
"""

from __future__ import annotations

import math
import re

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from streamlab.trace.summary import TraceReport

__all__ = ["print_diff", "print_report", "short"]

STREAM_ROWS = 12  # streams listed before the rest are summed in one line


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
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{digits}f}"


def _kv(d: dict) -> str:
    return ", ".join(f"{k} x{v}" for k, v in d.items())


def print_report(console: Console, r: TraceReport, top: int = 25) -> None:
    """The summary of one trace: what was read, then (for a trace of steps) the layers, the
    per-step split, stalls, streams, hardware queues, kernels and nodes."""
    info, seg = r.info, r.segmentation
    _say(console, f"[bold]{escape(r.path)}[/]  {escape(r.timeline.source.describe())}")
    _say(console, f"read as {info.format}" + (f" ({info.schema})" if info.schema else ""))
    if info.gpu_choice:
        listed = info.metadata.get("gpus_listed")
        _say(console, f"summary of {info.gpu_choice}"
                      + (f"; {len(info.gpus)} of the {listed} GPUs the trace lists have work"
                         if listed else f"; {len(info.gpus)} GPU(s) with work")
                      + ("" if len(info.gpus) < 2 else " (" + ", ".join(
                          f"GPU {g.id}: {g.ops:,} ops" for g in info.gpus) + ")"))
    ops = ", ".join(f"{v:,} {k}" for k, v in sorted(info.device_ops.items()))
    _say(console, f"loaded {info.events:,} events: {ops or 'no device operations'}; "
                  f"{info.runtime_calls:,} runtime calls"
                  + (f", {info.graph_launches} graph launches ({len(info.replays)} replays)"
                     if info.graph_launches or info.replays else "")
                  + (f", syncs {_kv(info.syncs)}" if info.syncs else "")
                  + (f", stream waits {_kv(info.stream_waits)}" if info.stream_waits else ""))
    _quirks(console, r)
    if r.not_a_step is not None:
        _say(console, f"[bold red]not a step:[/] {escape(r.not_a_step.line())}")
        _say(console, "no layer numbers: a capture or warm-up runs no steady-state step")
        _queues(console, r)
        _kernel_table(console, r, top, "device operations that ran")
        return
    s = r.summary
    unit = seg.layers_per_unit if seg else 1
    if seg is None:
        _say(console, f"layers: {r.layers} recorded by the run")
    else:
        drop = ", ".join(f"{v} {k}" for k, v in seg.dropped.items())
        what = "units" if unit > 1 else "layers"
        _say(console, f"layers: {escape(seg.description)}; {seg.found} {what} found"
                      + (f" ({seg.found * unit} layers)" if unit > 1 else "")
                      + f", {r.layers} steady" + (f" (dropped: {drop})" if drop else ""))
    b = s.bubble_by_class
    per = f"per unit of {unit} layers" if unit > 1 else "per layer"
    _say(console,
         f"[bold]{per}[/] wall {s.wall.median:.1f} us (p20 {s.wall.p20:.1f}, p80 {s.wall.p80:.1f}), "
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
    _steps(console, r)
    if r.stall_sites:
        t = Table(title="stalls (>= 2 us all-stream idle), most time first", title_justify="left")
        for col in ("kernel before the gap", "kernel after it", "count", "per layer", "median us",
                    "max us"):
            t.add_column(col, justify="left" if col.startswith("kernel") else "right")
        for site in r.stall_sites[:10]:
            t.add_row(short(site["before"], 40), short(site["after"], 40), str(site["count"]),
                      f"{site['per_layer']:.2f}", f"{site['median_us']:.2f}", f"{site['max_us']:.2f}")
        console.print(t)
    _stream_table(console, r)
    _queues(console, r)
    _kernel_table(console, r, top, "kernels in steady layers")
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


def _quirks(console: Console, r: TraceReport) -> None:
    info, notes = r.info, []
    if info.same_stream_overlaps:
        notes.append(f"{info.same_stream_overlaps} same-stream overlaps clipped "
                     f"({info.overlap_clipped_us:.2f} us in all, largest {info.max_overlap_us:.2f} us)")
    if info.negative_durations:
        notes.append(f"{info.negative_durations} negative durations set to 0")
    if info.missing_stream:
        notes.append(f"{info.missing_stream} device operations without a stream id "
                     + ("(tid used)" if info.format == "kineto" else "(hardware queue used)"))
    if notes:
        _say(console, "[yellow]trace quirks:[/] " + "; ".join(notes))


def _steps(console: Console, r: TraceReport) -> None:
    st, o = r.steps, r.origins
    if st is not None:
        _say(console, f"[bold]per step[/] ({st.basis}, {st.steps} step{'s' if st.steps > 1 else ''}, "
                      f"medians): {st.wall_us.median:.1f} us"
                      + (" per output token" if st.basis == "graph replay" else "")
                      + f" = layers {st.layers_us.median:.1f} ({st.layers.median:g} layers) + "
                      f"outside layers {st.outside_us.median:.1f} + idle {st.idle_us.median:.1f}")
    if o is not None and o.replays and o.eager_ops:
        top = ", ".join(f"{short(n, 40)} x{c}" for n, c in o.eager_top[:3])
        _say(console, f"[bold]graph vs eager[/] {o.graph_ops:,} operations replayed by "
                      f"{o.replays} graph launch{'es' if o.replays > 1 else ''} ({o.graph_us:.1f} us), "
                      f"{o.eager_ops:,} launched eagerly ({o.eager_us:.1f} us: {escape(top)}); "
                      "layers are of the replayed ones")


def _stream_table(console: Console, r: TraceReport) -> None:
    t = Table(title="streams", title_justify="left")
    for col in ("stream", "ops in trace", "per layer", "us per layer"):
        t.add_column(col, justify="left" if col == "stream" else "right")
    for st in r.streams[:STREAM_ROWS]:
        t.add_row(st["stream"], str(st["ops"]), f"{st['per_layer']:g}", f"{st['time_per_layer_us']:.1f}")
    console.print(t)
    rest = r.streams[STREAM_ROWS:]
    if rest:
        _say(console, f"... and {len(rest)} more streams with {sum(x['ops'] for x in rest):,} "
                      "operations in all")


def _queues(console: Console, r: TraceReport) -> None:
    if not r.queues:
        return
    t = Table(title="hardware queues (the queue each stream's work landed on)", title_justify="left")
    for col in ("queue", "ops", "busy us", "streams"):
        t.add_column(col, justify="left" if col in ("queue", "streams") else "right")
    for q in r.queues:
        shown = ", ".join(q.streams[:8]) + (f" (+{len(q.streams) - 8} more)" if len(q.streams) > 8 else "")
        t.add_row(q.queue, f"{q.ops:,}", f"{q.busy_us:.1f}", shown)
    console.print(t)


def _kernel_table(console: Console, r: TraceReport, top: int, title: str) -> None:
    t = Table(title=f"{title} ({min(top, len(r.kernels))} of {len(r.kernels)}, most time first)",
              title_justify="left")
    for col in ("kernel", "kind", "node", "calls", "per layer", "median us", "us per layer", "share"):
        t.add_column(col, justify="left" if col in ("kernel", "kind", "node") else "right")
    for k in r.kernels[:top]:
        t.add_row(escape(short(k["name"])), k["kind"], ",".join(k["nodes"]) or "-",
                  f"{k['calls']:,}", f"{k['per_layer']:g}", _f(k["median_us"], 2),
                  _f(k["per_layer_us"], 2), f"{100 * k['share']:.1f}%")
    console.print(t)


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
