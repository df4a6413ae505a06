"""A run result, measured or simulated, as the rich lines and per-node table `run` prints.

Both kinds print alike; `source` says which it is, and a simulated one says it is a prediction.
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from streamlab.kernels import backend_kind
from streamlab.results import RunResult


def print_result(console: Console, r: RunResult) -> None:
    a, lat, budget = r.anatomy, r.latency, r.budget
    if len(lat.repeat_medians_us) > 1:
        console.print(
            f"[bold]per-layer latency[/] {lat.median:.1f} us (p20 {lat.p20:.1f}, p80 "
            f"{lat.p80:.1f}); repeat medians spread {100 * lat.repeat_spread:.2f}% over "
            f"{len(lat.repeat_medians_us)} interleaved repeats, drift "
            f"{100 * lat.drift:.2f}% over {len(lat.block_medians_us)} blocks  [dim]({r.source})[/]")
    elif r.prediction is not None:
        from streamlab.report.prediction import prediction_lines
        for line in prediction_lines(r.prediction, r.source.removeprefix("simulated, profile ")):
            console.print(line)
    else:
        console.print(f"[bold]per-layer latency[/] {lat.median:.1f} us  [dim]({r.source})[/]")
    bub = a.bubble_by_class_us
    ar = a.allreduce_per_call_us
    console.print(
        f"layer anatomy: wall {a.wall_us.median:.1f} us, kernel sum {a.kernel_sum_us.median:.1f} us, "
        f"overlap x{a.overlap.median:.2f}, bubble {a.bubble_us.median:.1f} us (launch "
        f"{bub['launch'].median:.1f} / fence {bub['fence'].median:.1f} / stall {bub['stall'].median:.1f}), AR "
        + (f"{ar.median:.1f} us per call ({a.allreduce})" if ar else "none")
        + f", {a.physical_streams} physical streams")
    held = budget.floor_held_us
    console.print(f"budget: sum of node floors {budget.floor_sum_us:.1f} us"
                  + (f" ({held:.1f} us of it the emulated all-reduce's set time)" if held else "")
                  + f" + {budget.launch_us:.0f} us x {budget.kernels} kernels = "
                  f"{budget.us:.1f} us; latency / budget = {lat.median / budget.us:.2f}")
    for site in a.stall_sites[:3]:
        console.print(f"  stall {site.median_us:.1f} us x{site.count} between {site.before} and {site.after}")
    table = Table(title=f"{r.scenario}: per node (us)", title_justify="left")
    for col in ("node", "backend", "kernels", "in-graph", "p20-p80", "isolated", "slowdown",
                "floor", "iso/floor"):
        table.add_column(col, justify="left" if col in ("node", "backend") else "right")
    for name, n in r.nodes.items():
        g = n.in_graph_us
        far = n.isolated_us / n.floor_us if n.floor_us > 0 else float("inf")
        table.add_row(name, backend_kind(n.backend), str(n.kernels), f"{g.median:.2f}" if g else "-",
                      f"{g.p20:.1f}-{g.p80:.1f}" if g else "-", f"{n.isolated_us:.2f}",
                      f"{n.slowdown:.2f}", f"{n.floor_us:.2f}",
                      f"[red]{far:.1f}[/]" if far > 10 else f"{far:.1f}")
    console.print(table)
