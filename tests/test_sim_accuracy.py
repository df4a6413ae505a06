"""The shipped h100 profile against the committed H100 matrix: the simulator's accuracy claim
(issue 5) holds for the code as it is, not only for the code that wrote sim_accuracy.md."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from streamlab.sim.pairwise import with_pairs
from streamlab.sim.predict import predict
from streamlab.sim.profile_file import load_profile

ROOT = Path(__file__).resolve().parent.parent
MATRIX = ROOT / "bench" / "results" / "h100-2026-11-22" / "matrix.json"


@pytest.fixture(scope="module")
def accuracy():
    spec = importlib.util.spec_from_file_location("sim_accuracy", ROOT / "bench" / "sim_accuracy.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_h100_profile_predicts_the_held_out_layouts_and_ranks_them_as_measured(accuracy):
    profile = load_profile("h100")
    runs = accuracy.measured_runs(MATRIX)
    errors = []
    for batch in (1, 4, 16, 64):
        sim = accuracy.simulated(profile, batch)
        meas = {name: runs[(name, batch)] for name in accuracy.LAYOUTS}
        assert sim["serial"] == pytest.approx(meas["serial"].us, rel=0.002)  # the calibration layout
        errors += [abs(sim[n] / meas[n].us - 1) for n in accuracy.LAYOUTS if n != accuracy.CALIBRATION]
        assert accuracy.misranked(sim, meas) == [], f"batch {batch}"
    assert sum(errors) / len(errors) < 0.02  # the issue asks 5%; 1.07% when committed


def test_misranked_ignores_ties_and_names_the_pair_it_gets_wrong(accuracy):
    m = accuracy.Measured
    meas = {"serial": m(100.0, 0.5), "pr23562": m(110.0, 0.5), "a_v4": m(105.0, 0.5), "a_v4_moe_dual": m(105.4, 0.5)}
    sim = {"serial": 100.0, "pr23562": 104.0, "a_v4": 106.0, "a_v4_moe_dual": 105.0}
    # a_v4 vs a_v4_moe_dual differ by 0.4 < 0.5 us of noise: a tie, either order is right
    assert accuracy.misranked(sim, meas) == [("a_v4", "pr23562", 5.0), ("a_v4_moe_dual", "pr23562", pytest.approx(4.6))]


def test_the_measured_layouts_fall_inside_their_intervals(accuracy):
    """Calibrated on serial, isolated nodes and pairs: every held-out H100 median inside its
    interval (12 of 12 when committed; the issue asks 90%)."""
    runs = accuracy.measured_runs(MATRIX)
    pred = {(n, b): p for b in (1, 4, 16, 64) for n, p in accuracy.predictions(load_profile("h100"), b).items()}
    scores = accuracy.score(runs, pred)
    assert sum(scores.inside) >= 0.9 * len(scores.inside)
    assert max(scores.half_widths) < 0.08  # an interval that says something: 4.0% on average, 6.6% at most when committed


def test_without_the_pairs_intervals_widen_rather_than_errors_hide(accuracy):
    """The a_v4_moe_dual layout predicted from the same calibration without the pairs it creates
    (what `calibrate --for` would measure): its errors grow, and its intervals grow more."""
    full = load_profile("h100")
    own = accuracy.pairs_of(full, "a_v4_moe_dual", [4, 64])
    without = with_pairs(full, tuple(p for p in full.pair_measures if frozenset((p.first, p.second)) not in own), "t")
    runs = accuracy.measured_runs(MATRIX)
    for batch in (4, 64):
        before, after = (predict(accuracy.scenario("a_v4_moe_dual", batch), p) for p in (without, full))
        measured = runs[("a_v4_moe_dual", batch)].us
        assert before.low_us <= measured <= before.high_us
        assert len(before.unmeasured) == len(before.overlaps) > len(after.unmeasured)
        grew = abs(before.per_layer_us - measured) - abs(after.per_layer_us - measured)
        assert before.half_width_us - after.half_width_us > max(grew, 0.0)
