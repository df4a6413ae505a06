"""Several layouts side by side (a `results.CompareResult`): rich tables, Markdown, plots, and the
report folder written atomically (report.json, report.md, PNG and SVG plots).

Simulated runs are shown as predictions: their interval where a measurement has p20-p80, and none
of the rows only replays give (repeat spread, drift). Runs that cannot be judged against the
first of their batch (another model, shape, device or versions: check.incomparable) are said to
be so (`not_comparable`), in the terminal and in the Markdown."""

from __future__ import annotations

import io
from pathlib import Path

from rich.table import Table

from streamlab.check import attribute, incomparable
from streamlab.io import write_atomic
from streamlab.layer import build_layer
from streamlab.models import MODELS, RankDims
from streamlab.report.numbers import duration, ratio
from streamlab.results import CompareResult, RunResult, dump

__all__ = ["export", "layer_table", "markdown", "node_table", "not_comparable"]


def _fmt(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _spread(r: RunResult) -> str:
    """p20 - p80 of a measurement, the interval of a prediction (or nothing without one)."""
    if r.measured:
        return f"{r.latency.p20:.1f} - {r.latency.p80:.1f}"
    return f"{r.prediction.low_us:.1f} - {r.prediction.high_us:.1f}" if r.prediction else "-"


def _split(r: RunResult, cls: str) -> float:
    """The bubble's class as the median layer has it (so the classes add up), else its median."""
    split = r.anatomy.bubble_split_us
    return split[cls] if split else r.anatomy.bubble_by_class_us[cls].median


def not_comparable(runs: list[RunResult], batch: int) -> list[str]:
    """One line per run of `batch` that cannot be judged against the first (check.incomparable)."""
    here = [r for r in runs if r.batch == batch]
    return [f"batch {batch}: {r.scenario} is not comparable with {here[0].scenario}: {'; '.join(why)}"
            for r in here[1:] for why in [incomparable(here[0], r)] if why]


def layer_table(runs: list[RunResult], batch: int) -> Table:
    here = [r for r in runs if r.batch == batch]
    base = here[0]
    measured = any(r.measured for r in here)
    t = Table(title=f"batch {batch}: per layer ({base.source}"
                    + ("" if base.measured else ": predictions, not measurements") + ")", title_justify="left")
    t.add_column("")
    for r in here:
        t.add_column(r.scenario, justify="right")
    rows: list[tuple[str, list[str]]] = []

    def row(label, f):
        rows.append((label, [f(r) for r in here]))

    row("latency us (median)" if measured else "predicted latency us", lambda r: _fmt(r.latency.median))
    row("p20 - p80" if measured else "prediction interval", _spread)
    row("delta vs first", lambda r: f"{r.latency.median - base.latency.median:+.1f}")
    if measured:
        row("repeat spread", lambda r: f"{100 * r.latency.repeat_spread:.2f}%" if r.measured else "-")
        row("drift (blocks)", lambda r: f"{100 * r.latency.drift:.2f}%" if r.measured else "-")
    for cls in ("launch", "fence", "stall"):
        row(f"bubble {cls} us", lambda r, c=cls: _fmt(_split(r, c)))
    row("AR us per call", lambda r: _fmt(r.anatomy.allreduce_per_call_us.median
                                         if r.anatomy.allreduce_per_call_us else None))
    row("overlap factor", lambda r: _fmt(r.anatomy.overlap.median, 2))
    row("physical streams", lambda r: str(r.anatomy.physical_streams))
    row("outputs = serial", lambda r: "yes" if r.equal_to_serial else "[red]NO[/]")
    for label, cells in rows:
        t.add_row(label, *cells)
    return t


def node_table(runs: list[RunResult], batch: int) -> Table:
    here = [r for r in runs if r.batch == batch]
    t = Table(title=f"batch {batch}: per node, in-graph us (slowdown vs isolated)", title_justify="left")
    t.add_column("node")
    for r in here:
        t.add_column(r.scenario, justify="right")
    names = list(dict.fromkeys(n for r in here for n in r.nodes))
    for name in names:
        cells = []
        for r in here:
            n = r.nodes.get(name)
            if not n or not n.in_graph_us:
                cells.append("")
                continue
            mark = "red" if n.slowdown > 1.1 else "green" if n.slowdown < 0.95 else ""
            text = f"{n.in_graph_us.median:.1f} (x{n.slowdown:.2f})"
            cells.append(f"[{mark}]{text}[/]" if mark else text)
        t.add_row(name, *cells)
    return t


NOTES = ("bubble launch / fence / stall: the median layer's all-stream-idle time by gap class (< 1 us, "
         "1-2 us, >= 2 us), so the three add up to its bubble.\n\n"
         "latency / budget: per-layer median over (sum of node floors + 2 us per kernel); a node's floor "
         "is max(bytes / copy bandwidth, FLOPs / peak), and the emulated all-reduce's floor is its set "
         "time (it holds the stream that long by design); the last column counts only its bytes.\n\n"
         "spread: max - min of the medians of the interleaved repeats (replay i in repeat i mod "
         "repeats) over the timed window, over their median; drift: the same over the medians of "
         "consecutive blocks of replays (how much the layer's speed wandered during the window).\n")


def markdown(result: CompareResult) -> str:
    """Per batch the layouts side by side (the first is the baseline of `delta`), then each run's
    nodes."""
    out = io.StringIO()
    for batch in result.batches:
        here = result.at(batch)
        base = here[0].latency.median
        measured = any(r.measured for r in here)
        out.write(f"\n### batch {batch} ({here[0].source}"
                  + ("" if here[0].measured else ": predictions, not measurements") + ")\n\n")
        for line in not_comparable(list(result.runs), batch):
            out.write(f"**{line}**\n\n")
        out.write(f"| scenario | {'latency us | p20-p80' if measured else 'predicted us | interval'} | delta | "
                  + ("spread | drift | " if measured else "")
                  + "launch/fence/stall us | AR/call us | overlap | streams | = serial | latency / budget | "
                  "without AR set time |\n")
        out.write("|---" * (13 if measured else 11) + "|\n")
        for r in here:
            lat, a = r.latency, r.anatomy
            ar = a.allreduce_per_call_us
            noise = (f"{100 * lat.repeat_spread:.2f}% | {100 * lat.drift:.2f}% | " if r.measured
                     else "- | - | " if measured else "")
            out.write(f"| {r.scenario} | {lat.median:.1f} | {_spread(r).replace(' ', '')} | "
                      f"{lat.median - base:+.1f} | {noise}"
                      f"{_split(r, 'launch'):.1f}/{_split(r, 'fence'):.1f}/{_split(r, 'stall'):.1f} | "
                      f"{ar.median if ar else 0:.1f} | {a.overlap.median:.2f} | {a.physical_streams} | "
                      f"{'yes' if r.equal_to_serial else 'NO'} | {ratio(lat.median / r.budget.us)} | "
                      f"{ratio(lat.median / r.budget.roofline_us)} |\n")
    for f in result.failures:
        out.write(f"\n{f.scenario} batch {f.batch}: **failed**: {f.message}\n")
    return out.getvalue()


def node_markdown(r: RunResult) -> str:
    out = io.StringIO()
    out.write(f"\n### {r.scenario} batch {r.batch}: per node"
              + ("" if r.measured else " (predicted: simulated, not measured)") + "\n\n")
    out.write("| node | kernels | in-graph us | isolated us | slowdown | floor | isolated/floor |\n"
              "|---|---|---|---|---|---|---|\n")
    for name, n in r.nodes.items():
        g = n.in_graph_us.median if n.in_graph_us else float("nan")
        far = n.isolated_us / n.floor_us if n.floor_us else float("inf")
        out.write(f"| {name} | {n.kernels} | {g:.2f} | {n.isolated_us:.2f} | {ratio(n.slowdown)} | "
                  f"{duration(n.floor_us)} | {ratio(far)} |\n")
    return out.getvalue()


def _groups(r: RunResult) -> dict[str, list[str]]:
    """The run's layer groups (plot colours), rebuilt from its model, shape and variant."""
    model = MODELS.get(r.model)
    return build_layer(RankDims(model, r.shape), r.variant).groups if model else {}


def export(result: CompareResult, folder: Path, plot_batch: int | None = None) -> list[Path]:
    """report.json (a CompareResult) + report.md + plots (per-layer ones at `plot_batch`, default
    the smallest batch), each written atomically."""
    from streamlab.report import plots
    from streamlab.trace import read_chrome

    folder.mkdir(parents=True, exist_ok=True)
    written = [dump(result, folder / "report.json")]
    if not result.runs:
        written.append(write_atomic(folder / "report.md", "# streamlab compare\n" + markdown(result)))
        return written
    rows = [{"scenario": r.scenario, "batch": r.batch, "median": r.latency.median,
             "p20": r.prediction.low_us if r.prediction and not r.measured else r.latency.p20,
             "p80": r.prediction.high_us if r.prediction and not r.measured else r.latency.p80}
            for r in result.runs]
    written += plots.latency_bars(rows, folder / "latency",
                                  spread="median, p20-p80" if any(r.measured for r in result.runs)
                                  else "predicted, with its interval")
    first_batch = plot_batch if plot_batch is not None else min(result.batches)
    here = result.at(first_batch)
    timelines = [(r.scenario, read_chrome(r.trace), _groups(r)) for r in here
                 if r.trace and Path(r.trace).exists()]
    if timelines:
        written += plots.layer_timelines(timelines, 1, folder / f"timeline-b{first_batch}")
    for r in here[1:]:
        a = attribute(here[0], r)
        written += plots.waterfall(here[0].scenario, r.scenario, a.parts(), a.total,
                                   folder / f"waterfall-{r.scenario}-b{first_batch}")
        written += plots.slowdown_bars(r.nodes, f"{r.scenario}, batch {first_batch}",
                                       folder / f"slowdown-{r.scenario}-b{first_batch}")
    md = f"# streamlab compare\n\nsource: {here[0].source}\n" + markdown(result)
    md += "".join(f"\n![{p.stem}]({p.name})\n" for p in written if p.suffix == ".png")
    md += "\n" + NOTES + "".join(node_markdown(r) for r in result.runs)
    written.append(write_atomic(folder / "report.md", md))
    return written
