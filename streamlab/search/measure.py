"""`streamlab search --measure`: the search's top layouts proved on the GPU.

1. Pairs: the overlaps the top K of each batch create that the profile lacks are measured and
   added by calibrate's pairs on demand (`calibration.run.pairs_for`), and the space is searched
   again on the extended profile; again for layouts that search brings into the top K, at most
   `RERANKS` times. The extended profile is written under --out.
2. Runs: the top K of each batch after the last search, serial and the best shipped layout (by
   prediction), each measured as `streamlab run` measures it (outputs checked bitwise against
   serial's, then the repeat protocol of its `measure:`, at the search's --layers per graph) in a
   process of its own
   (`collective.layout_runs.measure_layout`: `session.fresh.run_apart`), `rounds` times,
   interleaved: a round measures every layout of every batch once, serial first. With G GPUs, G
   rounds run side by side, one process per GPU started through torch's elastic launcher
   (`collective.launch.launch_layouts`), so a layout is always compared with serial measured on
   the same GPU in the same round.
3. Per batch: each layout's median over the rounds, and its difference to serial and to the best
   shipped layout per round, against the noise band `check` judges by (`check.band_us`): beyond
   the noise when the median difference leaves the widest band and every round is on its side.
   The winner is the measured fastest candidate whose outputs equal serial's; its scenario file's
   comment block gets the measured numbers; a compare report draws the runs.

Every launch is a stage of a work folder (calibration.workdir, calibration.run.run_stage): an
interruption keeps what was measured and `--resume` continues; the pairs stages keep theirs in
their own work folders the same way.
"""

from __future__ import annotations

import hashlib
import statistics
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import torch
from rich.console import Console

from streamlab.calibration.device import DeviceFacts
from streamlab.calibration.pairbench import PairsJob
from streamlab.calibration.plan import FIRST_RUN_S, RUN_S
from streamlab.calibration.progress import StageProgress
from streamlab.calibration.run import PairsFor, pairs_for, resume_hint, run_stage
from streamlab.calibration.runner import DeviceRunner
from streamlab.calibration.workdir import WorkFolder, WorkKey
from streamlab.check import band_us
from streamlab.collective.launch import launch_layouts
from streamlab.collective.layout_runs import LayoutRun, measure_layout, write_jobs
from streamlab.errors import EXIT_BAD_INPUT, EXIT_ENVIRONMENT, Failure
from streamlab.io import claim, write_atomic
from streamlab.results import (
    BatchMeasurement,
    CompareResult,
    MeasuredLayout,
    RunResult,
    SearchMeasurement,
    Versus,
    dump,
    load,
)
from streamlab.scenario import Scenario
from streamlab.scenario import load as load_scenario
from streamlab.search.find import (
    BatchOutcome,
    Ranked,
    Request,
    SearchResult,
    shipped_scenarios,
)
from streamlab.search.predict import Predicted
from streamlab.search.report import report_folder
from streamlab.search.write import (
    claim_winners,
    file_name,
    scenario_text,
    top_scenarios,
)
from streamlab.sim.profile_file import load_profile, profile_path
from streamlab.sim.provenance import CalibrationShape, kernel_hash

__all__ = ["RERANKS", "Ask", "GpuRunner", "Proof", "Runner", "claim_measured", "claim_work", "prove", "require_gpu"]

RERANKS = 2  # searches after the first, each on the profile with the pairs its top K lacked


class Runner(Protocol):
    """What measures (GpuRunner on this machine's GPUs; a stand-in in the CPU tests). `facts` and
    `pairs` are calibrate's (calibration.run.Runner); `runs` measures one layout run per GPU."""

    world: int
    gpus: int

    def facts(self) -> DeviceFacts: ...

    def pairs(self, job: PairsJob, out: Path) -> Path: ...

    def runs(self, runs: list[LayoutRun], backend: str) -> list[Path]: ...


