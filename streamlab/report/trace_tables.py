"""Tables for what a trace's dependency graph says (trace.explain.Explained): the critical path
of the median step, exposed communication, rank skew, the what-if before and after, and the
roofline per node. Numbers that do not exist print as "-", never "nan"."""

from __future__ import annotations

import math

from rich.console import Console
from rich.table import Table

from streamlab.report.trace_view import short
from streamlab.trace.critical import CriticalPath
from streamlab.trace.explain import Explained

PATH_ROWS = 60  # longer paths show their longest rows (kernel + gap), in path order


def _f(v: float | None, digits: int = 1, sign: bool = False) -> str:
    if v is None or not math.isfinite(v):
        return "-"
    return f"{v:+.{digits}f}" if sign else f"{v:.{digits}f}"


def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}%" if whole and math.isfinite(part / whole) else "-"


def _table(title: str, columns: tuple[str, ...], left: int = 1) -> Table:
    t = Table(title=title, title_justify="left")
    for i, col in enumerate(columns):
        t.add_column(col, justify="left" if i < left else "right")
    return t


def print_explained(console: Console, e: Explained) -> None:
    console.print(f"[bold]dependencies[/] {e.graph.note}; {e.graph.steps} step(s)", soft_wrap=True)
    if e.path is not None:
        _critical(console, e, e.path)
    if e.exposed is not None:
        _exposed(console, e)
    if e.skew is not None:
        _skew(console, e)
    if e.what_if is not None:
        _what_if(console, e)
    _roofline(console, e)


def _critical(console: Console, e: Explained, p: CriticalPath) -> None:
    span = p.end - p.start
    classes = ", ".join(f"{k} {v:.1f}" for k, v in list(p.by("class").items())[:6])
    console.print(
        f"[bold]critical path[/] of step {p.step} (median span of {len(e.spans)}: {span:.1f} us): "
        f"{len(p.kernels)} kernels, {p.busy:.1f} us of kernels and {p.gaps:.1f} us of gaps, "
        f"{p.cross_stream} waits on another stream; kernel us on it by class: {classes}",
        soft_wrap=True)
    rows = list(p.kernels)
    if len(rows) > PATH_ROWS:
        keep = set(sorted(range(len(rows)), key=lambda i: -(rows[i].duration + rows[i].gap))[:PATH_ROWS])
        rows = [r for i, r in enumerate(rows) if i in keep]
    title = ("critical path (start from the step's start; gap: after what it waited on; slack: "
             "how much earlier its next dependency was done)")
    if len(rows) < len(p.kernels):
        title += f", the {len(rows)} longest of {len(p.kernels)} rows"
    t = _table(title, ("kernel", "stream", "start us", "us", "gap us", "waited on", "slack us"), 2)
    for k in rows:
        waited = "-" if k.waited_on is None else (
            f"{short(k.waited_on, 32)} ({k.wait_kind}{', other stream' if k.cross else ''})")
        t.add_row(short(k.node or k.name, 40), k.stream, _f(k.start), _f(k.duration, 2),
                  _f(k.gap, 2), waited, _f(k.slack, 2))
    console.print(t)
    if e.near_critical:
        console.print("nearly critical (slack us against the step's end): " + ", ".join(
            f"{short(n.name, 32)} on {n.stream} {n.slack:.2f}" for n in e.near_critical),
            soft_wrap=True)


def _exposed(console: Console, e: Explained) -> None:
    x = e.exposed
    t = _table("communication: hidden under other device work vs exposed (nothing else running)",
               ("collective", "class", "calls", "median us", "hidden us", "exposed us", "exposed"), 2)
    for r in x.rows:
        t.add_row(short(r.name, 48), r.cls, str(r.calls), _f(r.duration.median, 2),
                  _f(r.duration.median - r.exposed.median, 2), _f(r.exposed.median, 2),
                  f"{100 * r.exposed_share:.0f}%")
    console.print(t)
    per_layer = (f"{x.per_layer.median:.1f} us per layer (p20 {x.per_layer.p20:.1f}, p80 "
                 f"{x.per_layer.p80:.1f}), " if x.per_layer else "")
    console.print(f"exposed communication: {per_layer}{x.per_step.median:.1f} us per step",
                  soft_wrap=True)


def _skew(console: Console, e: Explained) -> None:
    s = e.skew
    console.print(f"[bold]rank skew[/] at {len(s.calls)} collective calls ({s.note}): arrival "
                  f"spread median {s.spread.median:.2f} us, p80 {s.spread.p80:.2f}, max "
                  f"{max(a.spread for a in s.calls):.2f} (estimated from call durations: ranks "
                  "leave a collective together)", soft_wrap=True)
    t = _table("per rank", ("rank", "arrived last at", "waited median us", "p80 us"))
    for r, n, w in zip(s.ranks, s.last_counts, s.wait):
        t.add_row(r, f"{n} of {len(s.calls)}", _f(w.median, 2), _f(w.p80, 2))
    console.print(t)
    worst = sorted(s.calls, key=lambda a: -a.spread)[:5]
    console.print("widest spreads: " + ", ".join(
        f"call {a.call} ({short(a.name, 28)}) {a.spread:.2f} us, last {s.ranks[a.last]}"
        for a in worst), soft_wrap=True)


def _what_if(console: Console, e: Explained) -> None:
    w = e.what_if
    for m in w.matched:
        console.print(f"what-if {m.change.text}: {m.count} {m.what} ({m.change.target}), "
                      f"{m.us_per_step.before:.1f} -> {m.us_per_step.after:.1f} us per step",
                      soft_wrap=True)
    t = _table("what-if, predicted by replaying the trace's dependency graph (us; a prediction, "
               "not a measurement)", ("", "trace", "what-if", "delta", "%"))
    rows = (("layer wall median", w.layer_wall), ("layer wall p20", w.layer_wall_p20),
            ("layer wall p80", w.layer_wall_p80), ("kernel sum per layer", w.kernel_sum),
            ("bubble per layer", w.bubble),
            (f"step ({w.layers_per_step:g} layers) median", w.step))
    for label, s in rows:
        t.add_row(label, _f(s.before), _f(s.after), _f(s.delta, sign=True), _pct(s.delta, s.before))
    console.print(t)
    console.print(f"[dim]dependencies: {w.dependencies}[/]", soft_wrap=True)


def _roofline(console: Console, e: Explained) -> None:
    r = e.roofline
    if not r.rows:
        console.print(f"roofline per node: {r.note}", soft_wrap=True)
        return
    hw = r.hardware
    t = _table(f"roofline per node ({r.note})", ("node", "us", "GB/s", "of BW", "TFLOP/s",
                                                 "of peak", "floor us", "of roofline", "bound"))
    for row, peak in zip(r.rows, r.peaks):
        t.add_row(row.node, _f(row.time_us, 2), _f(row.gbs, 0), _pct(row.gbs, hw.hbm_gbs),
                  _f(row.tflops, 1), _pct(row.tflops, peak), _f(row.floor_us, 2),
                  _pct(row.floor_us, row.time_us), row.bound)
    console.print(t)
