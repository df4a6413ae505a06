"""A run result, measured or simulated, as the rich lines and per-node table `run` prints.

Both kinds print alike where their numbers mean the same; a simulated one says it is a
prediction, with its interval, and shows none of a measurement's columns (percentiles over
replays, the spread of repeats: a simulation has one value). The bubble is split into gap classes
as the median layer has it, so the classes add up to the bubble printed beside them; floors and
their ratios are printed with units chosen by size (report.numbers).
"""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from streamlab.analysis import GAP_CLASSES
from streamlab.kernels import backend_kind
from streamlab.report.numbers import duration, ratio
from streamlab.results import Anatomy, RunResult

__all__ = ["bubble_text", "node_table", "print_result"]


def bubble_text(a: Anatomy) -> str:
    """`bubble 29.1 us (median layer: launch 16.0 / fence 0.6 / stall 12.3)`: classes that add up.
    Files written before the split was kept give each class's own median, and say so."""
    if a.bubble_split_us:
        split, how = a.bubble_split_us, "median layer"
    else:
        split, how = {c: s.median for c, s in a.bubble_by_class_us.items()}, "each class's median"
    classes = " / ".join(f"{c} {split[c]:.1f}" for c in GAP_CLASSES if c in split)
    return f"bubble {a.bubble_us.median:.1f} us ({how}: {classes})"


def print_result(console: Console, r: RunResult) -> None:
    a, lat, budget = r.anatomy, r.latency, r.budget
    if len(lat.repeat_medians_us) > 1:
        console.print(
            f"[bold]per-layer latency[/] {lat.median:.1f} us (p20 {lat.p20:.1f}, p80 "
            f"{lat.p80:.1f}); repeat medians spread {100 * lat.repeat_spread:.2f}% over "
            f"{len(lat.repeat_medians_us)} interleaved repeats, drift "
            f"{100 * lat.drift:.2f}% over {len(lat.block_medians_us)} blocks  [dim]({escape(r.source)})[/]")
    elif r.prediction is not None:
        from streamlab.report.prediction import prediction_lines
        for line in prediction_lines(r.prediction, r.source.removeprefix("simulated, profile ")):
            console.print(line)
    else:
        what = "per-layer latency" if r.measured else "predicted per-layer latency"
        console.print(f"[bold]{what}[/] {lat.median:.1f} us  [dim]({escape(r.source)})[/]")
    ar = a.allreduce_per_call_us
    console.print(
        ("layer anatomy" if r.measured else "predicted layer anatomy")
        + f": wall {a.wall_us.median:.1f} us, kernel sum {a.kernel_sum_us.median:.1f} us, "
        f"overlap x{a.overlap.median:.2f}, {bubble_text(a)}, AR "
        + (f"{ar.median:.1f} us per call ({escape(a.allreduce)})" if ar else "none")
        + f", {a.physical_streams} physical streams")
    held = budget.floor_held_us
    console.print(f"budget: sum of node floors {duration(budget.floor_sum_us)}"
                  + (f" ({duration(held)} of it the emulated all-reduce's set time)" if held else "")
                  + f" + {budget.launch_us:.0f} us x {budget.kernels} kernels = "
                  f"{budget.us:.1f} us; latency / budget = {ratio(lat.median / budget.us)}")
    for site in a.stall_sites[:3]:
        console.print(f"  stall {site.median_us:.1f} us x{site.count} between {site.before} and {site.after}")
    console.print(node_table(r))


def node_table(r: RunResult) -> Table:
    """Per node: in-graph time, alone, slowdown, roofline floor. A simulated run's columns say
    they are predictions and leave out what only replays give (p20-p80, the measured backend)."""
    measured = r.measured
    title = f"{r.scenario}: per node" + ("" if measured else " (predicted: simulated, not measured)")
    table = Table(title=title, title_justify="left")
    cols = (("node", "backend", "kernels", "in-graph us", "p20-p80", "isolated us", "slowdown", "floor",
             "isolated/floor") if measured else
            ("node", "kernels", "in-graph us (predicted)", "isolated us (profile)", "slowdown", "floor",
             "isolated/floor"))
    for col in cols:
        table.add_column(col, justify="left" if col in ("node", "backend") else "right")
    for name, n in r.nodes.items():
        g = n.in_graph_us
        far = n.isolated_us / n.floor_us if n.floor_us > 0 else float("inf")
        far_text = ratio(far)
        cells = [name] + ([backend_kind(n.backend)] if measured else []) + [str(n.kernels),
                                                                            f"{g.median:.2f}" if g else "-"]
        if measured:
            cells.append(f"{g.p20:.1f}-{g.p80:.1f}" if g else "-")
        cells += [f"{n.isolated_us:.2f}", ratio(n.slowdown), duration(n.floor_us),
                  f"[red]{far_text}[/]" if far > 10 else far_text]
        table.add_row(*cells)
    return table