def require_gpu() -> None:
    """One Failure (EXIT_ENVIRONMENT) before any work where torch sees no GPU; no GPU context."""
    if not torch.cuda.is_available():
        built = "HIP" if torch.version.hip else "CUDA" if torch.version.cuda else "CPU only"
        raise Failure(f"search --measure measures layouts on a GPU, and torch sees none (torch {torch.__version__}, "
                      f"built for {built}); without --measure the search ranks on the simulator alone",
                      EXIT_ENVIRONMENT)


def claim_work(work: Path, *, resume: bool) -> Path:
    """The --measure work folder: one that holds a measurement is refused (EXIT_BAD_INPUT) unless
    `resume` (nothing measured is overwritten unasked), one that is a file always."""
    if work.exists() and not work.is_dir():
        raise Failure(f"--work {work} is a file, not a folder", EXIT_BAD_INPUT)
    if not resume and work.exists() and any(work.iterdir()):
        raise Failure(f"{work} holds a measurement started before: add --resume to continue it, or remove the "
                      "folder (or pass another --work) to start over", EXIT_BAD_INPUT)
    return work


def claim_measured(req: Request, profile: str, out: Path, *, force: bool, resume: bool) -> list[Path]:
    """The files `prove` writes under `out` for `req` on the profile named `profile` (the extended
    profile keeps its name), refused before the search when they exist, unless `force`. The
    extended profile's copy is written before the runs, so a resumed measurement may find it."""
    files = claim_winners(req, profile, out, force=force)
    files += [claim(report_folder(req, profile, b, out) / "report.md", force=force, what="search report")
              for b in req.batches]
    files.append(claim(out / f"search-measure-{req.model}-{profile}.json", force=force, what="search measurement"))
    if not resume:
        files.append(claim(out / f"profile-{profile}-search.yaml", force=force, what="extended profile"))
    return files


class GpuRunner(DeviceRunner):
    """calibrate's DeviceRunner (the GPU's facts, the pairs stage) plus layout runs: one in a
    fresh process, several at once one process per GPU through the elastic launcher."""

    def __init__(self, *, backend: str | None = None, gpus: int | None = None) -> None:
        super().__init__(backend=backend)
        require_gpu()
        visible = torch.cuda.device_count()
        if gpus is not None and not 1 <= gpus <= visible:
            raise Failure(f"--gpus {gpus}: 1 to the {visible} GPU(s) torch sees", EXIT_BAD_INPUT)
        self.gpus = gpus or visible
        self._facts: DeviceFacts | None = None

    def facts(self) -> DeviceFacts:
        if self._facts is None:  # a process of its own each time: ask once
            self._facts = super().facts()
        return self._facts

    def runs(self, runs: list[LayoutRun], backend: str) -> list[Path]:
        if len(runs) == 1:
            return measure_layout(runs[0], backend, fresh=True)
        jobs = write_jobs(Path(runs[0].folder).parent / (Path(runs[0].folder).name + ".jobs.json"), runs, backend)
        launch_layouts(jobs, len(runs))
        return [f for r in runs for f in sorted(Path(r.folder).iterdir())]


@dataclass(frozen=True)
class Ask:
    """What --measure was asked: K, rounds, where to write, the command line (for the provenance
    and the resume hint), and the layouts a pairs stage may build its layer from (scenarios/)."""

    top: int
    rounds: int
    out: Path
    work: Path
    command: str
    resume: bool = False
    layouts: tuple[Scenario, ...] = ()


@dataclass(frozen=True)
class Entry:
    """A layout measured at one batch."""

    role: str  # candidate | best shipped | serial
    name: str
    path: Path
    rank: int | None
    predicted: Predicted
    ranked: Ranked | None = None  # a candidate's place in the search


@dataclass(frozen=True)
class Proof:
    result: SearchResult  # the last search (on the profile with the pairs measured)
    measurement: SearchMeasurement
    written: list[Path]

    @property
    def differ(self) -> list[str]:
        """Layouts whose outputs were not bitwise equal to serial's."""
        return [f"{m.scenario} (batch {b.batch})" for b in self.measurement.batches for m in b.layouts
                if not m.equal_to_serial]


