"""What-if replays: the option grammar, exact answers on small timelines built here, the trace
reproduced unchanged, and predictions on our H100 runs checked against other measured runs.

Hand-built timestamps are multiples of 0.5 us, so replayed times are exact and asserted with ==.
"""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from streamlab.analysis import summarize
from streamlab.errors import EXIT_BAD_INPUT, Failure
from streamlab.timeline import Edge, Interval, Source, Timeline
from streamlab.trace.cli import app
from streamlab.trace.deps import dependency_graph, for_trace
from streamlab.trace.formats import load_trace
from streamlab.trace.whatif import Change, parse_change, replay, replayed, what_if

ROOT = Path(__file__).resolve().parents[1]
H100 = ROOT / "traces" / "h100-2026-11-22"
OLD = ROOT / "traces" / "h100-2026-11-21"
runner = CliRunner()


def small() -> Timeline:
    """Stream A: a [0, 10), c [12, 20), d [21, 25); stream B: b [11, 15) waits for a (event);
    d waits for b (event) and c (stream). Layer 0 holds a, b, c; layer 1 holds d."""
    ivs = [Interval("gemm_a", "A", 0.0, 10.0, layer=0), Interval("norm_b", "B", 11.0, 15.0, layer=0),
           Interval("gemm_c", "A", 12.0, 20.0, layer=0), Interval("attn_d", "A", 21.0, 25.0, layer=1)]
    return Timeline(ivs, Source("trace"), layers=[(0.0, 21.0), (21.0, 25.0)],
                    edges=[Edge(0, 1, "event"), Edge(1, 3, "event")])


def graph(tl: Timeline):
    return dependency_graph(tl, origin="events", note="test")


def spans(tl: Timeline) -> list[tuple[str, float, float]]:
    return [(iv.name, iv.start, iv.end) for iv in tl.intervals]


def test_unchanged_replay_is_the_trace():
    tl = small()
    assert spans(replay(graph(tl), [iv.duration for iv in tl.intervals])) == spans(tl)
    loaded = load_trace(H100 / "a_v4_moe_dual-b4.trace.json.gz")
    g = for_trace(loaded.timeline, loaded.info)
    again = replay(g, [iv.duration for iv in loaded.timeline.intervals])
    assert spans(again) == spans(loaded.timeline) and again.layers == loaded.timeline.layers


def test_a_slower_kernel_on_another_stream_moves_what_waits_for_it():
    tl = small()
    changes = [parse_change("norm=3.5x", tl)]  # b: 4 -> 14 us
    after = replayed(graph(tl), changes)
    # b [11, 25); d waited 1 us after c (its latest dependency): now 1 us after b
    assert spans(after) == [("gemm_a", 0.0, 10.0), ("norm_b", 11.0, 25.0),
                            ("gemm_c", 12.0, 20.0), ("attn_d", 26.0, 30.0)]
    assert after.layers == [(0.0, 26.0), (26.0, 30.0)]  # chained: ends where d starts
    result = what_if(graph(tl), changes)
    assert (result.layer_wall_us.before, result.layer_wall_us.after) == (12.5, 15.0)  # median of 2
    assert [(s.before, s.after) for s in result.per_layer_us] == [(21.0, 26.0), (4.0, 4.0)]
    assert result.matched[0].matched == 1 and result.matched[0].us_per_step.after == 14.0


def test_a_faster_kernel_moves_its_successors_by_their_lags():
    tl = small()
    changes = [parse_change("gemm_a=4us", tl)]  # regex on names
    # a [0, 4); b 1 us after a: [5, 9); c 2 us after a by stream order: [6, 14); d 1 us after c
    assert spans(replayed(graph(tl), changes)) == [("gemm_a", 0.0, 4.0), ("norm_b", 5.0, 9.0),
                                                   ("gemm_c", 6.0, 14.0), ("attn_d", 15.0, 19.0)]
    step = what_if(graph(tl), changes).step_us
    assert (step.before, step.after, step.delta) == (25.0, 19.0, -6.0)


