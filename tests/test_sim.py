"""The simulator: exact fluid sharing on a synthetic graph, lanes, fences and launch gaps, profiles
read and written back. The MI355X profile against the published picture: tests/test_sim_mi355x.py."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from streamlab.cli import app
from streamlab.errors import EXIT_BAD_INPUT, Failure
from streamlab.layer import Layer, Node, TensorSpec, Variant
from streamlab.models import TINY, RankDims, Shape
from streamlab.schedule.program import Launch, Program, WaitStream
from streamlab.sim.engine import Kernel, pair_excess, per_layer_us, simulate
from streamlab.sim.profile import Param, per_batch
from streamlab.sim.profile_file import dump_profile, load_profile
from tests.simprofile import bare_profile as profile
from tests.simprofile import pair_measures

SCENARIOS = Path(__file__).parent.parent / "scenarios"


def diamond(bytes_b: float, bytes_c: float, batch: int = 2) -> tuple[Layer, Program]:
    """a -> (b on main || c on alt) -> d; b and c move the given bytes."""
    tensors = {t: TensorSpec(t, (1,), "fp32") for t in ("x", "y", "z", "w")}
    nodes = [Node("a", "noop", {}, {"o": "x"}), Node("b", "noop", {"i": "x"}, {"o": "y"}, bytes=bytes_b),
             Node("c", "noop", {"i": "x"}, {"o": "z"}, bytes=bytes_c),
             Node("d", "noop", {"i": "y", "j": "z"}, {"o": "w"})]
    layer = Layer(RankDims(TINY, Shape(tp=1, batch=batch)), Variant(), tensors, nodes, {})
    prog = Program([Launch("a", "main"), WaitStream("alt", "main"), Launch("b", "main"),
                    Launch("c", "alt"), WaitStream("main", "alt"), Launch("d", "main")])
    return layer, prog


def test_two_streams_share_bandwidth_as_a_fluid():
    # alone: b 10 us at 100% of HBM (10 MB at 1 TB/s), c 10 us at 50%: together 1.5x demand
    p = profile(node_us={"a": {2: 1.0}, "b": {2: 10.0}, "c": {2: 10.0}, "d": {2: 1.0}})
    layer, prog = diamond(10e6, 5e6)
    tl = simulate(layer, prog, p, layers=1)
    by = {iv.node: iv for iv in tl.intervals}
    # both run at 1/1.5 until one finishes: both have 10 us of work, so both end at 1 + 15
    assert by["b"].end == pytest.approx(16.0) and by["c"].end == pytest.approx(16.0)
    assert by["d"].start == pytest.approx(16.0) and per_layer_us(tl, 1) == pytest.approx(17.0)


def test_fence_and_slowdown_and_lanes():
    p = profile(node_us={"a": {2: 1.0}, "b": {2: 4.0}, "c": {2: 8.0}, "d": {2: 1.0}},
                fence_us=Param(2.0, "t"), concurrency_slowdown=Param(1.0, "t"))
    layer, prog = diamond(0.0, 0.0)
    tl = simulate(layer, prog, p, layers=1)
    by = {iv.node: iv for iv in tl.intervals}
    assert by["c"].start == pytest.approx(3.0)  # cross-lane edge a -> c pays the fence
    # b starts at 1, runs at 1/2 while c runs (from 3): 2 us alone, then 2 us of work at half rate
    assert by["b"].end == pytest.approx(7.0)
    assert by["c"].end == pytest.approx(3.0 + 4.0 + 6.0)  # 2 us of work in 4 us at half rate, 6 alone
    assert by["d"].start == pytest.approx(by["c"].end + 2.0)
    assert tl.streams == ["alt", "main"]


def test_kernels_released_together_the_first_dispatched_keeps_its_pace():
    """b (main, dispatched first) and c (alt) are both released by a; c one fence later, which
    still counts as together. Their measured excess e gives the makespan max + e * min."""
    p = profile(node_us={"a": {2: 1.0}, "b": {2: 4.0}, "c": {2: 6.0}, "d": {2: 1.0}},
                fence_us=Param(0.5, "t"), pair_excess={"b|c": {2: 0.5}})
    layer, prog = diamond(0.0, 0.0)
    by = {iv.node: iv for iv in simulate(layer, prog, p, layers=1).intervals}
    assert by["b"].end == pytest.approx(5.0)  # full pace
    # c at (1 - 0.5) * 4 / 4 = 0.5 from 1.5 to 5 (1.75 us of work), then 4.25 alone
    assert by["c"].start == pytest.approx(1.5) and by["c"].end == pytest.approx(9.25)
    # past e = 1 the second waits for the first, which itself slows to 4 / (6 + 1.5 * 4 - 6):
    # b alone until c's release (0.5 us of work), the other 3.5 us at 2/3; c starts when b ends
    p = replace(p, pair_measures=pair_measures({"b|c": {2: 1.5}}))
    by = {iv.node: iv for iv in simulate(layer, prog, p, layers=1).intervals}
    assert by["b"].end == pytest.approx(1.5 + 3.5 * 1.5)
    assert by["c"].start == pytest.approx(by["b"].end) and by["c"].end == pytest.approx(by["b"].end + 6.0)


def test_a_kernel_joining_a_running_one_shares_alike_and_unmeasured_pairs_by_sm_demand():
    # b waits 3 us of launch gap behind a, so c (released at 1) runs first; measured c|b excess
    # 0.5: both at 1 / 1.5 while both run
    p = profile(node_us={"a": {2: 1.0}, "b": {2: 4.0}, "c": {2: 4.0}, "d": {2: 1.0}},
                launch_gap_us=Param(3.0, "t"), pair_excess={"c|b": {2: 0.5}},
                sm_demand={"b": {2: 0.75}, "c": {2: 0.5}})
    layer, prog = diamond(0.0, 0.0)
    by = {iv.node: iv for iv in simulate(layer, prog, p, layers=1).intervals}
    # c alone 1 -> 4 (3 us of work), then 1 us of work at 1/1.5: ends at 5.5, b 1 us of work by then
    assert by["c"].end == pytest.approx(5.5) and by["b"].end == pytest.approx(5.5 + 3.0)
    # the other order was not measured: SM demands add up to 1.25, both run at 1/1.25
    p = replace(p, pair_measures=pair_measures({"b|c": {2: 0.5}}))
    by = {iv.node: iv for iv in simulate(layer, prog, p, layers=1).intervals}
    assert by["c"].end == pytest.approx(4.0 + 1.25) and by["b"].end == pytest.approx(5.25 + 4.0 - 1.0)


def test_pair_excess_of_the_demand_model():
    p = profile()
    assert pair_excess(p, Kernel(10.0, 0.0, 0.5), Kernel(4.0, 0.0, 0.5)) == pytest.approx(0.0)
    assert pair_excess(p, Kernel(10.0, 0.0, 1.0), Kernel(4.0, 0.0, 1.0)) == pytest.approx(1.0)
    # demands 1.2: the shorter ends at 4 * 1.2, the longer has 10 - 4 left: (4.8 + 6 - 10) / 4
    assert pair_excess(p, Kernel(10.0, 0.0, 0.6), Kernel(4.0, 0.0, 0.6)) == pytest.approx(0.2)
    # HBM: two kernels at 80% of the bandwidth each run at 1 / 1.6
    assert pair_excess(p, Kernel(10.0, 0.8, 0.0), Kernel(10.0, 0.8, 0.0)) == pytest.approx(0.6)


def test_a_graph_with_branches_pays_its_entry_once_per_replay_and_its_own_launch_gap():
    p = profile(node_us={"a": {2: 1.0}, "b": {2: 2.0}, "c": {2: 2.0}, "d": {2: 1.0}},
                multi_stream_graph_entry_us=Param(6.0, "t"), launch_gap_us=Param(0.1, "t"),
                multi_stream_launch_gap_us=Param(0.5, "t"))
    layer, prog = diamond(0.0, 0.0)
    # a, then b || c, then d on one lane: 3 gaps per layer (the replay's last one uncounted)
    assert per_layer_us(simulate(layer, prog, p, layers=2), 2) == pytest.approx((6.0 + 2 * 4.0 + 5 * 0.5) / 2)
    serial = Program([Launch(n, "main") for n in "abcd"])  # no branch: no entry, the plain gap
    assert per_layer_us(simulate(layer, serial, p, layers=2), 2) == pytest.approx((2 * 6.0 + 7 * 0.1) / 2)


def test_launch_gap_and_fence_per_batch_and_a_gap_below_0_shortens_every_kernel():
    """Measured at batches 1 and 4, interpolated on log(batch) between. Below 0 the profiled node
    times read longer than the kernels run: each kernel (b has two) is that much shorter."""
    p = profile(node_us={n: {1: 2.0, 4: 2.0} for n in "abcd"}, node_kernels={"b": 2},
                launch_gap_us=per_batch({1: -0.2, 4: 0.4}, "t"), fence_us=per_batch({1: 1.0, 4: 3.0}, "t"))
    serial = Program([Launch(n, "main") for n in "abcd"])

    def layer_us(batch: int, prog: Program | None = None) -> float:
        layer, diamond_prog = diamond(0.0, 0.0, batch)
        return per_layer_us(simulate(layer, prog or diamond_prog, p, layers=1), 1)
    assert layer_us(1, serial) == pytest.approx(4 * 2.0 - 5 * 0.2)
    assert layer_us(4, serial) == pytest.approx(4 * 2.0 + 4 * 0.4)  # after a, inside b, after b, after c
    assert layer_us(2, serial) == pytest.approx(4 * 2.0 + 4 * 0.1)  # gap halfway in log(batch)
    # the diamond: a, fence, c on alt (its one kernel shortened), fence, d
    assert layer_us(1) == pytest.approx(3 * 1.8 + 2 * 1.0)
    assert layer_us(4) == pytest.approx(3 * 2.0 + 2 * 3.0)


def test_a_per_batch_parameter_round_trips_and_one_value_still_loads(tmp_path):
    p = profile(launch_gap_us=per_batch({1: -0.143, 64: 0.25}, "serial layout"))
    assert p.launch_gap_us.value == pytest.approx(0.0535)  # the median, for one-line summaries
    (tmp_path / "p.yaml").write_text(dump_profile(p))
    again = load_profile(str(tmp_path / "p.yaml"))
    assert again.launch_gap_us == p.launch_gap_us and again.launch_gap_us.at(8) == pytest.approx(0.0535)
    assert ("launch_gap_us", "-0.143 at b1, 0.25 at b64", "serial layout") in again.describe()
    mi = load_profile("mi355x")
    assert mi.launch_gap_us.by_batch is None and mi.launch_gap_us.at(64) == mi.launch_gap_us.value == 0.0
    assert mi.fence_us.spread_at(64) == 0.35 and mi.provenance.basis == "published"
    (tmp_path / "mi.yaml").write_text(dump_profile(mi))
    assert load_profile(str(tmp_path / "mi.yaml")).hip_source == mi.hip_source != ""  # the queue rule's source


def test_a_per_batch_parameter_that_is_not_numbers_is_one_clear_failure(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(dump_profile(profile(launch_gap_us=per_batch({1: 0.1}, "x"))).replace(
        "1: 0.1", "1: fast"))
    with pytest.raises(Failure, match=r"p.yaml: launch_gap_us.by_batch.1: 'fast' is not a number; accepted: any finite"):
        load_profile(str(path))


def test_a_cpu_run_is_simulated(tmp_path):
    r = CliRunner().invoke(app, ["run", str(SCENARIOS / "a_v4.yaml"), "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert "simulated on profile mi355x: a prediction" in " ".join(r.output.split()) and "bitwise equal" in r.output
    stem = "a_v4-glm5-b4-ctx8192-tp8-page64-kvfp8-sim-mi355x"
    assert (tmp_path / f"{stem}.json").exists() and (tmp_path / f"{stem}.trace.json.gz").exists()


def test_unknown_profile_is_one_clear_line():
    r = CliRunner().invoke(app, ["sim", str(SCENARIOS / "a_v4.yaml"), "--profile", "mi400"])
    assert r.exit_code == EXIT_BAD_INPUT and "no simulator profile 'mi400'; shipped: h100, h200, mi355x" in r.output