def prove(req: Request, result: SearchResult, ask: Ask, runner: Runner, console: Console,
          search: Callable[[Request], SearchResult]) -> Proof:
    """Measure the pairs, search again, measure the top K against serial and the best shipped
    layout, write the winners, the report and the measurement (module docstring)."""
    if ask.top < 1 or ask.rounds < 1:
        raise Failure(f"--top {ask.top} and --rounds {ask.rounds}: 1 or more each", EXIT_BAD_INPUT)
    claim_work(ask.work, resume=ask.resume)
    serial = next((p for p in shipped_scenarios(req.shipped) if p.stem == "serial"), None)
    if serial is None:
        raise Failure(f"--shipped {req.shipped}: no serial.yaml; --measure measures every layout beside it",
                      EXIT_BAD_INPUT)
    result, ranked_on, added, reranks = _extend(req, result, ask, runner, console, search)
    facts = runner.facts()
    plan = {o.batch: _entries(result, o, ask, serial) for o in result.batches}
    runs = _measure(req, plan, ask, runner, facts, ranked_on, console)
    batches, written = [], [ranked_on]
    for o in result.batches:
        b, files = _conclude(result, o, plan[o.batch], runs, ask, facts)
        batches.append(b)
        written += files
    m = SearchMeasurement(req.model, req.shape, facts.name, facts.backend, req.profile, str(ranked_on),
                          tuple(added), reranks, ask.top, ask.rounds, runner.gpus, ask.command, tuple(batches))
    written.append(dump(m, ask.out / f"search-measure-{req.model}-{result.profile.name}.json"))
    return Proof(result, m, written)


# --- 1. the pairs the top K lack, and the search again ------------------------------------------

def _extend(req: Request, result: SearchResult, ask: Ask, runner: Runner, console: Console,
            search: Callable[[Request], SearchResult]) -> tuple[SearchResult, Path, list[str], int]:
    """Pairs for the top K, then the search on the extended profile, until the top K lack none or
    RERANKS searches were made. The profile ranked on last, written under --out."""
    profile, added, reranks = req.profile, [], 0
    for k in range(1, RERANKS + 1):
        found = [f for o in result.batches
                 for f in top_scenarios(result, o.batch, ask.work / f"candidates-{k}", ask.top, command=ask.command)]
        extended = ask.work / f"profile-{k}.yaml"
        if extended.exists():  # written whole at the end of pairs_for: measured before, kept
            console.print(f"pairs for the top {ask.top}, round {k}: measured before, kept ({extended})")
        elif pairs_for(PairsFor(profile, tuple(load_scenario(f.path) for f in found), extended,
                                ask.work / f"pairs-{k}", ask.command, batches=req.batches, resume=ask.resume,
                                layouts=ask.layouts), runner, console) is None:
            break
        added += load_profile(str(extended)).provenance.added[-1].pairs
        profile = str(extended)
        result = search(replace(req, profile=profile))
        reranks += 1
    text = profile_path(profile).read_text()
    return result, write_atomic(ask.out / f"profile-{result.profile.name}-search.yaml", text), added, reranks


# --- 2. the runs --------------------------------------------------------------------------------

def _entries(result: SearchResult, o: BatchOutcome, ask: Ask, serial: Path) -> list[Entry]:
    """Serial, the best shipped layout, the top K (written as scenario files in the work folder)."""
    found = top_scenarios(result, o.batch, ask.work / "layouts", ask.top, command=ask.command)
    out = [Entry("serial", "serial", serial, o.serial.rank or None, o.serial.candidate.predicted)]
    best = o.best_shipped()
    if best is not None:
        out.append(Entry("best shipped", best.name, Path(best.path), best.candidate, best.predicted))
    out += [Entry("candidate", load_scenario(f.path).name, f.path, f.rank, f.predicted, r)
            for f, r in zip(found, o.top)]
    return out


