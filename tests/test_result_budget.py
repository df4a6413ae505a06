"""The layer budget: node floors plus a launch allowance, with held (emulated) time as a floor."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamlab.analysis import summarize
from streamlab.report.result import LAUNCH_US, layer_result
from streamlab.scenario import load
from streamlab.sim.engine import simulate
from streamlab.sim.profile import load_profile

ROOT = Path(__file__).resolve().parents[1]


def _result(held_us=None):
    scen = load(ROOT / "scenarios" / "serial.yaml")
    timeline = simulate(scen.layer, scen.program, load_profile("h100"), 2)
    names = [n.name for n in scen.layer.nodes]
    return layer_result(scen, "test", [200.0, 210.0], [200.0, 210.0], summarize(timeline),
                        {n: 5.0 for n in names}, {n: 1 for n in names}, {n: 0.5 for n in names},
                        {n: "triton" for n in names}, "emulated", held_us=held_us)


def test_held_time_is_the_floor_of_the_emulated_allreduce():
    plain = _result()
    held = _result({"allreduce_attn": 10.0, "allreduce_moe": 10.0})
    n = len(plain["nodes"])
    assert plain["floor_sum_us"] == pytest.approx(0.5 * n)
    assert plain["budget_us"] == pytest.approx(0.5 * n + LAUNCH_US * n)
    assert held["nodes"]["allreduce_attn"]["floor_us"] == 10.0
    assert held["nodes"]["o_proj"]["floor_us"] == 0.5
    assert held["floor_sum_us"] == pytest.approx(0.5 * (n - 2) + 20.0)
    assert held["floor_held_us"] == 20.0 and plain["floor_held_us"] == 0.0
    assert held["budget_roofline_us"] == pytest.approx(plain["budget_us"])
    assert held["budget_us"] - plain["budget_us"] == pytest.approx(19.0)


def test_drift_is_the_spread_of_block_medians():
    scen = load(ROOT / "scenarios" / "serial.yaml")
    timeline = simulate(scen.layer, scen.program, load_profile("h100"), 2)
    names = [n.name for n in scen.layer.nodes]
    res = layer_result(scen, "test", [200.0, 210.0], [204.0, 205.0], summarize(timeline),
                       {n: 5.0 for n in names}, {n: 1 for n in names}, {n: 0.5 for n in names},
                       {n: "triton" for n in names}, "emulated", block_medians=[200.0, 210.0, 205.0])
    assert res["repeat_spread"] == pytest.approx(1 / 204.5)
    assert res["drift"] == pytest.approx(10 / 205.0)
    assert res["block_medians_us"] == [200.0, 210.0, 205.0]
    assert _result()["drift"] == 0.0
