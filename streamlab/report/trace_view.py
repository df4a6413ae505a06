"""Rendering of trace summaries (results.TraceSummary, results.TraceDiff) for a terminal: the
lines and rich tables `streamlab trace summary` and `trace diff` print; what the trace's
dependency graph says is printed by report.trace_tables. Nothing here computes a number; a value
that is missing prints as "-".
"""

from __future__ import annotations

import math

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from streamlab.report.trace_tables import print_explained, short
from streamlab.results import TraceDiff, TraceSummary

__all__ = ["print_diff", "print_summary"]

STREAM_ROWS = 12  # streams listed before the rest are summed in one line
DIGITS = {"us": 1, "ratio": 2}  # DiffRow.unit -> decimals; counts print as they are


def _say(console: Console, text: str) -> None:
    """A line of text, wrapped by the terminal rather than cut into lines by rich."""
    console.print(text, soft_wrap=True)


def _f(v, digits: int = 1) -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{digits}f}"


def _num(v: float | None, unit: str, sign: str = "") -> str:
    """A DiffRow value: us to 0.1, ratios to 0.01, counts as they are."""
    if v is None:
        return "-"
    digits = DIGITS.get(unit)
    return f"{v:{sign}.{digits}f}" if digits is not None else f"{v:{sign}g}"


def _kv(d: dict) -> str:
    return ", ".join(f"{k} x{v}" for k, v in d.items())


def print_summary(console: Console, s: TraceSummary, top: int = 25) -> None:
    """The summary of one trace: what was read, then (for a trace of steps) the layers, the
    per-step split, stalls, streams, hardware queues, kernels and nodes, and what its
    dependency graph says."""
    info = s.loader
    _say(console, f"[bold]{escape(s.file)}[/]  {escape(_describe(s))}")
    _say(console, f"read as {info.format}" + (f" ({info.schema})" if info.schema else ""))
    if info.gpu_choice:
        _say(console, f"summary of {info.gpu_choice}"
                      + (f"; {len(info.gpus)} of the {info.gpus_listed} GPUs the trace lists have work"
                         if info.gpus_listed else f"; {len(info.gpus)} GPU(s) with work")
                      + ("" if len(info.gpus) < 2 else " (" + ", ".join(
                          f"GPU {g.id}: {g.ops:,} ops" for g in info.gpus) + ")"))
    ops = ", ".join(f"{v:,} {k}" for k, v in sorted(info.device_ops.items()))
    _say(console, f"loaded {info.events:,} events: {ops or 'no device operations'}; "
                  f"{info.runtime_calls:,} runtime calls"
                  + (f", {info.graph_launches} graph launches ({info.replays} replays)"
                     if info.graph_launches or info.replays else "")
                  + (f", syncs {_kv(info.syncs)}" if info.syncs else "")
                  + (f", stream waits {_kv(info.stream_waits)}" if info.stream_waits else ""))
    _quirks(console, s)
    if s.not_a_step is not None:
        _say(console, f"[bold red]not a step:[/] {escape(s.not_a_step.message)}")
        _say(console, "no layer numbers: a capture or warm-up runs no steady-state step")
        _queues(console, s)
        _kernel_table(console, s, top, "device operations that ran")
        return
    seg, f = s.layers, s.per_layer
    unit = seg.layers_per_unit
    if seg.method == "recorded":
        _say(console, f"layers: {seg.steady} recorded by the run")
    else:
        drop = ", ".join(f"{v} {k}" for k, v in seg.dropped.items())
        what = "units" if unit > 1 else "layers"
        _say(console, f"layers: {escape(seg.description)}; {seg.found} {what} found"
                      + (f" ({seg.found * unit} layers)" if unit > 1 else "")
                      + f", {seg.steady} steady" + (f" (dropped: {drop})" if drop else ""))
    b = f.bubble_by_class_us
    per = f"per unit of {unit} layers" if unit > 1 else "per layer"
    _say(console,
         f"[bold]{per}[/] wall {f.wall_us.median:.1f} us (p20 {f.wall_us.p20:.1f}, p80 {f.wall_us.p80:.1f}), "
         f"kernel sum {f.kernel_sum_us.median:.1f} us, overlap x{f.overlap.median:.2f}, bubble "
         f"{f.bubble_us.median:.1f} us (launch {b['launch'].median:.1f} / fence {b['fence'].median:.1f}"
         f" / stall {b['stall'].median:.1f}), {f.kernels.median:g} kernels, "
         f"{f.physical_streams} streams")
    ar = s.allreduce_per_call_us
    if ar:
        _say(console, f"[bold]all-reduce[/] {ar.p50:.2f} us per call (p10 {ar.p10:.2f}, "
                      f"p90 {ar.p90:.2f}, max {ar.max:.2f}), {ar.per_layer:g} calls per "
                      f"layer, {ar.n} calls")
    else:
        _say(console, "[bold]all-reduce[/] none")
    _steps(console, s)
    if s.stall_sites:
        t = Table(title="stalls (>= 2 us all-stream idle), most time first", title_justify="left")
        for col in ("kernel before the gap", "kernel after it", "count", "per layer", "median us",
                    "max us"):
            t.add_column(col, justify="left" if col.startswith("kernel") else "right")
        for site in s.stall_sites[:10]:
            t.add_row(short(site.before, 40), short(site.after, 40), str(site.count),
                      f"{site.per_layer:.2f}", f"{site.median_us:.2f}", f"{site.max_us:.2f}")
        console.print(t)
    _stream_table(console, s)
    _queues(console, s)
    _kernel_table(console, s, top, "kernels in steady layers")
    if s.nodes:
        t = Table(title="per node (sum of its kernels per occurrence, us)", title_justify="left")
        for col in ("node", "kernels", "median", "p20-p80", "streams"):
            t.add_column(col, justify="left" if col in ("node", "streams") else "right")
        for name, n in s.nodes.items():
            t.add_row(name, f"{n.kernels_per_occurrence:g}", f"{n.median:.2f}",
                      f"{n.p20:.1f}-{n.p80:.1f}", ",".join(n.streams))
        console.print(t)
    if s.outside_layers.ops:
        _say(console, f"outside steady layers: {s.outside_layers.ops} device operations, "
                      f"{s.outside_layers.time_us:.1f} us")
    print_explained(console, s)


