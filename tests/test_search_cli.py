"""`streamlab search` end to end: the JSON, the written winner (loads, validates, simulates to the
number the search predicted), the GPU step's entry point, the compare report, and bad input."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

from streamlab.cli import app
from streamlab.errors import EXIT_BAD_INPUT, Failure
from streamlab.layer import Layer, Node, TensorSpec, Variant
from streamlab.models import TINY, RankDims, Shape
from streamlab.results import SCHEMA, SearchRanking, from_json
from streamlab.scenario import load
from streamlab.search.enumerate import Limits
from streamlab.search.find import Request, find, room_for_overlap
from streamlab.search.rank import VariantSpace
from streamlab.search.report import print_result
from streamlab.search.write import top_scenarios
from streamlab.sim import load_profile
from streamlab.sim.engine import per_layer_us, simulate

runner = CliRunner()
FAST = ["--model", "tiny", "--tp", "1", "--barriers", "0", "--workers", "1", "--no-report"]


def search(*args: str):
    return runner.invoke(app, ["search", *args])


@pytest.fixture(scope="module")
def result():
    return find(Request(model="tiny", shape=Shape(tp=1), batches=(4, 64), profile="h100", limits=Limits(2, 4, 0), top=3, workers=2))


def test_json_lists_ranked_candidates_with_layouts_predictions_and_explanations(tmp_path):
    out = search(*FAST, "--profile", "h100", "--batch", "4", "--top", "3", "--json", "--out", str(tmp_path))
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout)
    assert (doc["schema"], doc["kind"]) == (SCHEMA, "search")
    got = from_json(doc, SearchRanking)
    (b,) = got.batches
    top = b.top
    assert [c.rank for c in top] == [1, 2, 3]
    assert [c.predicted_us for c in top] == sorted(c.predicted_us for c in top)
    assert all(c.bound_us <= c.predicted_us + 1e-9 for c in top)
    assert top[0].predicted_us < b.serial.predicted_us and b.serial.vs_serial_us == 0
    assert top[0].vs_serial_us == pytest.approx(top[0].predicted_us - b.serial.predicted_us)
    assert set(top[0].layout.streams) == {"main", "alt"}
    low, high = top[0].interval_us  # the simulator's prediction interval
    assert top[0].explanation.overlaps and low < top[0].predicted_us < high
    tally = b.tally
    assert tally.complete and tally.simulated + tally.bounded == tally.considered
    shipped = {s.scenario: s for s in b.shipped}
    assert set(shipped) >= {"serial", "a_v4", "pr23562", "a_v4_moe_dual"}
    best = min((s for s in b.shipped if s.predicted_us is not None and not s.serial), key=lambda s: s.predicted_us)
    assert b.best_shipped == best.scenario and shipped["serial"].serial
    assert got.profile.name == "h100" and got.request.model == "tiny" and got.request.limits.max_barriers == 0
    winner = tmp_path / "tiny-b4-s2-h100.yaml"
    assert got.written == (str(winner),)
    scen = load(winner)  # loads and validates like a shipped scenario
    simulated = per_layer_us(simulate(scen.layer, scen.program, load_profile("h100"), 4), 4)
    assert simulated == pytest.approx(top[0].predicted_us, abs=1e-9)


def test_a_winner_carries_how_it_was_found(result, tmp_path):
    from streamlab.search.write import write_winners
    paths = write_winners(result, tmp_path, command="streamlab search --model tiny")
    assert [p.name for p in paths] == ["tiny-b4-s2-h100.yaml", "tiny-b64-s2-h100.yaml"]
    text = paths[1].read_text()
    best = result.batches[1].best
    assert f"predicted: {best.candidate.predicted.us:.1f} us per layer" in text
    assert "command:   streamlab search --model tiny" in text and "profile:   h100 (cuda lanes)" in text
    assert "equivalence classes" in text and "Predicted, not measured." in text
    doc = yaml.safe_load(text)
    assert doc["shape"]["batch"] == 64 and doc["name"] == "found_tiny_b64_s2_h100"
    scen = load(paths[1])
    assert per_layer_us(simulate(scen.layer, scen.program, result.profile, 4), 4) == pytest.approx(
        best.candidate.predicted.us, abs=1e-9)


def test_both_batches_rank_and_place_serial(result):
    assert [o.batch for o in result.batches] == [4, 64]
    for o in result.batches:
        ranked = [r.candidate.predicted.us for r in o.top]
        assert ranked == sorted(ranked) and ranked[0] <= o.serial.candidate.predicted.us
        serial = next(s for s in o.shipped if s.name == "serial")
        assert serial.serial and serial.candidate == o.serial.rank
        assert serial.predicted.us == pytest.approx(o.serial.candidate.predicted.us)
        assert o.tally.simulated >= len(o.top) and o.gap_us == 0.0


def test_top_scenarios_are_files_with_the_overlaps_they_need(result, tmp_path):
    found = top_scenarios(result, 4, tmp_path, 2)
    assert [f.rank for f in found] == [1, 2]
    for f in found:
        scen = load(f.path)
        lane = {op.node: op.stream for op in scen.program.launches}
        assert f.may_overlap and all(lane[a] != lane[b] for a, b in f.may_overlap)
        assert set(f.unmeasured) <= {p for pair in f.may_overlap for p in (pair, pair[::-1])}
        assert f.predicted.low < f.predicted.us < f.predicted.high
        assert {(o.first, o.second) for o in f.overlaps} <= {p for pair in f.may_overlap for p in (pair, pair[::-1])}
    with pytest.raises(Failure, match="batch 16 was not searched"):
        top_scenarios(result, 16, tmp_path)


def test_each_top_layout_says_what_its_prediction_rests_on_unmeasured(result):
    console = Console(record=True, width=400)
    print_result(console, result)
    text = console.export_text()
    for o in result.batches:
        for r in o.top:
            missing = r.candidate.predicted.unmeasured
            assert missing  # the tiny model's overlaps on h100: pairs its profile never measured
            a, b = missing[0]
            assert f"rests on {len(missing)} overlap(s) the profile has not measured: {a} || {b}" in text
    assert "`streamlab search --measure`" in text


def test_the_report_compares_winner_best_shipped_and_serial(tmp_path):
    out = search(*FAST[:-1], "--profile", "h100", "--out", str(tmp_path))
    assert out.exit_code == 0, out.output
    report = (tmp_path / "report-tiny-h100-b4" / "report.md").read_text()
    assert "found_tiny_b4_s2_h100" in report and "| serial |" in report
    assert (tmp_path / "report-tiny-h100-b4" / "timeline-b4.png").exists()
    # and the gate takes the found layout like any shipped one
    serial = yaml.safe_load(Path("scenarios/serial.yaml").read_text())
    serial.update(model="tiny", shape={**serial["shape"], "tp": 1})
    (tmp_path / "serial-tiny.yaml").write_text(yaml.safe_dump(serial))
    gate = runner.invoke(app, ["check", "--baseline", str(tmp_path / "serial-tiny.yaml"), "--candidate",
                               str(tmp_path / "tiny-b4-s2-h100.yaml"), "--device", "cpu", "--profile", "h100",
                               "--json", "--out", str(tmp_path / "check")])
    verdict = json.loads(gate.stdout)
    assert verdict["candidate"] == "found_tiny_b4_s2_h100" and gate.exit_code == verdict["exit_code"]
    assert verdict["batches"][0]["candidate_us"] <= verdict["batches"][0]["baseline_us"]


@pytest.mark.parametrize("args, message", [
    (["--streams", "0"], "Invalid value for '--streams'"),
    (["--streams", "5"], "Invalid value for '--streams'"),
    (["--streams", "1"], "no room for overlap: --streams 1"),
    (["--top", "-5"], "Invalid value for '--top'"),
    (["--batch", "0"], "--batch: shape.batch must be an integer from 1 to 65536, got 0"),
    (["--variant", "shared_expert=no"], "--variant 'shared_expert=no': give flag=true|false"),
    (["--profile", "nowhere"], "no simulator profile 'nowhere'"),
    (["--tp", "8"], "--model tiny at --tp 8: num_attention_heads=4 is not divisible by tp=8"),
])
def test_bad_input_is_one_clear_line_and_exit_64(args, message, tmp_path):
    out = search(*FAST, "--out", str(tmp_path), *args)
    assert out.exit_code == EXIT_BAD_INPUT
    assert message in " ".join(out.output.split()) and "Traceback" not in out.output
    assert not list(tmp_path.iterdir())


def test_a_profile_without_the_models_nodes(tmp_path):
    doc = yaml.safe_load((resources.files("streamlab.sim") / "profiles" / "h200.yaml").read_text())
    for name in ("experts", "mla_decode"):
        del doc["node_us"][name]
    path = tmp_path / "partial.yaml"
    path.write_text(yaml.safe_dump(doc))
    out = search(*FAST, "--profile", str(path), "--out", str(tmp_path / "out"))
    assert out.exit_code == EXIT_BAD_INPUT
    text = " ".join(out.output.split())
    assert f"{path}: node_us: measured profile h200 has no latency for mla_decode, experts" in text
    assert "none can be searched" in text


def test_a_layer_where_nothing_can_overlap():
    t = {n: TensorSpec(n, (1,), "fp32") for n in ("h", "t0", "t1")}
    chain = Layer(RankDims(TINY, Shape(tp=1)), Variant(), t,
                  [Node("a", "noop", {"x": "h"}, {"o": "t0"}), Node("b", "noop", {"x": "t0"}, {"o": "t1"}),
                   Node("c", "noop", {"x": "t1"}, {"o": "h"})], {})
    spaces = {chain.variant: VariantSpace.of(chain, Limits())}
    with pytest.raises(Failure, match="no room for overlap: no two nodes of the layer can run at the same time") as e:
        room_for_overlap(Request(model="tiny"), spaces)
    assert e.value.code == EXIT_BAD_INPUT


def test_a_budget_stops_the_search_and_reports_its_gap():
    r = find(Request(model="tiny", shape=Shape(tp=1), profile="h100", limits=Limits(2, 4, 0), top=3, workers=1,
                     budget_s=0.01))
    (o,) = r.batches
    t = o.tally
    assert t.stopped and t.unvisited > 0 and t.simulated + t.bounded + t.unvisited == t.considered
    best = o.best.candidate
    assert t.floor <= best.predicted.us and o.gap_us == best.predicted.us - t.floor
    assert all(c.bound >= t.floor for c in (r_.candidate for r_ in o.top))


def test_three_streams_walk_with_a_partial_bound_from_the_two_stream_best():
    two = find(Request(profile="h200", limits=Limits(2, 4, 0), top=2, workers=2, variant=Variant()))
    three = find(Request(profile="h200", limits=Limits(3, 5, 0), top=2, workers=2, variant=Variant(), budget_s=60))
    (o2,), (o3,) = two.batches, three.batches
    t = o3.tally
    assert not t.complete and t.classes > 0 and t.cut > 0
    assert o3.best.candidate.predicted.us <= o2.best.candidate.predicted.us  # the 2-stream space is inside
    if t.stopped:  # the walk ran out of time: only the bound of every layout holds for the rest
        assert t.floor <= o3.best.candidate.predicted.us
    else:  # every subtree it did not walk was cut by its bound: the top is exact
        assert o3.gap_us == 0.0 and t.floor >= o3.top[-1].candidate.predicted.us
