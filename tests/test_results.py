"""The result files: every kind the package writes validates against the JSON Schema shipped in
streamlab/schemas/ (written through the real commands), the shipped schemas are those the types
give, every result committed under bench/results/ and traces/ still loads, and a file of another
kind or schema is refused with one message naming it."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

import streamlab
from streamlab.cli import app
from streamlab.errors import EXIT_BAD_INPUT, Failure
from streamlab.results import (
    KINDS,
    SCHEMA,
    AllReduceSweep,
    CheckVerdict,
    CompareResult,
    RunResult,
    SearchMeasurement,
    SearchRanking,
    TraceDiff,
    TraceSummary,
    dump,
    from_json,
    json_schema,
    load,
    load_any,
    load_runs,
    to_json,
)

jsonschema = pytest.importorskip("jsonschema", reason="jsonschema (the dev extra) is not installed, as on the GPU image")

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ROOT / "scenarios"
SHIPPED = Path(streamlab.__file__).parent / "schemas"
A_V4 = "a_v4-glm5-b4-ctx8192-tp8-page64-kvfp8-sim-mi355x.json"  # what `run scenarios/a_v4.yaml` writes here


def validate(doc: dict, kind: str) -> None:
    schema = json.loads((SHIPPED / f"{kind}.schema.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(doc)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_the_shipped_schemas_are_the_ones_the_types_give(kind):
    shipped = json.loads((SHIPPED / f"{kind}.schema.json").read_text())
    assert shipped == json_schema(KINDS[kind]), "stale: run `streamlab schema` and commit streamlab/schemas/"
    jsonschema.Draft202012Validator.check_schema(shipped)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """`streamlab run` and `streamlab compare` on the CPU: result files as users get them."""
    out = tmp_path_factory.mktemp("runs")
    r = CliRunner().invoke(app, ["run", str(SCENARIOS / "a_v4.yaml"), "--out", str(out)])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["compare", str(SCENARIOS / "serial.yaml"), str(SCENARIOS / "a_v4.yaml"),
                                 "--batch", "4", "--out", str(out / "compared"), "--report", str(out / "cmp")])
    assert r.exit_code == 0, r.output
    return out


def test_a_run_result_validates_and_reads_back_as_written(runs):
    doc = json.loads((runs / A_V4).read_text())
    assert (doc["schema"], doc["kind"]) == (SCHEMA, "run")
    validate(doc, "run")
    r = load(runs / A_V4, RunResult)
    assert to_json(r) == doc
    assert r.scenario == "a_v4" and not r.measured and r.source == "simulated, profile mi355x"
    assert r.anatomy.allreduce_per_call_us.median == pytest.approx(18.2, abs=0.1)
    assert r.equal_to_serial and r.protocol is None and r.device_profile


def test_a_compare_report_validates_and_holds_its_runs(runs):
    doc = json.loads((runs / "cmp" / "report.json").read_text())
    validate(doc, "compare")
    c = load(runs / "cmp" / "report.json", CompareResult)
    assert [r.scenario for r in c.runs] == ["serial", "a_v4"] and c.complete and not c.failures
    assert load_runs(runs / "cmp" / "report.json") == list(c.runs)


@pytest.mark.gpu
def test_a_measured_run_validates_and_keeps_its_protocol_and_replays(tmp_path):
    """`streamlab run` on the GPU: the measured result, its protocol and every timed replay."""
    r = CliRunner().invoke(app, ["run", str(SCENARIOS / "serial.yaml"), "--device", "cuda", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    doc = json.loads(next(tmp_path.glob("serial-glm5-b4-ctx8192-tp8-page64-kvfp8-*-triton.json")).read_text())
    validate(doc, "run")
    run = from_json(doc, RunResult)
    assert run.measured and run.protocol.measure.iters == 50 and run.protocol.warmup_s == 1.0
    assert len(run.latency.per_replay_us) >= run.protocol.measure.repeats * run.protocol.measure.iters
    assert run.latency.p20 <= run.latency.median <= run.latency.p80 and run.ceilings.copy_gbs > 1000
    assert run.anatomy.allreduce == "emulated" and run.budget.floor_held_us > 0
    assert all(n.in_graph_us is not None and n.kernels >= 1 for n in run.nodes.values())


def test_sim_writes_a_run_result_that_was_not_checked_against_serial(tmp_path):
    r = CliRunner().invoke(app, ["sim", str(SCENARIOS / "serial.yaml"), "--profile", "h100", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "serial-glm5-b4-ctx8192-tp8-page64-kvfp8-sim-h100.json").read_text())
    validate(doc, "run")
    assert doc["equal_to_serial"] is None and doc["source"] == "simulated, profile h100"


def test_a_check_verdict_validates(runs):
    r = CliRunner().invoke(app, ["check", "--baseline", str(SCENARIOS / "serial.yaml"), "--candidate",
                                 str(runs / A_V4), "--json", "--out", str(runs)])
    doc = json.loads(r.output)
    validate(doc, "check")
    v = from_json(doc, CheckVerdict)
    # a_v4 on the mi355x profile: +35.9 us predicted, beyond the interval of the difference (+-21.3)
    assert r.exit_code == v.exit_code == 1 and v.verdict == "do not enable" and v.reason is None
    assert v.batches[0].delta_us > v.batches[0].band_us > 0


def test_a_trace_summary_validates_and_reads_back_as_written(tmp_path):
    """`trace summary --json` of our own run with a what-if and the plot: every part typed, the
    file the schema describes, read back equal to what was written."""
    r = CliRunner().invoke(app, ["trace", "summary", str(ROOT / "traces/h100-2026-11-22/a_v4-b4.trace.json.gz"),
                                 "--what-if", "stall=0", "--out", str(tmp_path), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert (doc["schema"], doc["kind"]) == (SCHEMA, "trace-summary")
    validate(doc, "trace-summary")
    s = from_json(doc, TraceSummary)
    assert to_json(s) == doc
    assert s.layers.method == "recorded" and s.layers.steady == 20 and s.allreduce_per_call_us.n == 40
    assert s.nodes["o_proj"].occurrences == 20 and s.loader.format == "streamlab"
    assert s.dependencies.origin == "scenario" and s.dependencies.steps == 5
    assert s.critical_path.span_us > 0 and s.critical_path.busy_us + s.critical_path.gaps_us \
        == pytest.approx(s.critical_path.span_us - s.critical_path.kernels[0].start_us)
    assert s.what_if.what_if == ("stall=0",) and s.what_if.matched[0].what == "stalls"
    assert s.exposed_communication.per_layer_us.n == 20 and s.roofline.hardware.name == "h100"
    assert [Path(p).suffix for p in s.plots] == [".png", ".svg"]


def test_a_trace_summary_survives_the_loader(tmp_path):
    """Written with results.dump, read with results.load: equal, nothing lost (a trace of no
    step, with its not_a_step record, too)."""
    from streamlab.trace.explain import summarize_traces

    s = summarize_traces([ROOT / "traces/h100-2026-11-22/a_v4_moe_dual-b4.trace.json.gz"],
                         what_ifs=["allreduce=0.5x", "idx_topk=5us"]).summary
    dump(s, tmp_path / "s.json")
    assert load(tmp_path / "s.json", TraceSummary) == s and replace(s, file="x") != s
    assert load_any(tmp_path / "s.json") == s
    with pytest.raises(Failure, match=r"s.json: a trace summary \(schema 2\), not a run result"):
        load(tmp_path / "s.json", RunResult)


def test_a_trace_diff_validates():
    trace = ROOT / "traces/h100-2026-11-22"
    r = CliRunner().invoke(app, ["trace", "diff", str(trace / "serial-b4.trace.json.gz"),
                                 str(trace / "a_v4-b4.trace.json.gz"), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    validate(doc, "trace-diff")
    d = from_json(doc, TraceDiff)
    assert to_json(d) == doc and d.summary_b.layers.steady == 20
    wall = d.metrics[0]
    assert wall.metric == "wall us (median)" and wall.delta == pytest.approx(wall.b - wall.a)


def test_an_allreduce_sweep_validates(tmp_path):
    env = {"PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin:/bin"}
    p = subprocess.run([sys.executable, "-m", "streamlab", "allreduce", "--world", "2", "--impl", "nccl",
                        "--sizes", "1K", "--iters", "2", "--warmup", "0", "--calls", "1", "--device", "cpu",
                        "--rank-timeout", "30", "--out", str(tmp_path)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120, check=False)
    assert p.returncode == 0, p.stderr[-2000:]
    doc = json.loads((tmp_path / "allreduce-w2-nccl-cpu.json").read_text())
    validate(doc, "allreduce-sweep")
    assert load(tmp_path / "allreduce-w2-nccl-cpu.json", AllReduceSweep).rows[0].correct


def test_a_search_ranking_validates_and_reads_back_as_written(tmp_path):
    """`search --json` (tiny model, CPU): the file the schema describes, every part typed."""
    r = CliRunner().invoke(app, ["search", "--model", "tiny", "--tp", "1", "--barriers", "0", "--workers", "1",
                                 "--no-report", "--profile", "h100", "--batch", "4", "--top", "2",
                                 "--sm-budgets", "half", "--json", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    validate(doc, "search")
    (tmp_path / "search.json").write_text(r.stdout)
    got = load_any(tmp_path / "search.json")
    assert isinstance(got, SearchRanking) and to_json(got) == doc
    (b,) = got.batches
    assert len(b.top) == 2 and b.top[0].rank == 1 and b.serial.explanation is None
    assert b.sm_budgets is not None and b.sm_budgets.shares == (0.5,) and "not measured" in b.sm_budgets.source
    assert got.source == "simulated, profile h100" and got.written == (str(tmp_path / "tiny-b4-s2-h100.yaml"),)


COMMITTED = sorted(p for d in ("bench/results", "traces") for p in (ROOT / d).rglob("*.json"))
NOT_RESULTS = {"pairwise.json", "repeat_protocol.json", "bench.json", "whatif.json", "sim_speed.json",
               "search_speed.json", "manifest.json"}  # bench records, and a calibration work folder's manifest


def is_result(path: Path) -> bool:
    """Bench records and a calibration's pair stages (pairs-N.json, pairs-for-N.json) are not results."""
    return path.name not in NOT_RESULTS and not path.name.startswith("pairs-")


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_committed_result_still_loads(path):
    if not is_result(path):
        with pytest.raises(Failure, match="not a streamlab result"):
            load_any(path)
        return
    got = load_any(path)
    assert isinstance(got, (RunResult, CompareResult, AllReduceSweep, SearchRanking, SearchMeasurement))
    validate(to_json(got), got.KIND)