def _run_key(round_: int, batch: int, e: Entry) -> str:
    return f"r{round_}-b{batch}-{e.name}"


def _measure(req: Request, plan: dict[int, list[Entry]], ask: Ask, runner: Runner, facts: DeviceFacts,
             ranked_on: Path, console: Console) -> dict[str, Path]:
    """Every layout of every batch in every round, a stage per launch (G rounds side by side on G
    GPUs); the result file of each run by `_run_key`."""
    s = req.shape
    digest = hashlib.sha256(ranked_on.read_bytes() + f"layers {req.layers}".encode())
    for b in sorted(plan):
        for e in plan[b]:  # what is measured, without the comments (they carry the date)
            digest.update(b"".join(line for line in e.path.read_bytes().splitlines(keepends=True)
                                   if not line.startswith(b"#")))
    key = WorkKey(facts.name, kernel_hash(), CalibrationShape(req.model, s.context, s.tp, s.page_size, s.kv_cache),
                  tuple(sorted(plan)), facts.backend, runner.gpus, layouts="sha256:" + digest.hexdigest()[:16])
    work, notes = WorkFolder.open(ask.work / "runs", key, ask.command, resume=ask.resume)
    hint = resume_hint(ask.command)
    stages = []
    for r0 in range(1, ask.rounds + 1, runner.gpus):
        rounds = list(range(r0, min(ask.rounds, r0 + runner.gpus - 1) + 1))
        for b in sorted(plan):
            for i, e in enumerate(plan[b]):
                name = (f"round {r0}" if len(rounds) == 1 else f"rounds {rounds[0]}-{rounds[-1]}") + f" b{b} {e.name}"
                runs = [LayoutRun(str(e.path), req.model, s.with_(batch=b), str(work.path / _run_key(r, b, e)),
                                  layers=req.layers) for r in rounds]
                stages.append((name, RUN_S + (FIRST_RUN_S if r0 == 1 and i == 0 else 0.0), runs))
    with StageProgress(console) as progress:
        for line in notes:
            progress.print(line)
        progress.print(f"measuring {sum(len(p) for p in plan.values())} layouts x {ask.rounds} round(s) on "
                       f"{facts.name} ({facts.backend}, {runner.gpus} GPU(s)); runs kept in {work.path}")
        progress.ahead([(n, est) for n, est, _ in stages])
        for name, est, runs in stages:
            run_stage(work, progress, name, est, hint, lambda runs=runs: runner.runs(runs, facts.backend),
                      unwritten="no winner written")
    out = {}
    for name, _, runs in stages:
        for run in runs:
            out[Path(run.folder).name] = next(f for f in work.files(name)
                                              if f.suffix == ".json" and f.parent == Path(run.folder))
    return out


# --- 3. per batch: the numbers, the winner, the report ------------------------------------------

def _versus(mine: list[RunResult], other: list[RunResult], name: str) -> Versus:
    deltas = tuple(a.latency.median - b.latency.median for a, b in zip(mine, other))
    delta = statistics.median(deltas)
    band = max(band_us(b, a) for a, b in zip(mine, other))
    same_side = all((d < 0) == (delta < 0) for d in deltas)
    return Versus(name, statistics.median(r.latency.median for r in other), delta, band, deltas,
                  abs(delta) > band and same_side)


