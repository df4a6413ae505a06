"""The regression gate: noise band, verdicts, exit codes and the attribution arithmetic."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from streamlab.check import attribute, judge
from streamlab.cli import app
from streamlab.errors import EXIT_BAD_INPUT
from streamlab.results import DO_NOT_ENABLE, ENABLE, INCONCLUSIVE, CompareResult, dump
from tests.synthetic import run_result

ROOT = Path(__file__).parent.parent
SCENARIOS = ROOT / "scenarios"


def result(latency, spread=0.0, wall=None, kernel_sum=200.0, bubble=10.0, stall=0.0, ar=10.0,
           drift=0.0, **kw):
    return run_result("serial", 4, latency=latency, spread=spread, wall=wall, kernel_sum=kernel_sum,
                      bubble=bubble, stall=stall, ar=ar, drift=drift, **kw)


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


def test_check_on_the_simulated_mi355x_says_do_not_enable_a_v4_moe_dual(tmp_path):
    r = CliRunner().invoke(app, ["check", "--baseline", str(SCENARIOS / "serial.yaml"), "--candidate",
                                 str(SCENARIOS / "a_v4_moe_dual.yaml"), "--batch", "4", "--json",
                                 "--out", str(tmp_path)])
    assert r.exit_code == 1, r.output
    doc = json.loads(r.output)
    assert doc["verdict"] == "do not enable" and doc["source"] == "simulated, profile mi355x"
    a = doc["batches"][0]["attribution"]
    assert a["allreduce"] == pytest.approx(2 * (18.2 - 10.3), abs=0.1)
    assert a["bubble_stall"] > 10


def test_sides_that_are_not_comparable_are_inconclusive_with_the_reason():
    """A GLM-5 run against a DeepSeek-V3.2 one, an H100 run against an H200 one: whatever the
    numbers, no verdict; the line and the JSON say why."""
    base, cand = result(300.0), result(250.0, device="NVIDIA H100 80GB HBM3")
    v = judge("a", "b", [(4, base, cand)])
    assert v.verdict == INCONCLUSIVE and v.exit_code == 2 and v.batches[0].verdict == INCONCLUSIVE
    assert v.reason == "device NVIDIA H200 vs NVIDIA H100 80GB HBM3"
    assert "not comparable (device NVIDIA H200 vs NVIDIA H100 80GB HBM3)" in v.line()
    other_model = replace(cand, device=base.device, model="deepseek_v32", versions={"torch": "2.13.0"})
    v = judge("a", "b", [(4, base, other_model)])
    assert v.reason == "model glm5 vs deepseek_v32; versions torch 2.11.0 vs 2.13.0"
    assert judge("a", "b", [(4, base, replace(cand, device=base.device))]).verdict == ENABLE
    simulated = result(250.0, measured=False)
    assert judge("a", "b", [(4, base, simulated)]).reason.startswith("measured vs simulated")


def test_check_judges_result_files(tmp_path):
    dump(result(300.0), tmp_path / "a.json")
    dump(replace(result(250.0), scenario="b"), tmp_path / "b.json")
    r = CliRunner().invoke(app, ["check", "--baseline", str(tmp_path / "a.json"), "--candidate",
                                 str(tmp_path / "b.json")])
    assert r.exit_code == 0 and "ENABLE: b vs serial" in r.output
    (tmp_path / "c.json").write_text("{not json")
    r = CliRunner().invoke(app, ["check", "--baseline", str(tmp_path / "a.json"), "--candidate",
                                 str(tmp_path / "c.json")])
    assert r.exit_code == EXIT_BAD_INPUT and "c.json: cannot read a result: not JSON" in r.output
    dump(judge("a", "b", [(4, result(300.0), result(250.0))]), tmp_path / "verdict.json")
    r = CliRunner().invoke(app, ["check", "--baseline", str(tmp_path / "a.json"), "--candidate",
                                 str(tmp_path / "verdict.json")])
    assert r.exit_code == EXIT_BAD_INPUT and "verdict.json: a check verdict (schema 2), not a run result" in r.output


def test_check_on_committed_h200_results_of_two_and_four_gpus_is_inconclusive():
    """Untyped results of before schema 2 are read; two GPUs against four are other devices'
    all-reduces: no verdict."""
    runs = ROOT / "bench" / "results"
    r = CliRunner().invoke(app, ["check", "--baseline", str(runs / "h200x2-2026-11-21/runs/serial-b4-w2-nccl.json"),
                                 "--candidate", str(runs / "h200x2-2026-11-21/runs/a_v4-b4-w2-nccl.json"), "--json"])
    doc = json.loads(r.output)
    assert r.exit_code == 1 and doc["verdict"] == "do not enable" and doc["reason"] is None
    assert doc["batches"][0]["delta_us"] == pytest.approx(242.3 - 234.5, abs=0.05)
    r = CliRunner().invoke(app, ["check", "--baseline", str(runs / "h200x2-2026-11-21/runs/serial-b4-w2-nccl.json"),
                                 "--candidate", str(runs / "h200x4-2026-11-21/runs/a_v4-b4-w4-nccl.json"), "--json"])
    assert r.exit_code == 2 and json.loads(r.output)["reason"] == "world 2 vs 4"


def test_compare_tables_show_the_runs_numbers():
    from rich.console import Console

    from streamlab.report.compare import layer_table, markdown
    r0 = result(300.0, spread=0.004, stall=0.0)
    r1 = replace(result(320.0, spread=0.002, bubble=30.0, stall=18.2, ar=18.2), scenario="a_v4")
    r0, r1 = (replace(r, latency=replace(r.latency, p20=1.0, p80=2.0)) for r in (r0, r1))
    console = Console(width=200, record=True)
    console.print(layer_table([r0, r1], 4))
    text = console.export_text()
    assert "+20.0" in text and "0.40%" in text and "18.2" in text and "serial" in text and "a_v4" in text
    md = markdown(CompareResult((r0, r1)))
    assert "| a_v4 | 320.0 | 1.0-2.0 | +20.0 | 0.20% | 0.00% | 11.8/0.0/18.2 | 18.2 | 1.00 | 1 | yes | 3.20 | 3.20 |" in md
