"""A search result shown: rich tables, its result file (`ranking`: a results.SearchRanking), and the compare report of each batch's
winner beside the best shipped layout and serial (the same tables and plots as `compare`)."""

from __future__ import annotations

import math
from dataclasses import asdict, fields
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from streamlab.layer import Variant
from streamlab.results import (
    BatchRanking,
    PlacedLayout,
    RankedLayout,
    SearchLayout,
    SearchLimits,
    SearchProfile,
    SearchRanking,
    SearchRequest,
    SearchTally,
    SkippedVariant,
    SmBudgetPass,
)
from streamlab.search.find import (
    BatchOutcome,
    Ranked,
    Request,
    SearchResult,
    shipped_scenarios,
)
from streamlab.search.layout import STREAM_NAMES


def variant_label(v: Variant) -> str:
    """The flags that differ from the default variant, or "default"."""
    base = Variant()
    diff = [f"{f.name}={str(getattr(v, f.name)).lower()}" for f in fields(Variant) if getattr(v, f.name) != getattr(base, f.name)]
    return ",".join(diff) or "default"


def print_result(console: Console, result: SearchResult) -> None:
    req = result.request
    if result.warning:
        console.print(f"[yellow]warning:[/] {escape(result.warning)}")
    for v, why in result.skipped:
        console.print(f"variant {variant_label(v)} not searched: {why}", markup=False)
    for o in result.batches:
        console.print(_table(result, o))
        if any(r.candidate.predicted.unmeasured for r in o.top):
            console.print("overlaps the profile has not measured: on the GPU, `streamlab search --measure` (or "
                          "`streamlab calibrate --measure --for` a written layout) measures them and ranks again",
                          markup=False)
        best = o.best_shipped()
        t = o.tally
        console.print(f"space: {o.programs:.2e} programs on <= {req.limits.streams} streams; searched "
                      + (f"{t.classes:,} equivalence classes ({t.pruned:,} dominated, P2), {t.considered:,} "
                         f"considered (one per class the profile tells apart, region by region)" if t.complete else
                         f"{t.classes:,} classes reached ({t.cut:,} subtrees cut by their bound)")
                      + f"; {t.simulated:,} simulated, {t.bounded:,} left out by their bound"
                      + (f", {t.unvisited:,} left when the --budget ran out" if t.unvisited else ""), markup=False)
        gap = ("the top layouts are exact within the space" if not t.stopped and t.complete else
               f"gap to the bound: {o.gap_us:.1f} us (nothing unsimulated predicts below {t.floor:.1f} us)")
        console.print(f"{gap}; regions add up within {t.combine_error_us:.2f} us", markup=False)
        if o.budget is not None:
            b = o.budget
            console.print(f"SM budgets: shares {', '.join(f'{f:.2g}' for f in b.shares)} of {b.units} SMs / CUs "
                          f"on the overlapped pairs of the top {b.layouts} plain layouts: {b.tried} budgeted "
                          "layouts simulated, ranked above (modelled from the Triton grids, not measured)",
                          markup=False)
        rate = t.simulated / t.wall_s if t.wall_s else 0.0
        per = 1e3 * t.engine_s / t.simulated if t.simulated else 0.0
        core = f", {1e3 / per:,.0f} layouts a second per core" if per else ""
        console.print(f"time: enumeration {t.enumerate_s:.1f} s, bounds {t.bound_s:.1f} s, simulator {t.engine_s:.1f} "
                      f"CPU s ({per:.2f} ms a layout{core}), search {t.wall_s:.1f} s: {rate:.0f} layouts simulated "
                      f"per second on {req.workers} worker(s)", markup=False)
        shipped = Table(title=f"batch {o.batch}: shipped layouts in the space", title_justify="left")
        for col in ("scenario", "predicted us", "vs serial", "where"):
            shipped.add_column(col, justify="right" if "us" in col or "vs" in col else "left")
        serial_us = o.serial.candidate.predicted.us
        for s in o.shipped:
            shipped.add_row(s.name + (" (best)" if s is best else ""),
                            f"{s.predicted.us:.1f}" if s.predicted else "-",
                            f"{s.predicted.us - serial_us:+.1f}" if s.predicted else "-", s.where)
        console.print(shipped)


def _table(result: SearchResult, o: BatchOutcome) -> Table:
    p = result.profile
    t = Table(title=f"batch {o.batch}: top {len(o.top)} of {o.tally.simulated:,} simulated on profile {p.name} "
                    f"({p.streams} lanes): predictions, not measurements", title_justify="left")
    for col in ("rank", "us", "interval", "vs serial", "bound", "layout (variant) / why"):
        t.add_column(col, justify="left" if col.startswith("layout") else "right", overflow="fold")
    serial_us = o.serial.candidate.predicted.us
    for r in o.top:
        t.add_row(*_row(r, serial_us))
    t.add_row(*_row(o.serial, serial_us, "serial"))
    best = o.best_shipped()
    if best is not None:
        why = best.explanation.line if best.explanation else ""
        t.add_row(f"{best.candidate or '-'}", f"{best.predicted.us:.1f}", "-", f"{best.predicted.us - serial_us:+.1f}",
                  "", f"best shipped: {best.name}\n[dim]{why}[/dim]")
    return t