def test_a_time_sets_a_whole_call_keeping_its_kernels_shares():
    ivs = [Interval("k1", "0", 0.0, 6.0, "allreduce_attn", 0, "allreduce"),
           Interval("k2", "0", 6.0, 8.0, "allreduce_attn", 0, "allreduce"),
           Interval("k3", "0", 8.5, 9.5, "post_norm", 0)]
    tl = Timeline(ivs, Source("trace"), layers=[(0.0, 9.5)])
    after = replayed(graph(tl), [parse_change("allreduce=4us", tl)])
    assert spans(after) == [("k1", 0.0, 3.0), ("k2", 3.0, 4.0), ("k3", 4.5, 5.5)]


def test_stall_zero_removes_all_stream_idle_gaps():
    ivs = [Interval("a", "0", 0.0, 2.0, layer=0), Interval("b", "1", 1.0, 3.0, layer=0),
           Interval("c", "0", 7.0, 8.0, layer=0), Interval("d", "0", 8.5, 9.0, layer=0)]
    tl = Timeline(ivs, Source("trace"), layers=[(0.0, 9.0)], edges=[Edge(1, 2, "event")])
    stall = [parse_change("stall=0", tl)]
    # the 4 us stall before c goes; the 0.5 us launch gap before d stays
    assert spans(replayed(graph(tl), stall))[2:] == [("c", 3.0, 4.0), ("d", 4.5, 5.0)]
    m = what_if(graph(tl), stall).matched[0]
    assert (m.matched, m.what, m.us_per_step.before, m.us_per_step.after) == (1, "stalls", 4.0, 0.0)
    assert spans(replayed(graph(tl), [parse_change("stall=0.5x", tl)]))[2] == ("c", 5.0, 6.0)


@pytest.mark.parametrize("text, key, target, us, factor", [
    ("allreduce=10us", "allreduce", "class", 10.0, None),
    ("gemm=0.5x", "gemm", "class", None, 0.5),
    ("gemm_c=0.01ms", "gemm_c", "regex", 10.0, None),
    ("norm_b=500ns", "norm_b", "regex", 0.5, None),
    ("stall=0", "stall", "stall", 0.0, None),
    ("^attn=2 us", "^attn", "regex", 2.0, None),
])
def test_the_what_if_grammar(text, key, target, us, factor):
    tl = small()
    tl = Timeline(tl.intervals + [Interval("ncclDevKernel_AllReduce", "B", 16.0, 18.0, layer=0,
                                           kind="allreduce")], tl.source, tl.layers)
    assert parse_change(text, tl) == Change(text, key, target, us, factor)


def test_a_node_name_is_a_node():
    tl = Timeline([Interval("_gemm_kernel", "0", 0.0, 1.0, "q_b_proj", 0)], Source("trace"))
    assert parse_change("q_b_proj=2us", tl).target == "node"


@pytest.mark.parametrize("text, words", [
    ("allreduce", "expected KEY=VALUE"),
    ("gemm=fast", "expected KEY=VALUE"),
    ("stall=5", "0 needs no unit"),
    ("gemm=nanx", "expected KEY=VALUE"),
    ("gemm=-1us", "expected KEY=VALUE"),
    ("allgather=1us", "matches no kernel"),
    ("zz[=1us", "nor a valid regular expression"),
])
def test_bad_what_ifs_are_bad_input(text, words):
    with pytest.raises(Failure) as e:
        parse_change(text, small())
    assert e.value.code == EXIT_BAD_INPUT and words in str(e.value) and text in str(e.value)


def _node_medians(path: Path) -> dict[str, float]:
    return {n: v.median for n, v in summarize(load_trace(path).timeline).nodes.items()}


@pytest.mark.parametrize("layout", ["serial", "a_v4_moe_dual"])
def test_another_batchs_node_times_predict_that_batchs_trace(layout):
    """Our H100 runs: the batch-4 trace with every node set to its batch-16 time predicts the
    batch-16 trace's layer within 0.5% (bench/results/whatif-h100-2026-11-22 for all)."""
    loaded = load_trace(H100 / f"{layout}-b4.trace.json.gz")
    target = summarize(load_trace(H100 / f"{layout}-b16.trace.json.gz").timeline).wall.median
    changes = [Change(f"{n}={us}us", n, "node", us)
               for n, us in _node_medians(H100 / f"{layout}-b16.trace.json.gz").items()]
    result = what_if(for_trace(loaded.timeline, loaded.info), changes)
    assert abs(result.layer_wall_us.after - target) < 0.005 * target
    assert abs(result.layer_wall_us.before - target) > 0.3 * target  # it did move


