"""Runs with a real all-reduce, as tables: one run's all-reduce nodes on every rank, an
all-reduce sweep, and one summary of every such result in a folder (`streamlab allreduce-summary`):
per scenario, batch and all-reduce, the per-layer latency (slowest rank's median), the all-reduce
per call inside the graph and alone in a graph (median over ranks of each rank's median, both
nodes), their ratio, bubble and streams; sweeps' time and busbw per size and implementation."""

from __future__ import annotations

import statistics
from pathlib import Path

from rich.console import Console
from rich.table import Table

from streamlab.errors import Failure
from streamlab.results import AllReduceSweep, RunResult, load_any

__all__ = ["print_ranks", "print_summary", "print_sweep"]


def _f(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _human(n: int) -> str:
    for unit, scale in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{unit}"
    return str(n)


def print_ranks(console: Console, r: RunResult) -> None:
    """Every rank's per-layer latency and all-reduce per call, and each all-reduce node's
    nccl-tests columns on each rank."""
    ranks = r.ranks
    kind = "measured" if r.measured else "simulated"
    backend = ranks.allreduce.get("backend")
    lat = ", ".join(f"r{f.rank} {f.latency.median:.1f}" for f in ranks.figures)
    console.print(f"per-layer latency per rank ({kind}): {lat} us")
    ar = ", ".join(f"r{f.rank} {f.allreduce_per_call_us.median:.1f}" for f in ranks.figures
                   if f.allreduce_per_call_us)
    if ar:
        console.print(f"all-reduce per call per rank ({backend}): {ar} us")
    table = Table(title=f"all-reduce nodes over {ranks.world} ranks ({backend}, {kind}); busbw = algbw x 2(n-1)/n",
                  title_justify="left")
    for col in ("node", "bytes", "rank", "in-graph us", "p20-p80", "isolated us", "slowdown",
                "algbw GB/s", "busbw GB/s", "iso busbw"):
        table.add_column(col, justify="left" if col == "node" else "right")
    for name in ranks.figures[0].allreduce_nodes:
        for f in ranks.figures:
            n = f.allreduce_nodes[name]
            g = n.in_graph_us
            table.add_row(name, str(n.bytes), str(f.rank), _f(g.median if g else None),
                          f"{g.p20:.1f}-{g.p80:.1f}" if g else "-", _f(n.isolated_us), _f(n.slowdown),
                          _f(n.algbw_gbs, 1), _f(n.busbw_gbs, 1), _f(n.isolated_busbw_gbs, 1))
    console.print(table)


def print_sweep(console: Console, s: AllReduceSweep) -> None:
    table = Table(title=f"all-reduce alone in a graph, {s.world} ranks, {s.device} "
                        f"(busbw = algbw x 2(n-1)/n)", title_justify="left")
    for col in ("size", "count", "type", "impl", "time us", "p20-p80 r0", "algbw GB/s",
                "busbw GB/s", "per rank us", "ok"):
        table.add_column(col, justify="left" if col in ("impl", "type") else "right")
    for r in sorted(s.rows, key=lambda r: (r.bytes, r.impl)):
        table.add_row(_human(r.bytes), str(r.count), r.dtype, r.backend, f"{r.time_us:.2f}",
                      f"{r.p20_us:.1f}-{r.p80_us:.1f}", f"{r.algbw_gbs:.2f}", f"{r.busbw_gbs:.2f}",
                      " ".join(f"{v:.1f}" for v in r.per_rank_us), "yes" if r.correct else "[red]NO[/]")
    console.print(table)
    console.print(f"[dim]{s.method}[/]")


def _load(folder: Path) -> tuple[list[RunResult], list[AllReduceSweep]]:
    """The multi-rank runs and the sweeps among the result files under `folder`."""
    runs, sweeps = [], []
    for p in sorted(folder.rglob("*.json")):
        try:
            got = load_any(p)
        except Failure:
            continue  # not a result file
        if isinstance(got, AllReduceSweep):
            sweeps.append(got)
        elif isinstance(got, RunResult) and got.ranks is not None:
            runs.append(got)
    return runs, sweeps


def _med(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


ORDER = {"serial": 0, "pr23562": 1, "a_v4": 2, "a_v4_moe_dual": 3}


def print_summary(console: Console, folder: Path) -> int:
    """The tables; how many results they show."""
    runs, sweeps = _load(folder)
    f = lambda v, p=1: "-" if v is None else f"{v:.{p}f}"
    for s in sweeps:
        impls = sorted({r.backend for r in s.rows})
        t = Table(title=f"all-reduce alone in a graph: {s.world} x {s.device}"
                        + ("" if s.complete else " [red](INCOMPLETE: stopped early)[/]"), title_justify="left")
        t.add_column("bytes", justify="right")
        for i in impls:
            t.add_column(f"{i} us", justify="right")
            t.add_column(f"{i} busbw", justify="right")
        by: dict[int, dict] = {}
        for r in s.rows:
            by.setdefault(r.bytes, {})[r.backend] = r
        for size in sorted(by):
            cells = [str(size)]
            for i in impls:
                r = by[size].get(i)
                cells += [("WRONG " if r is not None and not r.correct else "") + f(r and r.time_us, 2),
                          f(r and r.busbw_gbs)]
            t.add_row(*cells)
        console.print(t)
    runs.sort(key=lambda r: (r.batch, ORDER.get(r.scenario, 9), r.scenario, r.ranks.allreduce.get("backend", "")))
    if runs:
        t = Table(title="layer runs with a real all-reduce (per-layer: slowest rank; AR: median over "
                        "ranks and both AR nodes)", title_justify="left")
        for col in ("scenario", "batch", "ctx", "AR impl", "ranks", "per-layer us", "spread %",
                    "AR in-graph us", "AR alone us", "in-graph/alone", "AR busbw", "bubble us",
                    "streams", "= serial"):
            t.add_column(col, justify="left" if col in ("scenario", "AR impl") else "right")
        for r in runs:
            per_rank = [n for fig in r.ranks.figures for n in fig.allreduce_nodes.values()]
            ig = _med(n.in_graph_us.median if n.in_graph_us else None for n in per_rank)
            iso = _med(n.isolated_us for n in per_rank)
            t.add_row(r.scenario, str(r.batch), str(r.shape.context), r.ranks.allreduce.get("backend", "?"),
                      str(r.ranks.world), f(max(fig.latency.median for fig in r.ranks.figures)),
                      f(100 * r.latency.repeat_spread, 2), f(ig, 2), f(iso, 2),
                      f(ig / iso if ig and iso else None, 2), f(_med(n.busbw_gbs for n in per_rank)),
                      f(r.anatomy.bubble_us.median), str(r.anatomy.physical_streams),
                      "yes" if r.equal_to_serial else "[red]NO[/]")
        console.print(t)
    return len(runs) + len(sweeps)
