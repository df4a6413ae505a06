"""`streamlab compare`: layouts x batch sizes, each run measured in a process of its own on a GPU
(simulated otherwise), collected into one `results.CompareResult`. Every file the comparison will
write is claimed before the first run (session.files: none may exist, unless --force), so it never
stops half-way on a name taken. The report folder's report.json is rewritten after every run
(marked incomplete until the last), so a run cut short by a time limit keeps what it measured."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.progress import Progress

from streamlab.errors import EXIT_BAD_INPUT, Failure
from streamlab.io import claim
from streamlab.results import CompareResult, RunFailure, RunResult, dump
from streamlab.scenario import Scenario
from streamlab.session.fresh import run_apart
from streamlab.session.run import planned_files

__all__ = ["claim_runs", "collect"]


def claim_runs(scenarios: list[Scenario], *, force: bool, **run_options) -> None:
    """Refuse, before anything runs, a series of runs whose files exist (unless `force`) or
    that would write one file twice (a scenario given twice)."""
    seen: dict = {}
    for scen in scenarios:
        files = planned_files(scen, **run_options).claim(force=force)
        if files.result in seen:
            raise Failure(f"{scen.path} and {seen[files.result]} are the same run at batch {scen.shape.batch} "
                          f"(both would write {files.result}): give each layout once", EXIT_BAD_INPUT)
        seen[files.result] = scen.path


def collect(scenarios: list[Scenario], batches: list[int], console: Console, *, keep_going: bool = False,
            report: Path | None = None, force: bool = False, **run_options) -> CompareResult:
    """Every scenario at every batch (all scenarios at the first batch first), each through
    `run_apart(**run_options)`. A failed run ends the comparison, or with `keep_going` is
    recorded as a failure and the others still run. `report`: report.json to keep current.
    Every file is claimed first (`claim_runs`; `force` replaces them)."""
    claim_runs([scen.override(batch=b) for b in batches for scen in scenarios], force=force, **run_options)
    if report is not None:
        claim(report, force=force, what="compare report")
    runs: list[RunResult] = []
    failures: list[RunFailure] = []
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("running", total=len(scenarios) * len(batches))
        for batch in batches:
            for scen in scenarios:
                progress.update(task, description=f"{scen.name} batch {batch}")
                try:
                    runs.append(run_apart(scen.override(batch=batch), force=force, **run_options))
                except Failure as e:
                    if not keep_going:
                        raise
                    failures.append(RunFailure(scen.name, batch, str(e)))
                    console.print(f"[red]{scen.name} batch {batch}: {e}[/]")
                if report is not None:
                    dump(CompareResult(tuple(runs), tuple(failures), complete=False), report)
                progress.advance(task)
    return CompareResult(tuple(runs), tuple(failures))
