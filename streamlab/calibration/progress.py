"""The calibration's progress: which stage runs, and the time left.

The time left is the estimate of what is left (the stage running, less what it has run, and the
stages ahead) scaled by how long the finished stages took against their own estimates: the
estimates are rough (plan.py), the ratio corrects them as the calibration goes. On a terminal a
rich bar names the stage and counts the time down; elsewhere (a log, CI) one plain line per stage.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

__all__ = ["StageProgress"]


class StageProgress:
    """Use as a context manager; `ahead` sets the stages still to come, `stage` runs one."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.start = time.monotonic()
        self.estimated_done = 0.0  # estimates of the stages finished here
        self.taken = 0.0  # what they took
        self.upcoming: list[tuple[str, float]] = []
        self.current: tuple[str, float, float] | None = None  # name, estimate, started
        self.finished = 0
        self._bar: Progress | None = None
        self._task = None

    def __enter__(self) -> StageProgress:  # noqa: PYI034  (typing.Self needs Python 3.11)
        if self.console.is_terminal:
            self._bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                 _TimeLeft(self), TimeElapsedColumn(), console=self.console)
            self._bar.__enter__()
            self._task = self._bar.add_task("calibrating", total=1.0)
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    @property
    def ratio(self) -> float:
        """Taken / estimated over the stages finished here (1 before any)."""
        return self.taken / self.estimated_done if self.estimated_done > 0 else 1.0

    def left_s(self) -> float:
        rest = sum(e for _, e in self.upcoming)
        if self.current is not None:
            _, est, started = self.current
            rest += max(0.0, est - (time.monotonic() - started) / self.ratio)
        return rest * self.ratio

    def ahead(self, stages: list[tuple[str, float]]) -> None:
        """The stages still to come after the one running (name, estimated seconds)."""
        self.upcoming = list(stages)
        self._refresh()

    def skip(self, name: str) -> None:
        """A stage finished earlier (a resumed calibration)."""
        self.upcoming = [s for s in self.upcoming if s[0] != name]
        self.finished += 1
        self.print(f"{name}: finished before, kept")

    @contextmanager
    def stage(self, name: str, estimate_s: float) -> Iterator[None]:
        self.upcoming = [s for s in self.upcoming if s[0] != name]
        self.current = (name, estimate_s, time.monotonic())
        total = self.finished + 1 + len(self.upcoming)
        label = f"stage {self.finished + 1}/{total}: {name}"
        if self._bar is not None:
            self._bar.update(self._task, description=label)
        else:
            self.print(f"{label} (~{estimate_s * self.ratio:.0f} s; ~{self.left_s():.0f} s left)")
        self._refresh()
        yield
        seconds = time.monotonic() - self.current[2]
        self.current = None
        self.finished += 1
        self.estimated_done += estimate_s
        self.taken += seconds
        self.print(f"{name}: done in {seconds:.1f} s")
        self._refresh()

    def print(self, line: str) -> None:
        elapsed = time.monotonic() - self.start
        self.console.print(f"[{elapsed:5.0f} s] {line}", markup=False, highlight=False)

    def _refresh(self) -> None:
        if self._bar is None:
            return
        done = self.estimated_done * self.ratio
        left = self.left_s()
        self._bar.update(self._task, total=max(done + left, 1e-9), completed=done)


class _TimeLeft(ProgressColumn):
    """`~N s left`, recomputed at every refresh (it counts down within a stage)."""

    def __init__(self, progress: StageProgress) -> None:
        super().__init__()
        self.progress = progress

    def render(self, task) -> Text:
        left = self.progress.left_s()
        text = f"~{left / 60:.1f} min left" if left >= 120 else f"~{left:.0f} s left"
        return Text(text, style="progress.remaining")
