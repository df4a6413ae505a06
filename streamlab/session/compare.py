"""`streamlab compare`: layouts x batch sizes, each run measured in a process of its own on a GPU
(simulated otherwise), collected into one `results.CompareResult`. The report folder's
report.json is rewritten after every run (marked incomplete until the last), so a run cut short
by a time limit keeps what it measured."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.progress import Progress

from streamlab.errors import Failure
from streamlab.results import CompareResult, RunFailure, RunResult, dump
from streamlab.scenario import Scenario
from streamlab.session.fresh import run_apart

__all__ = ["collect"]


def collect(scenarios: list[Scenario], batches: list[int], console: Console, *, keep_going: bool = False,
            report: Path | None = None, **run_options) -> CompareResult:
    """Every scenario at every batch (all scenarios at the first batch first), each through
    `run_apart(**run_options)`. A failed run ends the comparison, or with `keep_going` is
    recorded as a failure and the others still run. `report`: report.json to keep current."""
    runs: list[RunResult] = []
    failures: list[RunFailure] = []
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("running", total=len(scenarios) * len(batches))
        for batch in batches:
            for scen in scenarios:
                progress.update(task, description=f"{scen.name} batch {batch}")
                try:
                    runs.append(run_apart(scen.override(batch=batch), **run_options))
                except Failure as e:
                    if not keep_going:
                        raise
                    failures.append(RunFailure(scen.name, batch, str(e)))
                    console.print(f"[red]{scen.name} batch {batch}: {e}[/]")
                if report is not None:
                    dump(CompareResult(tuple(runs), tuple(failures), complete=False), report)
                progress.advance(task)
    return CompareResult(tuple(runs), tuple(failures))
