"""`streamlab search --measure` shown: per batch, the simulator's order beside what the GPU measured."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from streamlab.results import SearchMeasurement, Versus

__all__ = ["print_measurement"]


def _versus(v: Versus | None) -> str:
    if v is None:
        return "-"
    colour = {"faster": "green", "slower": "red"}.get(v.verdict, "dim")
    return f"{v.delta_us:+.1f} ({v.percent:+.1f}%) [{colour}]{v.verdict}[/] +-{v.band_us:.1f}"


def print_measurement(console: Console, m: SearchMeasurement) -> None:
    added = f"{len(m.pairs_added)} overlaps measured and added" if m.pairs_added else "no overlap was missing"
    console.print(f"measured on {m.device} ({m.backend}): {m.rounds} round(s) in fresh processes on {m.gpus} GPU(s); "
                  f"{added}; ranked on {m.ranked_on}", markup=False)
    for b in m.batches:
        t = Table(title=f"batch {b.batch}: measured (median over rounds, us per layer) beside predicted on the "
                        "profile with the pairs measured", title_justify="left")
        for col in ("layout", "rank", "predicted", "measured", "p20-p80", "vs serial", "vs best shipped", "= serial"):
            t.add_column(col, justify="left" if col == "layout" else "right")
        for x in b.layouts:
            interval = (f" ({x.predicted_low_us:.1f}-{x.predicted_high_us:.1f})"
                        if x.predicted_low_us is not None and x.predicted_high_us is not None else "")
            label = escape(x.scenario) + ("" if x.role == "candidate" else f" [dim]({x.role})[/]")
            if x.scenario == b.winner:
                label = f"[bold]{label}[/] (winner)"
            t.add_row(label, str(x.rank or "-"), f"{x.predicted_us:.1f}{interval}", f"{x.median_us:.1f}",
                      f"{x.p20_us:.1f}-{x.p80_us:.1f}", _versus(x.vs_serial), _versus(x.vs_best_shipped),
                      "yes" if x.equal_to_serial else "[bold red]NO[/]")
        console.print(t)
        if b.winner is None:
            console.print(f"batch {b.batch}: no candidate's outputs equal serial's: no winner written", markup=False)
