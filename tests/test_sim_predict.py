"""Predictions: the interval's parts, the overlaps a layout creates (and what `calibrate --for`
would add), node latencies at other shapes, and the whole decode step."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from streamlab.cli import app
from streamlab.errors import Failure
from streamlab.layer import build_layer
from streamlab.scenario import load
from streamlab.schedule.program import Launch
from streamlab.schedule.validate import check
from streamlab.sim.costs import node_costs
from streamlab.sim.engine import run
from streamlab.sim.pairwise import add_pairs, with_pairs
from streamlab.sim.predict import (
    layout_overlaps,
    measure_command,
    missing_pairs,
    predict,
)
from streamlab.sim.profile import PairMeasure, Param
from streamlab.sim.profile_file import load_profile
from streamlab.sim.shape import node_latency, shape_spread
from streamlab.sim.step import dense_program, predict_step

SCENARIOS = Path(__file__).parent.parent / "scenarios"


def scenario(name: str, **shape):
    scen = load(SCENARIOS / f"{name}.yaml")
    return scen.override(**shape) if shape else scen


def test_the_interval_is_the_sum_of_its_parts_and_serial_has_only_the_calibration_noise():
    h100 = load_profile("h100")
    serial = predict(scenario("serial"), h100)
    assert [b.name for b in serial.bands] == ["calibration noise"]
    assert serial.half_width_us == pytest.approx(h100.calibration_noise.at(4) * serial.per_layer_us)
    dual = predict(scenario("a_v4_moe_dual"), h100)
    parts = {b.name: b.us for b in dual.bands}
    assert dual.high_us - dual.low_us == pytest.approx(2 * sum(parts.values()))
    kernels = sum(node_costs(scenario("a_v4_moe_dual").layer, h100).kernels)
    assert parts["launch gap"] == pytest.approx(h100.multi_stream_launch_gap_us.spread_at(4) * kernels)
    assert parts["unmeasured overlaps"] == pytest.approx(
        h100.overlap_model_spread.value * sum(o.shorter_us for o in dual.unmeasured))


def test_overlaps_come_from_the_replay_and_say_which_were_measured():
    h100 = load_profile("h100")
    scen = scenario("a_v4_moe_dual")
    overlaps = layout_overlaps(scen.layer, scen.program, h100)
    pairs = {o.pair: o.measured for o in overlaps}
    assert pairs["q_b_proj|idx_wq_b"] and pairs["router_gate|shared_gate_up"]
    # measured in the other order only: the engine keeps moe_topk first (released together, dispatched first)
    assert pairs["moe_topk|shared_gate_up"] is False and "shared_gate_up|moe_topk" in h100.pair_excess
    assert missing_pairs(scen.layer, scen.program, h100) == [(o.first, o.second) for o in overlaps if not o.measured]
    line = predict(scen, h100).overlaps_line()
    assert line == f"{len(overlaps) - 2} of {len(overlaps)} overlaps measured; 2 extrapolated: bmm_w_kc|idx_wk, moe_topk|shared_gate_up"
    assert measure_command(["scenarios/a_v4_moe_dual.yaml"], h100) == (
        "streamlab calibrate --measure --for scenarios/a_v4_moe_dual.yaml --profile h100 --out h100-more-pairs.yaml")
    serial = scenario("serial")
    assert layout_overlaps(serial.layer, serial.program, h100) == ()


def test_adding_the_missing_pairs_measures_them_and_narrows_the_interval():
    """What `calibrate --measure --for` does after measuring: add_pairs, then predict again."""
    h100 = load_profile("h100")
    scen = scenario("a_v4_moe_dual")
    before = predict(scen, h100)
    us = dict(zip(node_costs(scen.layer, h100).names, node_costs(scen.layer, h100).alone_us))
    new = [PairMeasure(4, a, b, us[a], us[b], max(us[a], us[b]) + 0.2 * min(us[a], us[b]))
           for a, b in missing_pairs(scen.layer, scen.program, h100)]
    more = add_pairs(h100, new, "test")
    after = predict(scen, more)
    assert {(o.first, o.second) for o in after.overlaps if o.measured} >= {(p.first, p.second) for p in new}
    assert after.half_width_us < before.half_width_us
    assert more.pair_excess["bmm_w_kc|idx_wk"] == {4: pytest.approx(0.2)}
    assert len(more.pair_measures) == len(h100.pair_measures) + len(new)
    assert with_pairs(h100, (), "none").overlap_model_spread.value == 1.0  # no pairs: the prior


def test_context_moves_the_layer_and_never_below_its_floors():
    h100 = load_profile("h100")
    per_layer = {n: predict(scenario("serial", context=n), h100).per_layer_us for n in (1, 2048, 8192, 65536, 1_000_000)}
    assert per_layer[8192] == pytest.approx(199.696, abs=1e-3)  # the calibration shape: as measured
    values = [per_layer[n] for n in sorted(per_layer)]
    assert values == sorted(values) and values[-1] > 2 * values[0]
    for n in (1, 1_000_000):
        layer = scenario("serial", context=n).layer
        hw = h100.ceilings
        for node in layer.nodes:
            lat = node_latency(layer, h100, node)
            calibrated = node_latency(scenario("serial").layer, h100, scenario("serial").layer.node(node.name))
            ratio = min(1.0, calibrated.us / hw.floor_us(scenario("serial").layer.node(node.name)))
            assert lat.us >= hw.floor_us(node) * ratio - 1e-9, node.name
    far = predict(scenario("serial", context=1_000_000), h100)
    assert far.moved and "context 1000000 (calibrated 8192)" in far.shape_line()
    assert {b.name for b in far.bands} == {"calibration noise", "shape"}
    kappa, how = shape_spread(h100)
    assert 0 < kappa < 1 and "predictions miss by" in how


def test_cli_sim_context_moves_with_n(tmp_path):
    outs = [CliRunner().invoke(app, ["sim", str(SCENARIOS / "serial.yaml"), "--profile", "h100", "--context", str(n),
                                     "--out", str(tmp_path)]) for n in (1, 1_000_000)]
    lines = [next(line for line in r.output.splitlines() if line.startswith("prediction")) for r in outs]
    assert lines[0] != lines[1] and "extrapolates" in outs[1].output


def test_batches_outside_the_measured_range_extrapolate_by_the_floor():
    h100 = load_profile("h100")
    b64, b128 = (predict(scenario("serial", batch=b), h100) for b in (64, 128))
    assert not b64.moved and b128.moved and b128.per_layer_us > b64.per_layer_us
    assert "batch 128 (measured 1 to 64)" in b128.shape_line()


def test_the_dense_layer_runs_the_attention_schedule_and_a_dense_mlp():
    scen = scenario("a_v4_moe_dual")
    dense = build_layer(scen.layer.dims, scen.layer.variant, dense=True)
    assert dense.dense and not scen.layer.dense
    assert dense.groups["dense_mlp"] == ["dense_gate_up", "dense_act", "dense_down"]
    assert dense.node("dense_gate_up").flops == 2 * 4 * 2 * 1536 * 6144  # 12288 / tp 8 per rank
    prog = dense_program(scen.program, set(scen.layer.groups["moe"]))
    names = [op.node for op in prog.launches]
    assert names[-5:] == ["post_norm", "dense_gate_up", "dense_act", "dense_down", "allreduce_mlp"]
    assert all(op.stream == "main" for op in prog.launches if op.node.startswith("dense"))
    assert check(dense, prog) == []  # no race: the same checker the scenarios pass
    assert len({op.node for op in prog.launches if isinstance(op, Launch)}) == len(dense.nodes)


def test_the_decode_step_on_mi355x_brackets_the_published_figures():
    mi = load_profile("mi355x")
    for name, published in (("serial", 21.21), ("a_v4_moe_dual", 24.45)):
        step = predict_step(scenario(name), mi)
        assert step.published_ms == published
        assert step.per_token_ms - step.half_width_ms <= published <= step.per_token_ms + step.half_width_ms
        assert (step.dense_layers, step.moe_layers) == (3, 75)
        assert step.dense.per_layer_us < step.moe.per_layer_us  # a dense MLP costs less than the MoE
    lm_head = next(o for o in predict_step(scenario("serial"), mi).outside if o.name == "lm_head")
    assert lm_head.us > 6144 * 19360 * 2 / 8000e3  # above its floor (bytes / 8 TB/s)


def test_an_uncalibrated_spread_widens_the_interval():
    h100 = load_profile("h100")
    scen = scenario("a_v4")
    wider = replace(h100, fence_us=replace(h100.fence_us, spread_by_batch={b: 2.0 for b in (1, 4, 16, 64)}))
    assert predict(scen, wider).half_width_us > predict(scen, h100).half_width_us
    none = replace(h100, overlap_model_spread=Param(0.0, "t"))
    assert predict(scen, none).half_width_us < predict(scen, h100).half_width_us
    assert run(scen.layer, scen.program, h100).per_layer_us == predict(scen, wider).per_layer_us


def test_three_kernels_at_once_are_extrapolated_whatever_pairs_were_measured():
    """bench/heldout/three_gemms.yaml: q_b_proj, idx_wq_b and idx_wk on three streams. The pair
    q_b_proj|idx_wq_b is measured, but beside a third kernel the demand model sets the pace:
    no pair measurement replaces that, so calibrate --for leaves those to the demand model."""
    h100 = load_profile("h100")
    scen = load(Path(__file__).parent.parent / "bench" / "heldout" / "three_gemms.yaml")
    overlaps = {o.pair: o for o in layout_overlaps(scen.layer, scen.program, h100)}
    trio = {"q_b_proj|idx_wq_b", "q_b_proj|idx_wk", "idx_wq_b|idx_wk"}
    assert trio <= set(overlaps) and "q_b_proj|idx_wq_b" in h100.pair_excess
    assert all(overlaps[p].crowded and not overlaps[p].measured for p in trio)
    missing = missing_pairs(scen.layer, scen.program, h100)
    assert not {f"{a}|{b}" for a, b in missing} & trio
    assert all(not overlaps[f"{a}|{b}"].crowded for a, b in missing)
    assert "beside a third kernel" in predict(scen, h100).overlaps_line()


def test_cli_sim_step_and_explain(tmp_path):
    r = CliRunner().invoke(app, ["sim", str(SCENARIOS / "a_v4_moe_dual.yaml"), "--profile", "mi355x", "--step",
                                 "--explain", "--out", str(tmp_path)], env={"COLUMNS": "300"})
    assert r.exit_code == 0, r.output
    assert "decode step" in r.output and "published 24.45 ms" in r.output
    assert "indexer chain wall" in r.output and "+7.0" in r.output
    doc = json.loads((tmp_path / "a_v4_moe_dual-glm5-b4-ctx8192-tp8-page64-kvfp8-sim-mi355x.json").read_text())
    assert doc["kind"] == "run" and doc["step"]["published_ms"] == 24.45
    assert doc["prediction"]["low_us"] < doc["latency"]["median"] == doc["prediction"]["per_layer_us"]


def test_pairs_added_to_a_profile_without_any_name_their_variant():
    """A profile with no pairs yet: `calibrate --for` adds some with the variant they ran in."""
    h200 = replace(load_profile("h200"), pair_measures=(), pair_variant={})
    unfused = {"fused_rope_cat_cache": True, "shared_expert_fused": False, "preshuffle_index_cache": True}
    pair = PairMeasure(4, "experts", "shared_down", 60.0, 5.0, 61.0)
    more = add_pairs(h200, [pair], "test", variant=unfused)
    assert more.pair_variant == unfused and more.pair_excess == {"experts|shared_down": {4: pytest.approx(0.2)}}
    with pytest.raises(Failure, match="pair_variant: the profile's pairs ran in"):
        add_pairs(more, [pair], "test", variant={**unfused, "shared_expert_fused": True})
