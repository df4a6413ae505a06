"""The harness of the bad-input suites (tests/test_fuzz_*.py, tests/test_inputs.py): one command
line run as a user runs it, in a fresh working folder, and everything that can go wrong with it.

`attempt(case)` runs `streamlab ARGS` in-process (typer's CliRunner) with a fresh folder as the
current directory, the case's input files written there first, and returns what happened: the
exit code and output, whether a traceback was printed (or an exception escaped), whether the code
is one the case accepts (errors.EXIT_CODES), which files appeared or changed outside the case's
--out folder, and which files that existed before were changed without --force. `check(case)`
asserts all of it and counts the case under its class; with STREAMLAB_BAD_INPUT_TALLY set the
counts are written there as JSON when the tests end (the README's "Bad input" table);
STREAMLAB_FUZZ_SCALE multiplies every hypothesis test's example count (`examples(n)`): 1 in CI,
10 for the README's table.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, settings
from typer.testing import CliRunner

from streamlab.cli import app
from streamlab.errors import EXIT_BAD_INPUT

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ROOT / "scenarios"
TRACES = ROOT / "tests" / "data"
BAD = frozenset({EXIT_BAD_INPUT})

SCALE = float(os.environ.get("STREAMLAB_FUZZ_SCALE", "1"))


def examples(n: int) -> settings:
    """Hypothesis settings of a bad-input test: `n` examples (times STREAMLAB_FUZZ_SCALE), drawn
    the same way on every run (derandomized: a failure in CI reproduces), no deadline."""
    return settings(max_examples=max(1, round(n * SCALE)), derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


TALLY: dict[str, Counter] = defaultdict(Counter)
COLUMNS = ("cases", "tracebacks", "wrong exit codes", "files outside --out", "silent overwrites")


@dataclass(frozen=True)
class Case:
    """`streamlab ARGS` in a fresh folder holding `files` (name -> content), accepting `codes`;
    every file it writes must be under `out` (relative to that folder); `existing`: files to
    put there first that the command must not change (it has no --force)."""

    cls: str
    args: tuple[str, ...]
    codes: frozenset[int]
    files: dict[str, bytes] = field(default_factory=dict)
    out: str = "out"
    existing: dict[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class Outcome:
    code: int
    output: str  # stdout and stderr as a terminal shows them
    stdout: str
    traceback: bool
    wrong_code: bool
    outside: tuple[str, ...]
    overwritten: tuple[str, ...]

    def problems(self) -> list[str]:
        return ([f"a traceback (exit {self.code})"] if self.traceback else []) + \
               ([f"exit {self.code}, not an accepted code"] if self.wrong_code else []) + \
               ([f"wrote outside --out: {', '.join(self.outside)}"] if self.outside else []) + \
               ([f"replaced without --force: {', '.join(self.overwritten)}"] if self.overwritten else [])


def _snapshot(root: Path) -> dict[str, str]:
    out = {}
    for p in root.rglob("*"):
        if p.is_file():
            out[str(p.relative_to(root))] = hashlib.sha1(p.read_bytes()).hexdigest()
    return out


def attempt(case: Case) -> Outcome:
    with tempfile.TemporaryDirectory(prefix="streamlab-fuzz-") as tmp:
        root = Path(tmp)
        work = root / "work"  # the current folder, one level down: "../x" lands in root, where it shows
        work.mkdir()
        for name, data in {**case.files, **case.existing}.items():
            path = work / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        before = _snapshot(root)
        here = os.getcwd()
        os.chdir(work)
        try:
            res = CliRunner().invoke(app, list(case.args))
        finally:
            os.chdir(here)
        after = _snapshot(root)
    out_prefix = str(Path("work") / case.out) + os.sep
    changed = [p for p, h in after.items() if before.get(p) != h]
    outside = tuple(p for p in changed if not p.startswith(out_prefix))
    forced = "--force" in case.args
    overwritten = tuple(p for p in changed if p in before and not forced)
    output = res.output  # stdout and stderr, mixed as they came
    escaped = res.exception is not None and not isinstance(res.exception, SystemExit)
    return Outcome(code=res.exit_code, output=output, stdout=res.stdout, traceback=escaped or "Traceback (most recent" in output,
                   wrong_code=res.exit_code not in case.codes, outside=outside, overwritten=overwritten)


def check(case: Case) -> Outcome:
    """`attempt(case)`, counted under its class, and asserted: no traceback, an accepted exit
    code, nothing outside --out, nothing replaced without --force."""
    got = attempt(case)
    t = TALLY[case.cls]
    t["cases"] += 1
    t["tracebacks"] += got.traceback
    t["wrong exit codes"] += got.wrong_code
    t["files outside --out"] += bool(got.outside)
    t["silent overwrites"] += bool(got.overwritten)
    problems = got.problems()
    assert not problems, (f"streamlab {' '.join(case.args)}: {'; '.join(problems)} "
                          f"(accepted {sorted(case.codes)})\n{got.output[-3000:]}")
    return got


def text(path: Path) -> bytes:
    return path.read_bytes()


@atexit.register
def _write_tally() -> None:
    target = os.environ.get("STREAMLAB_BAD_INPUT_TALLY")
    if target and TALLY:
        Path(target).write_text(json.dumps({k: dict(v) for k, v in sorted(TALLY.items())}, indent=1) + "\n")