def _conclude(result: SearchResult, o: BatchOutcome, entries: list[Entry], files: dict[str, Path], ask: Ask,
              facts: DeviceFacts) -> tuple[BatchMeasurement, list[Path]]:
    runs = {e.name: [load(files[_run_key(r, o.batch, e)], RunResult) for r in range(1, ask.rounds + 1)]
            for e in entries}
    serial = runs["serial"]
    best = next((e for e in entries if e.role == "best shipped"), None)
    measured = []
    for e in entries:
        mine = runs[e.name]
        p = e.predicted
        measured.append(MeasuredLayout(
            e.name, str(e.path), e.role, e.rank, p.us, p.low, p.high,
            tuple(f"{a}|{b}" for a, b in p.unmeasured),
            statistics.median(r.latency.median for r in mine), statistics.median(r.latency.p20 for r in mine),
            statistics.median(r.latency.p80 for r in mine), max(r.latency.noise for r in mine),
            tuple(r.latency.median for r in mine), all(bool(r.equal_to_serial) for r in mine),
            tuple(str(files[_run_key(r, o.batch, e)]) for r in range(1, ask.rounds + 1)),
            None if e.role == "serial" else _versus(mine, serial, "serial"),
            _versus(mine, runs[best.name], best.name) if e.role == "candidate" and best else None))
    order = {"candidate": 0, "best shipped": 1, "serial": 2}
    measured.sort(key=lambda m: (order[m.role], m.rank or 0))
    fine = [m for m in measured if m.role == "candidate" and m.equal_to_serial]
    winner = min(fine, key=lambda m: m.median_us) if fine else None
    written = []
    winner_file = report = None
    if winner is not None:
        entry = next(e for e in entries if e.name == winner.scenario)
        winner_file = write_atomic(ask.out / file_name(result, o.batch),
                                   scenario_text(result, o, entry.ranked, command=ask.command,
                                                 measured=measured_lines(winner, measured, ask, facts, o.batch)))
        written.append(winner_file)
    folder = report_folder(result.request, result.profile.name, o.batch, ask.out)
    shown = [runs[m.scenario][_typical(m)] for m in sorted(measured, key=lambda m: (m.role != "serial",
                                                                                    m.role != "best shipped",
                                                                                    m is not winner))]
    from streamlab.report.compare import export
    written += [p for p in export(CompareResult(tuple(shown)), folder, plot_batch=o.batch) if p.name == "report.md"]
    report = str(folder)
    return BatchMeasurement(o.batch, tuple(measured), winner.scenario if winner else None,
                            str(winner_file) if winner_file else None, report), written


def _typical(m: MeasuredLayout) -> int:
    """The round whose median is nearest the layout's median over the rounds (the report's run)."""
    return min(range(len(m.round_medians_us)), key=lambda i: abs(m.round_medians_us[i] - m.median_us))


def _against(v: Versus) -> str:
    return (f"{v.other} {v.other_us:.1f} us: {v.delta_us:+.1f} us ({v.percent:+.1f}%), {v.verdict}"
            f" (band +-{v.band_us:.1f} us" + (f"; rounds {', '.join(f'{d:+.1f}' for d in v.round_deltas_us)})"
                                             if len(v.round_deltas_us) > 1 else ")"))


def measured_lines(winner: MeasuredLayout, measured: list[MeasuredLayout], ask: Ask, facts: DeviceFacts,
                   batch: int) -> list[str]:
    """The comment lines the winner's scenario file gains: what the GPU measured."""
    others = [m for m in measured if m.role == "candidate" and m is not winner]
    lines = [(f"  measured:  on {facts.name} ({facts.backend}), {ask.rounds} round(s) of fresh processes "
              "interleaved with serial and the best shipped layout (`streamlab search --measure`)"),
             (f"             {winner.median_us:.1f} us per layer (p20 {winner.p20_us:.1f}, p80 {winner.p80_us:.1f}; "
              f"noise {100 * winner.noise:.2f}%); outputs bitwise equal to serial's"),
             f"             vs {_against(winner.vs_serial)}"]
    if winner.vs_best_shipped is not None:
        lines.append(f"             vs best shipped {_against(winner.vs_best_shipped)}")
    lines.append(f"             the measured fastest of the top {len(others) + 1} at batch {batch} (simulator rank "
                 f"{winner.rank})" + (": " + ", ".join(f"rank {m.rank} {m.median_us:.1f} us" for m in others)
                                      if others else ""))
    return lines
