"""The regression gate: noise band, verdicts, exit codes and the attribution arithmetic."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from streamlab.check import DO_NOT_ENABLE, ENABLE, INCONCLUSIVE, attribute, judge
from streamlab.cli import app

SCENARIOS = Path(__file__).parent.parent / "scenarios"


def result(latency, spread=0.0, wall=None, kernel_sum=200.0, bubble=10.0, stall=0.0, ar=10.0,
           drift=0.0):
    wall = latency if wall is None else wall
    stat = lambda v: {"median": v, "p20": v, "p80": v, "n": 4}  # noqa: E731
    return {"measured": {
        "source": "synthetic", "per_layer_us": stat(latency), "repeat_spread": spread, "drift": drift,
        "repeat_medians_us": [latency] * 5,
        "profile": {"wall_us": stat(wall), "kernel_sum_us": stat(kernel_sum), "bubble_us": stat(bubble),
                    "bubble_by_class_us": {"launch": stat(bubble - stall), "fence": stat(0.0), "stall": stat(stall)},
                    "allreduce_per_call_us": stat(ar), "overlap": stat(1.0), "physical_streams": 1},
        "nodes": {"allreduce_attn": {}, "allreduce_moe": {}, "experts": {}}}}


def test_difference_inside_the_noise_is_inconclusive():
    v = judge("a", "b", [(4, result(300.0, spread=0.01), result(304.0, spread=0.002))])
    assert v.batches[0].band_us == pytest.approx(6.0)  # 2 x 1% of 300
    assert v.verdict == INCONCLUSIVE and v.exit_code == 2


def test_a_run_that_drifted_widens_the_band_by_half_its_drift():
    """Interleaved repeats agree closely even while the layer's speed wanders; a fresh run can
    land anywhere in about half that wander."""
    base, cand = result(200.0, spread=0.001, drift=0.04), result(205.0, spread=0.001)
    v = judge("a", "b", [(4, base, cand)])
    assert v.batches[0].band_us == pytest.approx(8.0)  # 2 x 2% of 200
    assert v.verdict == INCONCLUSIVE
    assert judge("a", "b", [(4, result(200.0, spread=0.001), cand)]).verdict == DO_NOT_ENABLE


def test_regression_at_any_batch_fails():
    v = judge("a", "b", [(4, result(300.0), result(280.0)), (64, result(500.0), result(520.0))])
    assert [b.verdict for b in v.batches] == [ENABLE, DO_NOT_ENABLE]
    assert v.verdict == DO_NOT_ENABLE and v.exit_code == 1
    assert "batch 64 +20.0 us (+4.0%" in v.line()


def test_enable_only_when_every_batch_wins_beyond_noise():
    assert judge("a", "b", [(1, result(100.0), result(90.0)), (4, result(300.0), result(280.0))]).exit_code == 0
    assert judge("a", "b", [(1, result(100.0), result(99.8)), (4, result(300.0), result(280.0))]).verdict == INCONCLUSIVE


def test_attribution_adds_up_to_the_difference():
    base = result(271.0, wall=270.0, kernel_sum=250.0, bubble=20.0, stall=0.0, ar=10.3)
    cand = result(320.0, wall=318.0, kernel_sum=300.0, bubble=38.2, stall=18.2, ar=18.2)
    a = attribute(base, cand)
    assert a.total == pytest.approx(49.0)
    assert a.allreduce == pytest.approx(2 * 7.9)
    assert a.kernel_time == pytest.approx(50.0 - 15.8)
    assert a.bubble == pytest.approx(18.2) and a.bubble_stall == pytest.approx(18.2)
    # hidden = kernel_sum - wall + bubble: 0 before, 20.2 after
    assert a.overlap_saved == pytest.approx(20.2)
    assert a.other == pytest.approx(1.0)
    assert sum(v for _, v in a.parts()) == pytest.approx(a.total)


def test_check_on_the_simulated_mi355x_says_do_not_enable_a_v4_moe_dual():
    r = CliRunner().invoke(app, ["check", "--baseline", str(SCENARIOS / "serial.yaml"), "--candidate",
                                 str(SCENARIOS / "a_v4_moe_dual.yaml"), "--batch", "4", "--json",
                                 "--out", "/tmp/streamlab-test-check"])
    assert r.exit_code == 1, r.output
    doc = json.loads(r.output)
    assert doc["verdict"] == "do not enable" and doc["source"] == "simulated, profile mi355x"
    a = doc["batches"][0]["attribution"]
    assert a["allreduce"] == pytest.approx(2 * (18.2 - 10.3), abs=0.1)
    assert a["bubble_stall"] > 10


def test_check_judges_result_files(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"scenario": "a", "shape": {"batch": 4}, **result(300.0)}))
    (tmp_path / "b.json").write_text(json.dumps({"scenario": "b", "shape": {"batch": 4}, **result(250.0)}))
    r = CliRunner().invoke(app, ["check", "--baseline", str(tmp_path / "a.json"), "--candidate",
                                 str(tmp_path / "b.json")])
    assert r.exit_code == 0 and "ENABLE: b vs a" in r.output
    (tmp_path / "c.json").write_text("{not json")
    r = CliRunner().invoke(app, ["check", "--baseline", str(tmp_path / "a.json"), "--candidate",
                                 str(tmp_path / "c.json")])
    assert r.exit_code == 2 and "cannot read a result" in r.output


def test_compare_tables_show_the_runs_numbers():
    from rich.console import Console

    from streamlab.report.compare import Run, layer_table, markdown
    from streamlab.scenario import load
    base = load(SCENARIOS / "serial.yaml")
    cand = load(SCENARIOS / "a_v4.yaml")
    r0, r1 = result(300.0, spread=0.004, stall=0.0), result(320.0, spread=0.002, bubble=30.0, stall=18.2, ar=18.2)
    for r in (r0, r1):
        r["equal_to_serial"] = True
        r["measured"]["per_layer_us"] = {"median": r["measured"]["per_layer_us"]["median"], "p20": 1.0, "p80": 2.0}
    runs = [Run(base, 4, r0), Run(cand, 4, r1)]
    console = Console(width=200, record=True)
    console.print(layer_table(runs, 4))
    text = console.export_text()
    assert "+20.0" in text and "0.40%" in text and "18.2" in text and "serial" in text and "a_v4" in text
    md = markdown(runs)
    assert "| a_v4 | 320.0 | 1.0-2.0 | +20.0 | 0.20% | 11.8/0.0/18.2 | 18.2 | 1.00 | 1 |" in md
