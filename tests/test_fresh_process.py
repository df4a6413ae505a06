"""Runs in a process of their own give what runs in this one give, and fail the same way."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamlab.errors import EXIT_BAD_INPUT, Failure
from streamlab.scenario import load
from streamlab.session.fresh import run_apart

ROOT = Path(__file__).resolve().parents[1]


def test_a_fresh_process_returns_the_run_and_keeps_failure_codes(tmp_path):
    scen = load(ROOT / "scenarios" / "a_v4.yaml")
    options = dict(backend=None, device="cpu", layers=2, out=tmp_path, profile="h100")
    here = run_apart(scen, fresh=False, **options)
    apart = run_apart(scen, fresh=True, force=True, **options)  # the same files, replaced
    assert apart == here  # the same result, field by field
    assert apart.equal_to_serial and apart.scenario == "a_v4" and not apart.measured
    with pytest.raises(Failure) as e:
        run_apart(scen, fresh=True, **{**options, "layers": -1})
    assert e.value.code == EXIT_BAD_INPUT and "--layers" in str(e.value)
