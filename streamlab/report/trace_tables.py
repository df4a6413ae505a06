"""Tables for what a trace's dependency graph says (the parts trace.explain adds to a
results.TraceSummary): the critical path of the median step, exposed communication, rank skew,
the what-if before and after, and the roofline per node. Numbers that do not exist print as "-",
never "nan"."""

from __future__ import annotations

import math
import re

from rich.console import Console
from rich.table import Table

from streamlab.results import CriticalPath, TraceSummary

__all__ = ["print_explained", "short"]

PATH_ROWS = 60  # longer paths show their longest rows (kernel + gap), in path order
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


def print_explained(console: Console, s: TraceSummary) -> None:
    """The dependency-graph parts of a summary (nothing when they were not looked at)."""
    if s.dependencies is None:
        return
    console.print(f"[bold]dependencies[/] {s.dependencies.note}; {s.dependencies.steps} step(s)",
                  soft_wrap=True)
    if s.critical_path is not None:
        _critical(console, s.critical_path, len(s.dependencies.step_span_us))
    if s.exposed_communication is not None:
        _exposed(console, s)
    if s.rank_skew is not None:
        _skew(console, s)
    if s.what_if is not None:
        _what_if(console, s)
    if s.roofline is not None:
        _roofline(console, s)
    for p in s.plots:
        console.print(f"plot: {p}", soft_wrap=True)


def _critical(console: Console, p: CriticalPath, steps: int) -> None:
    classes = ", ".join(f"{k} {v:.1f}" for k, v in list(p.by_class_us.items())[:6])
    console.print(
        f"[bold]critical path[/] of step {p.step} (median span of {steps}: {p.span_us:.1f} us): "
        f"{len(p.kernels)} kernels, {p.busy_us:.1f} us of kernels and {p.gaps_us:.1f} us of gaps, "
        f"{p.cross_stream_waits} waits on another stream; kernel us on it by class: {classes}",
        soft_wrap=True)
    rows = list(p.kernels)
    if len(rows) > PATH_ROWS:
        keep = set(sorted(range(len(rows)), key=lambda i: -(rows[i].duration_us + rows[i].gap_us))[:PATH_ROWS])
        rows = [r for i, r in enumerate(rows) if i in keep]
    title = ("critical path (start from the step's start; gap: after what it waited on; slack: "
             "how much earlier its next dependency was done)")
    if len(rows) < len(p.kernels):
        title += f", the {len(rows)} longest of {len(p.kernels)} rows"
    t = _table(title, ("kernel", "stream", "start us", "us", "gap us", "waited on", "slack us"), 2)
    for k in rows:
        waited = "-" if k.waited_on is None else (
            f"{short(k.waited_on, 32)} ({k.wait_kind}{', other stream' if k.cross_stream else ''})")
        t.add_row(short(k.node or k.kernel, 40), k.stream, _f(k.start_us), _f(k.duration_us, 2),
                  _f(k.gap_us, 2), waited, _f(k.slack_us, 2))
    console.print(t)
    if p.near_critical:
        console.print("nearly critical (slack us against the step's end): " + ", ".join(
            f"{short(n.kernel, 32)} on {n.stream} {n.slack_us:.2f}" for n in p.near_critical),
            soft_wrap=True)


def _exposed(console: Console, s: TraceSummary) -> None:
    x = s.exposed_communication
    t = _table("communication: hidden under other device work vs exposed (nothing else running)",
               ("collective", "class", "calls", "median us", "hidden us", "exposed us", "exposed"), 2)
    for r in x.collectives:
        t.add_row(short(r.name, 48), r.kernel_class, str(r.calls), _f(r.duration_us.median, 2),
                  _f(r.hidden_us_median, 2), _f(r.exposed_us.median, 2), f"{100 * r.exposed_share:.0f}%")
    console.print(t)
    per_layer = (f"{x.per_layer_us.median:.1f} us per layer (p20 {x.per_layer_us.p20:.1f}, p80 "
                 f"{x.per_layer_us.p80:.1f}), " if x.per_layer_us else "")
    console.print(f"exposed communication: {per_layer}{x.per_step_us.median:.1f} us per step",
                  soft_wrap=True)


def _skew(console: Console, s: TraceSummary) -> None:
    k = s.rank_skew
    console.print(f"[bold]rank skew[/] at {len(k.calls)} collective calls ({k.matched}): arrival "
                  f"spread median {k.spread_us.median:.2f} us, p80 {k.spread_us.p80:.2f}, max "
                  f"{max(a.spread_us for a in k.calls):.2f} (estimated from call durations: ranks "
                  "leave a collective together)", soft_wrap=True)
    t = _table("per rank", ("rank", "arrived last at", "waited median us", "p80 us"))
    for r in k.per_rank:
        t.add_row(r.rank, f"{r.last_at} of {len(k.calls)}", _f(r.wait_us.median, 2), _f(r.wait_us.p80, 2))
    console.print(t)
    worst = sorted(k.calls, key=lambda a: -a.spread_us)[:5]
    console.print("widest spreads: " + ", ".join(
        f"call {a.call} ({short(a.name, 28)}) {a.spread_us:.2f} us, last {k.ranks[a.last_rank]}"
        for a in worst), soft_wrap=True)


def _what_if(console: Console, s: TraceSummary) -> None:
    w = s.what_if
    for m in w.matched:
        console.print(f"what-if {m.what_if}: {m.matched} {m.what} ({m.target}), "
                      f"{m.us_per_step.before:.1f} -> {m.us_per_step.after:.1f} us per step",
                      soft_wrap=True)
    t = _table("what-if, predicted by replaying the trace's dependency graph (us; a prediction, "
               "not a measurement)", ("", "trace", "what-if", "delta", "%"))
    rows = (("layer wall median", w.layer_wall_us), ("layer wall p20", w.layer_wall_p20_us),
            ("layer wall p80", w.layer_wall_p80_us), ("kernel sum per layer", w.kernel_sum_us),
            ("bubble per layer", w.bubble_us),
            (f"step ({w.layers_per_step:g} layers) median", w.step_us))
    for label, x in rows:
        t.add_row(label, _f(x.before), _f(x.after), _f(x.delta, sign=True), _pct(x.delta, x.before))
    console.print(t)
    console.print(f"[dim]dependencies: {w.dependencies}[/]", soft_wrap=True)


def _roofline(console: Console, s: TraceSummary) -> None:
    r = s.roofline
    if not r.nodes:
        console.print(f"roofline per node: {r.note}", soft_wrap=True)
        return
    t = _table(f"roofline per node ({r.note})", ("node", "us", "GB/s", "of BW", "TFLOP/s",
                                                 "of peak", "floor us", "of roofline", "bound"))
    for row in r.nodes:
        t.add_row(row.node, _f(row.time_us, 2), _f(row.achieved_gbs, 0), _pct(row.of_bandwidth, 1.0),
                  _f(row.achieved_tflops, 1), _pct(row.of_peak_flops, 1.0), _f(row.floor_us, 2),
                  _pct(row.of_roofline, 1.0), row.bound)
    console.print(t)
