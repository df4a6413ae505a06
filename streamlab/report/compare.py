"""Several layouts side by side: run each (measured on a GPU, simulated otherwise), tabulate,
plot, and export JSON + Markdown atomically into one folder."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from streamlab.check import _part, attribute
from streamlab.io import write_atomic, write_json_atomic
from streamlab.scenario import Scenario

SCHEMA_VERSION = 1


@dataclass
class Run:
    scenario: Scenario
    batch: int
    result: dict

    @property
    def part(self) -> dict:
        return _part(self.result)


def collect(scenarios: list[Scenario], batches: list[int], console: Console, **run_options) -> list[Run]:
    from streamlab.exec.fresh import run_apart

    runs = []
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("running", total=len(scenarios) * len(batches))
        for batch in batches:
            for scen in scenarios:
                progress.update(task, description=f"{scen.name} batch {batch}")
                at = scen.override(batch=batch)
                runs.append(Run(at, batch, run_apart(at, **run_options)))
                progress.advance(task)
    return runs


def _fmt(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def layer_table(runs: list[Run], batch: int) -> Table:
    here = [r for r in runs if r.batch == batch]
    base = here[0]
    t = Table(title=f"batch {batch}: per layer ({base.part['source']})", title_justify="left")
    t.add_column("")
    for r in here:
        t.add_column(r.scenario.name, justify="right")
    rows: list[tuple[str, list[str]]] = []

    def row(label, f):
        rows.append((label, [f(r) for r in here]))

    row("latency us (median)", lambda r: _fmt(r.part["per_layer_us"]["median"]))
    row("p20 - p80", lambda r: f"{r.part['per_layer_us']['p20']:.1f} - {r.part['per_layer_us']['p80']:.1f}")
    row("delta vs first", lambda r: f"{r.part['per_layer_us']['median'] - base.part['per_layer_us']['median']:+.1f}")
    row("repeat spread", lambda r: f"{100 * r.part['repeat_spread']:.2f}%")
    row("drift (blocks)", lambda r: f"{100 * r.part.get('drift', 0.0):.2f}%")
    for cls in ("launch", "fence", "stall"):
        row(f"bubble {cls} us", lambda r, c=cls: _fmt(r.part["profile"]["bubble_by_class_us"][c]["median"]))
    row("AR us per call", lambda r: _fmt((r.part["profile"]["allreduce_per_call_us"] or {}).get("median")))
    row("overlap factor", lambda r: _fmt(r.part["profile"]["overlap"]["median"], 2))
    row("physical streams", lambda r: str(r.part["profile"]["physical_streams"]))
    row("outputs = serial", lambda r: "yes" if r.result["equal_to_serial"] else "[red]NO[/]")
    for label, cells in rows:
        t.add_row(label, *cells)
    return t


def node_table(runs: list[Run], batch: int) -> Table:
    here = [r for r in runs if r.batch == batch]
    t = Table(title=f"batch {batch}: per node, in-graph us (slowdown vs isolated)", title_justify="left")
    t.add_column("node")
    for r in here:
        t.add_column(r.scenario.name, justify="right")
    names = list(dict.fromkeys(n for r in here for n in r.part["nodes"]))
    for name in names:
        cells = []
        for r in here:
            n = r.part["nodes"].get(name)
            if not n or not n["in_graph_us"]:
                cells.append("")
                continue
            slow = n["slowdown"]
            mark = "red" if slow > 1.1 else "green" if slow < 0.95 else ""
            text = f"{n['in_graph_us']['median']:.1f} (x{slow:.2f})"
            cells.append(f"[{mark}]{text}[/]" if mark else text)
        t.add_row(name, *cells)
    return t


def markdown(runs: list[Run]) -> str:
    out = io.StringIO()
    for batch in sorted({r.batch for r in runs}):
        here = [r for r in runs if r.batch == batch]
        base = here[0].part["per_layer_us"]["median"]
        out.write(f"\n### batch {batch} ({here[0].part['source']})\n\n")
        out.write("| scenario | latency us | p20-p80 | delta | spread | launch/fence/stall us | AR/call us | overlap | streams |\n")
        out.write("|---|---|---|---|---|---|---|---|---|\n")
        for r in here:
            p, b = r.part, r.part["profile"]["bubble_by_class_us"]
            ar = r.part["profile"]["allreduce_per_call_us"]
            out.write(f"| {r.scenario.name} | {p['per_layer_us']['median']:.1f} | "
                      f"{p['per_layer_us']['p20']:.1f}-{p['per_layer_us']['p80']:.1f} | "
                      f"{p['per_layer_us']['median'] - base:+.1f} | {100 * p['repeat_spread']:.2f}% | "
                      f"{b['launch']['median']:.1f}/{b['fence']['median']:.1f}/{b['stall']['median']:.1f} | "
                      f"{ar['median'] if ar else 0:.1f} | {p['profile']['overlap']['median']:.2f} | "
                      f"{p['profile']['physical_streams']} |\n")
    return out.getvalue()


def export(runs: list[Run], folder: Path, plot_batch: int | None = None) -> list[Path]:
    """JSON (versioned schema) + Markdown + plots (per-layer ones at `plot_batch`, default the
    smallest batch), each written atomically."""
    from streamlab.report import plots
    from streamlab.trace import read_chrome

    folder.mkdir(parents=True, exist_ok=True)
    doc = {"schema": SCHEMA_VERSION, "runs": [
        {"scenario": r.scenario.name, "batch": r.batch, **r.result} for r in runs]}
    written = [write_json_atomic(folder / "report.json", doc)]
    rows = [{"scenario": r.scenario.name, "batch": r.batch, **r.part["per_layer_us"]} for r in runs]
    written += plots.latency_bars(rows, folder / "latency")
    first_batch = plot_batch if plot_batch is not None else min(r.batch for r in runs)
    here = [r for r in runs if r.batch == first_batch]
    timelines = [(r.scenario.name, read_chrome(r.part["trace"]), r.scenario.layer.groups) for r in here
                 if r.part.get("trace")]
    if timelines:
        written += plots.layer_timelines(timelines, 1, folder / f"timeline-b{first_batch}")
    for r in here[1:]:
        a = attribute(here[0].result, r.result)
        written += plots.waterfall(here[0].scenario.name, r.scenario.name, a.parts(), a.total,
                                   folder / f"waterfall-{r.scenario.name}-b{first_batch}")
        written += plots.slowdown_bars(r.part["nodes"], f"{r.scenario.name}, batch {first_batch}",
                                       folder / f"slowdown-{r.scenario.name}-b{first_batch}")
    md = f"# streamlab compare\n\nsource: {here[0].part['source']}\n" + markdown(runs)
    md += "".join(f"\n![{p.stem}]({p.name})\n" for p in written if p.suffix == ".png")
    written.append(write_atomic(folder / "report.md", md))
    return written