def test_the_faster_top_k_through_the_dual_stream_graph():
    """The 2026-11-21 a_v4 run with idx_topk at its 2026-11-22 time (chunked top-k): the indexer
    branch runs beside q_b_proj's and is the critical one by far (the other is done ~45 us
    earlier), so the layer gains what the node gains; the prediction lands within 1% of the
    later run's trace."""
    loaded = load_trace(OLD / "a_v4-b4.trace.json.gz")
    new = _node_medians(H100 / "a_v4-b4.trace.json.gz")
    old = _node_medians(OLD / "a_v4-b4.trace.json.gz")
    result = what_if(for_trace(loaded.timeline, loaded.info),
                     [parse_change(f"idx_topk={new['idx_topk']}us", loaded.timeline)])
    target = summarize(load_trace(H100 / "a_v4-b4.trace.json.gz").timeline).wall.median
    assert abs(result.layer_wall_us.after - target) < 0.01 * target
    gained = -result.layer_wall_us.delta
    assert abs(gained - (old["idx_topk"] - new["idx_topk"])) < 0.5


def _no_nan(text: str) -> dict:
    def bad(name):
        raise AssertionError(f"bare {name} in JSON")
    return json.loads(text, parse_constant=bad)


def test_cli_what_if_table_and_json():
    path = str(H100 / "a_v4-b4.trace.json.gz")
    res = runner.invoke(app, ["summary", path, "--what-if", "idx_topk=5us", "--what-if", "stall=0"])
    assert res.exit_code == 0, res.output
    assert "what-if" in res.output and "layer wall median" in res.output and "nan" not in res.output
    res = runner.invoke(app, ["summary", path, "--what-if", "allreduce=0.5x", "--json"])
    out = _no_nan(res.output)
    w = out["what_if"]
    assert w["what_if"] == ["allreduce=0.5x"] and w["matched"][0]["matched"] == 80
    assert w["matched"][0]["what"] == "kernels"
    assert w["layer_wall_us"]["after"] < w["layer_wall_us"]["before"]
    assert len(w["per_step_us"]) == 5 and len(w["per_layer_us"]) == 20
    assert "prediction" in w


def test_cli_bad_what_if_is_one_line_and_exit_2():
    res = runner.invoke(app, ["summary", str(H100 / "serial-b4.trace.json.gz"), "--what-if", "gemm"])
    assert res.exit_code == EXIT_BAD_INPUT
    assert "--what-if 'gemm'" in res.output and "Traceback" not in res.output


def test_the_whatif_bench_runs_end_to_end_on_fresh_runs(tmp_path):
    """bench/whatif_bench.py --measure on a machine without a GPU: `streamlab compare` simulates
    serial and a_v4 at batches 4 and 16 and writes each run's trace with its captured graph's
    edges. Replaying one batch's trace with every node at the other batch's time: serial (one
    stream, no waits) lands on the other run exactly; a_v4 within 5%: the replay keeps the waits of
    the source (the h200 profile's fence gaps at batch 4, hidden at 16), and without the graph's
    edges the alt stream's kernels would start early (9% short on the 2026-12-03 profile)."""
    import subprocess
    import sys

    env = {"PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin:/bin", "COLUMNS": "200"}
    p = subprocess.run([sys.executable, "bench/whatif_bench.py", "--measure", "--device", "cpu", "--scenarios",
                        "serial,a_v4", "--batches", "4,16", "--out", str(tmp_path)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300, check=False)
    assert p.returncode == 0, p.stderr[-2000:]
    doc = json.loads((tmp_path / "whatif.json").read_text())
    assert doc["runs"] == ["simulated, profile h200"]
    batch = {(r["source"], r["target"]): r for r in doc["rows"] if r["kind"] == "batch"}
    assert set(batch) == {("serial-b4", "serial-b16"), ("serial-b16", "serial-b4"), ("a_v4-b4", "a_v4-b16"),
                          ("a_v4-b16", "a_v4-b4")}
    assert all(r["dependencies"] == "recorded" and r["runs"] == "simulated" and r["noise_us"] is None
               for r in batch.values())
    for (source, _), r in batch.items():
        share = abs(r["trace_error_us"]) / r["target_trace_us"]
        assert share < (1e-4 if source.startswith("serial") else 0.05), r
    assert "What-if on simulated runs (a smoke test" in (tmp_path / "whatif.md").read_text()
