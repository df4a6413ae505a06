"""A run's result from what the executor returns (streamlab.runs): the layer budget (node floors
plus a launch allowance, with held, emulated time as a floor), and how timed replays are read."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamlab.exec.measure import WARMUP_S, GraphTiming, Measurement, NodeIsolated
from streamlab.models.hardware import Ceilings
from streamlab.runs import LAUNCH_US, RunSetup, measured_result, timed_latency
from streamlab.scenario import load
from streamlab.sim.engine import simulate
from streamlab.sim.profile_file import load_profile

ROOT = Path(__file__).resolve().parents[1]
CEILINGS = Ceilings(3000.0, 800.0, 1600.0)


def _result(held_us=None):
    scen = load(ROOT / "scenarios" / "serial.yaml")
    timeline = simulate(scen.layer, scen.program, load_profile("h100"), 2)  # stands in for profiled replays
    alone = {n.name: NodeIsolated([("k", (1,))], [5.0, 5.0]) for n in scen.layer.nodes}
    setup = RunSetup(device="NVIDIA H100", versions={}, backends={}, layers=2, differences=())
    timing = GraphTiming([200.0, 210.0], block=1, repeats=2)
    return scen, measured_result(scen, Measurement(timing, timeline, alone, CEILINGS), setup,
                                 node_backends={n.name: "triton" for n in scen.layer.nodes},
                                 allreduce="emulated", held_us=held_us or {})


def test_held_time_is_the_floor_of_the_emulated_allreduce():
    scen, plain = _result()
    _, held = _result({"allreduce_attn": 10.0, "allreduce_moe": 10.0})
    n = len(plain.nodes)
    roofline = {node.name: CEILINGS.floor_us(node) for node in scen.layer.nodes}
    assert plain.budget.floor_sum_us == pytest.approx(sum(roofline.values()))
    assert plain.budget.us == pytest.approx(sum(roofline.values()) + LAUNCH_US * n)
    assert plain.budget.kernels == n and plain.budget.launch_us == LAUNCH_US
    assert held.nodes["allreduce_attn"].floor_us == 10.0
    assert held.nodes["o_proj"].floor_us == pytest.approx(roofline["o_proj"]) and roofline["o_proj"] > 0
    others = sum(v for k, v in roofline.items() if not k.startswith("allreduce"))
    assert held.budget.floor_sum_us == pytest.approx(others + 20.0)
    assert held.budget.floor_held_us == 20.0 and plain.budget.floor_held_us == 0.0
    assert held.budget.roofline_us == pytest.approx(plain.budget.us)
    assert held.budget.us - plain.budget.us == pytest.approx(20.0 - roofline["allreduce_attn"]
                                                            - roofline["allreduce_moe"])


def test_a_measured_result_keeps_its_protocol_and_every_replay():
    scen, r = _result()
    assert r.measured and r.source == "measured on h100" and r.protocol.measure == scen.measure
    assert r.protocol.warmup_s == WARMUP_S
    assert r.latency.per_replay_us == (200.0, 210.0) and r.latency.median == 205.0
    assert r.nodes["o_proj"].isolated_us == 5.0 and r.nodes["o_proj"].kernels == 1
    assert r.ceilings == CEILINGS and r.equal_to_serial is True


def test_repeat_spread_and_drift_read_the_replays_two_ways():
    # blocks of 2: medians 202, 208, 205 (drift 6 / 205); repeats 0 and 1 take every other
    # replay: 200, 210, 205 and 204, 206, 205, both of median 205 (no spread)
    lat = timed_latency(GraphTiming([200.0, 204.0, 210.0, 206.0, 205.0, 205.0], block=2, repeats=2))
    assert lat.block_medians_us == (202.0, 208.0, 205.0)
    assert lat.drift == pytest.approx(6 / 205.0)
    assert lat.repeat_medians_us == (205.0, 205.0) and lat.repeat_spread == 0.0
    assert lat.noise == pytest.approx(3 / 205.0)  # half the drift: more than the spread
    one = timed_latency(GraphTiming([200.0, 210.0], block=5, repeats=1))
    assert one.drift == 0.0 and one.repeat_spread == 0.0 and one.block_medians_us == ()