def _describe(s: TraceSummary) -> str:
    """As timeline.Source.describe: where the numbers came from."""
    extra = ", ".join(f"{k} {v}" for k, v in s.source.detail.items())
    return f"{s.source.kind} on {s.source.device}" + (f" ({extra})" if extra else "")


def _quirks(console: Console, s: TraceSummary) -> None:
    info, notes = s.loader, []
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


def _steps(console: Console, s: TraceSummary) -> None:
    st, o = s.per_step, s.graph_and_eager
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


def _stream_table(console: Console, s: TraceSummary) -> None:
    t = Table(title="streams", title_justify="left")
    for col in ("stream", "ops in trace", "per layer", "us per layer"):
        t.add_column(col, justify="left" if col == "stream" else "right")
    for st in s.streams[:STREAM_ROWS]:
        t.add_row(st.stream, str(st.ops), f"{st.per_layer:g}", f"{st.time_per_layer_us:.1f}")
    console.print(t)
    rest = s.streams[STREAM_ROWS:]
    if rest:
        _say(console, f"... and {len(rest)} more streams with {sum(x.ops for x in rest):,} "
                      "operations in all")


def _queues(console: Console, s: TraceSummary) -> None:
    if not s.hardware_queues:
        return
    t = Table(title="hardware queues (the queue each stream's work landed on)", title_justify="left")
    for col in ("queue", "ops", "busy us", "streams"):
        t.add_column(col, justify="left" if col in ("queue", "streams") else "right")
    for q in s.hardware_queues:
        shown = ", ".join(q.streams[:8]) + (f" (+{len(q.streams) - 8} more)" if len(q.streams) > 8 else "")
        t.add_row(q.queue, f"{q.ops:,}", f"{q.busy_us:.1f}", shown)
    console.print(t)


def _kernel_table(console: Console, s: TraceSummary, top: int, title: str) -> None:
    t = Table(title=f"{title} ({min(top, len(s.kernels))} of {len(s.kernels)}, most time first)",
              title_justify="left")
    for col in ("kernel", "kind", "node", "calls", "per layer", "median us", "us per layer", "share"):
        t.add_column(col, justify="left" if col in ("kernel", "kind", "node") else "right")
    for k in s.kernels[:top]:
        t.add_row(escape(short(k.name)), k.kind, ",".join(k.nodes) or "-",
                  f"{k.calls:,}", f"{k.per_layer:g}", _f(k.median_us, 2),
                  _f(k.per_layer_us, 2), f"{100 * k.share:.1f}%")
    console.print(t)


def print_diff(console: Console, d: TraceDiff) -> None:
    """Two traces side by side (B - A)."""
    for side, path, s in (("A", d.a, d.summary_a), ("B", d.b, d.summary_b)):
        _say(console, f"[bold]{side}[/] {path}  ({s.steady_layers} steady layers, {_describe(s)})")
    t = Table(title="per layer", title_justify="left")
    for col in ("", "A", "B", "B - A", "%"):
        t.add_column(col, justify="left" if col == "" else "right")
    for m in d.metrics:
        pct = f"{100 * m.delta / m.a:+.1f}%" if m.delta is not None and m.a else ""
        t.add_row(m.metric, _num(m.a, m.unit), _num(m.b, m.unit), _num(m.delta, m.unit, "+"), pct)
    console.print(t)
    if d.kernel_count_changes:
        t = Table(title="kernel count per layer changed", title_justify="left")
        for col in ("kernel", "A", "B", "B - A"):
            t.add_column(col, justify="left" if col == "kernel" else "right")
        for k in d.kernel_count_changes[:15]:
            t.add_row(short(k.name), f"{k.per_layer_a:g}", f"{k.per_layer_b:g}", f"{k.count_delta:+g}")
        console.print(t)
    else:
        _say(console, "kernel counts per layer: the same")
    t = Table(title="kernels whose time per layer changed most (us)", title_justify="left")
    for col in ("kernel", "A", "B", "B - A", "median A", "median B"):
        t.add_column(col, justify="left" if col == "kernel" else "right")
    for k in d.kernel_time_changes:
        t.add_row(short(k.name), f"{k.us_per_layer_a:.2f}", f"{k.us_per_layer_b:.2f}",
                  f"{k.us_delta:+.2f}", _f(k.median_us_a, 2), _f(k.median_us_b, 2))
    console.print(t)