def _row(r: Ranked, serial_us: float, name: str | None = None) -> tuple[str, ...]:
    c = r.candidate
    interval = f"{c.predicted.low:.1f}-{c.predicted.high:.1f}" if c.predicted.low is not None else "-"
    variant = variant_label(c.layout.variant)
    text = escape(name or c.name) + ("" if variant == "default" else f" ({variant})")
    if r.explanation:
        text += f"\n[dim]{escape(r.explanation.line)}[/dim]"
    missing = c.predicted.unmeasured
    if missing:
        shown = ", ".join(f"{a} || {b}" for a, b in missing[:3]) + (", ..." if len(missing) > 3 else "")
        text += f"\n[dim]rests on {len(missing)} overlap(s) the profile has not measured: {escape(shown)}[/dim]"
    return (str(r.rank or "-"), f"{c.predicted.us:.1f}", interval, f"{c.predicted.us - serial_us:+.1f}",
            f"{c.bound:.1f}", text)


def ranking(result: SearchResult, written: list[Path]) -> SearchRanking:
    """The search as its result file (`search --json`, kind "search"): the one place a search
    becomes a `results.SearchRanking`."""
    req, p = result.request, result.profile
    names = {v: vs_names(result, v) for v in result.variants}
    return SearchRanking(
        source=f"simulated, profile {p.name}",
        request=SearchRequest(model=req.model, shape=req.shape, batches=req.batches,
                              limits=SearchLimits(**asdict(req.limits)), layers=req.layers, top=req.top,
                              budget_s=req.budget_s, sm_budgets=req.budgets, variant=req.variant),
        profile=SearchProfile(name=p.name, given=req.profile, streams=p.streams, node_source=p.node_source,
                              pairs_measured=len(p.pair_excess), pair_source=p.pair_source),
        warning=result.warning, variants=result.variants,
        skipped=tuple(SkippedVariant(v, why) for v, why in result.skipped),
        batches=tuple(_batch(o, names) for o in result.batches), written=tuple(str(w) for w in written))


def _batch(o: BatchOutcome, names: dict[Variant, tuple[str, ...]]) -> BatchRanking:
    serial_us = o.serial.candidate.predicted.us
    best = o.best_shipped()
    t = o.tally
    tally = SearchTally(**{k: v for k, v in asdict(t).items() if k != "floor"},
                        floor_us=t.floor if math.isfinite(t.floor) else None)
    b = o.budget
    return BatchRanking(
        batch=o.batch, programs=o.programs, gap_us=o.gap_us, tally=tally,
        top=tuple(_ranked(r, names, serial_us) for r in o.top), serial=_ranked(o.serial, names, serial_us),
        best_shipped=None if best is None else best.name,
        shipped=tuple(PlacedLayout(scenario=s.name, path=s.path,
                                   predicted_us=s.predicted.us if s.predicted else None,
                                   vs_serial_us=s.predicted.us - serial_us if s.predicted else None,
                                   where=s.where, candidate=s.candidate, serial=s.serial) for s in o.shipped),
        sm_budgets=None if b is None else SmBudgetPass(
            source="modelled from the Triton grids (sim/costs.py BudgetCosts), not measured",
            shares=b.shares, units=b.units, tried=b.tried, layouts=b.layouts))


def _ranked(r: Ranked, names: dict[Variant, tuple[str, ...]], serial_us: float) -> RankedLayout:
    c = r.candidate
    lay = c.layout
    n = names[lay.variant]
    streams: dict[str, tuple[str, ...]] = {}
    for i, s in enumerate(lay.streams):
        streams[STREAM_NAMES[s]] = (*streams.get(STREAM_NAMES[s], ()), n[i])
    return RankedLayout(
        rank=r.rank, name=c.name, predicted_us=c.predicted.us,
        interval_us=None if c.predicted.low is None else (c.predicted.low, c.predicted.high),
        vs_serial_us=c.predicted.us - serial_us, unmeasured_pairs=c.predicted.unmeasured, bound_us=c.bound,
        layout=SearchLayout(variant=lay.variant, streams=streams, order=tuple(n[i] for i in lay.order),
                            barriers_before=tuple(n[i] for i in lay.barriers),
                            sms={n[v]: dict(kv)["sms"] for v, kv in lay.options if "sms" in dict(kv)}),
        may_overlap=r.may_overlap,
        explanation=r.explanation)


def vs_names(result: SearchResult, v: Variant) -> tuple[str, ...]:
    from streamlab.search.predict import layer_at
    return tuple(layer_at(result.request.model, result.request.shape, v).names)


def report_folder(req: Request, profile: str, batch: int, out: Path) -> Path:
    """Where `write_report` writes the report of one batch."""
    return out / f"report-{req.model}-{profile}-b{batch}"


def write_report(result: SearchResult, winners: list[Path], out: Path, console: Console, *,
                 force: bool = False) -> list[Path]:
    """Per batch: the winner, the best shipped layout and serial through `compare`'s runs (outputs
    checked against serial with the reference kernels, then simulated on the same profile) and its
    export: the same tables and plots, in out/report-<model>-<profile>-b<batch>/."""
    from streamlab.report.compare import export
    from streamlab.scenario import load
    from streamlab.session.compare import collect

    req = result.request
    serial = next((p for p in shipped_scenarios(req.shipped) if p.stem == "serial"), None)
    written: list[Path] = []
    for o, winner in zip(result.batches, winners):
        paths = [winner]
        best = o.best_shipped()
        if best is not None:
            paths.append(Path(best.path))
        if serial is not None:
            paths.append(serial)
        scens = [load(p).override(model=req.model, **{k: v for k, v in vars(req.shape).items() if k != "batch"})
                 for p in paths]
        folder = report_folder(req, result.profile.name, o.batch, out)
        compared = collect(scens, [o.batch], console, backend=None, device="cpu", layers=req.layers,
                           out=folder / "runs", profile=req.profile, report=folder / "report.json", force=force)
        written += [p for p in export(compared, folder) if p.name == "report.md"]
    return written
