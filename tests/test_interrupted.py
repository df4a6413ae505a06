"""Ctrl-C in the middle of a command, as a user presses it: `run` cut while it writes its files, a
`calibrate --measure` cut between stages. The command exits 130 (EXIT_INTERRUPTED) with one
message and no traceback; every file written before is byte for byte what it was, no file is left
cut short or as a temporary beside it, and the interrupted work can be done again (`--force`,
`--resume`) to the same end. The calibration's GPU stages are played by the stand-in runner of
tests/test_calibrate_measure.py."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

import streamlab.io
from streamlab.cli import app
from streamlab.errors import EXIT_INTERRUPTED
from tests.test_calibrate_measure import StandIn

ROOT = Path(__file__).resolve().parents[1]
A_V4, SERIAL = str(ROOT / "scenarios/a_v4.yaml"), str(ROOT / "scenarios/serial.yaml")


def _files(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _ctrl_c_at_write(monkeypatch, n: int) -> None:
    """Ctrl-C during the `n`-th atomic write, after its bytes are on disk and before the rename:
    the worst moment for a writer that is not atomic."""
    calls = []
    fsync = os.fsync

    def interrupted(fd):
        calls.append(fd)
        fsync(fd)
        if len(calls) == n:
            raise KeyboardInterrupt
    monkeypatch.setattr(streamlab.io.os, "fsync", interrupted)


def test_an_interrupted_run_leaves_every_earlier_file_as_it_was(tmp_path, monkeypatch):
    out = tmp_path / "out"
    first = CliRunner().invoke(app, ["run", SERIAL, "--out", str(out)])
    assert first.exit_code == 0, first.output
    before = _files(out)
    assert any(p.endswith(".json") for p in before) and len(before) >= 2  # a result and its trace
    for n in (1, 2):  # a new run cut at its first or second write; the same run replaced (--force), cut
        for args in (["run", A_V4, "--out", str(out)], ["run", SERIAL, "--out", str(out), "--force"]):
            with monkeypatch.context() as m:
                _ctrl_c_at_write(m, n)
                got = CliRunner().invoke(app, args)
            assert got.exit_code == EXIT_INTERRUPTED, got.output
            assert "interrupted" in got.output and "Traceback" not in got.output
            now = _files(out)
            assert {p: h for p, h in now.items() if p in before} == before  # earlier files intact
            assert not [p for p in now if p.endswith(".tmp")]  # no temporary left beside them
            for p in set(now) - set(before):  # a file the cut run did finish is whole
                assert (out / p).stat().st_size > 0
            for p in set(now) - set(before):
                (out / p).unlink()  # the next case starts from the first run's files alone
    again = CliRunner().invoke(app, ["run", SERIAL, "--out", str(out), "--force"])
    assert again.exit_code == 0 and set(_files(out)) == set(before)


def test_an_interrupted_calibration_keeps_its_stages_and_resumes(tmp_path, monkeypatch):
    import streamlab.calibration.runner as runner_module

    out = tmp_path / "h200.yaml"
    args = ["calibrate", "--measure", "--batch", "4,64", "--out", str(out), "--scenarios", str(ROOT / "scenarios")]
    monkeypatch.setattr(runner_module, "DeviceRunner", lambda **_: StandIn(fail_at=3))
    got = CliRunner().invoke(app, args)
    assert got.exit_code == EXIT_INTERRUPTED and "Traceback" not in got.output, got.output
    said = " ".join(got.output.split())
    assert "interrupted in stage serial serial b64" in said and "2 finished stages kept" in said
    assert "--resume" in said and not out.exists()
    work = tmp_path / "h200.calibration"
    kept = _files(work)
    assert "manifest.json" in kept and len(kept) == 3  # the manifest and the two finished stages' runs
    # run again without --resume: refused, nothing touched
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 64 and "add --resume" in " ".join(refused.output.split())
    assert _files(work) == kept
    monkeypatch.setattr(runner_module, "DeviceRunner", lambda **_: StandIn())
    resumed = CliRunner().invoke(app, [*args, "--resume"])
    assert resumed.exit_code == 0, resumed.output
    after = _files(work)
    assert {p: after[p] for p in kept if p != "manifest.json"} == {p: h for p, h in kept.items()
                                                                 if p != "manifest.json"}
    assert out.exists() and "launch gap" in resumed.output
    # the profile exists now: the same command is refused rather than replacing it
    again = CliRunner().invoke(app, [*args, "--resume"])
    assert again.exit_code == 64 and "exists" in again.output


@pytest.mark.parametrize("n", [1, 2])
def test_an_interrupted_plot_leaves_no_file_cut_short(tmp_path, monkeypatch, n):
    """`trace summary --out` writes PNG then SVG, each atomically: Ctrl-C at either leaves the
    other whole or absent, never a 0-byte file."""
    trace = ROOT / "tests/data/h100-a_v4-b4.trace.json.gz"
    _ctrl_c_at_write(monkeypatch, n)
    got = CliRunner().invoke(app, ["trace", "summary", str(trace), "--out", str(tmp_path / "plots")])
    assert got.exit_code == EXIT_INTERRUPTED, got.output
    files = list((tmp_path / "plots").glob("*")) if (tmp_path / "plots").exists() else []
    assert len(files) == n - 1 and all(p.stat().st_size > 0 and p.suffix in (".png", ".svg") for p in files)