def test_old_runs_read_as_they_were_meant():
    """A bench matrix (schema 0): its runs, its stall sites named the right way round, the
    values it never recorded as such."""
    matrix = load(ROOT / "bench/results/h100-2026-11-22/matrix.json", CompareResult)
    assert len(matrix.runs) == 16 and {r.batch for r in matrix.runs} == {1, 4, 16, 64}
    r = next(r for r in matrix.runs if r.scenario == "a_v4" and r.batch == 4)
    assert r.measured and r.latency.median == pytest.approx(211.2, abs=0.05) and r.latency.per_replay_us == ()
    assert r.budget.launch_us == pytest.approx(2.0) and r.ceilings.copy_gbs > 2000
    (site,) = r.anatomy.stall_sites  # the file says {"after": "input_norm", "before": "qkv_a_proj"}
    assert (site.before, site.after, site.count) == ("input_norm", "qkv_a_proj", 5)
    assert math.isnan(site.total_us) and site.per_layer == 5 / 20
    old = load(ROOT / "bench/results/h100-2026-11-21/matrix.json", CompareResult).runs[0]
    assert old.latency.drift == 0.0 and old.nodes["o_proj"].in_graph_us.mean is None


def test_a_file_of_another_kind_or_schema_is_one_clear_refusal(tmp_path, runs):
    report = runs / "cmp" / "report.json"
    with pytest.raises(Failure, match=r"report.json: a compare report \(schema 2\), not a run result") as e:
        load(report, RunResult)
    assert e.value.code == EXIT_BAD_INPUT
    with pytest.raises(Failure, match=r"matrix.json: a compare report \(schema 0\), not a run result"):
        load(ROOT / "bench/results/h100-2026-11-22/matrix.json", RunResult)
    newer = tmp_path / "newer.json"
    newer.write_text(json.dumps({**json.loads((runs / A_V4).read_text()), "schema": SCHEMA + 1}))
    with pytest.raises(Failure, match=rf"newer.json: result schema {SCHEMA + 1}; this streamlab reads "
                                      rf"schemas 0 to {SCHEMA} \(the file is newer: update streamlab\)"):
        load(newer, RunResult)
    before = tmp_path / "search-before.json"  # what `search --json` printed before its kind "search"
    before.write_text(json.dumps({"schema": 1, "source": "simulated, profile h100", "request": {}, "batches": []}))
    with pytest.raises(Failure, match=r"search-before.json: result schema 1; .* run that search again"):
        load_any(before)
    bad = tmp_path / "bad.json"
    doc = json.loads((runs / A_V4).read_text())
    doc["latency"]["median"] = "fast"
    bad.write_text(json.dumps(doc))
    with pytest.raises(Failure, match=r"bad.json: latency.median: must be a number, got \"fast\""):
        load(bad, RunResult)


def test_a_result_survives_a_round_trip(runs):
    r = load(runs / A_V4, RunResult)
    again = from_json(json.loads(json.dumps(to_json(r))), RunResult)
    assert again == r and replace(again, scenario="x") != r
