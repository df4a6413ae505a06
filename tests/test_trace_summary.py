"""`streamlab trace summary` / `diff`: numbers of synthetic traces worked out by hand (see the
layer recipes in test_trace_kineto), real traces from elsewhere, and our own runs' traces, which
must give exactly the run's numbers."""

import gzip
import json
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from streamlab.analysis import summarize
from streamlab.errors import EXIT_BAD_INPUT, Failure
from streamlab.report.trace_view import short
from streamlab.trace.chrome import write_chrome
from streamlab.trace.cli import app
from streamlab.trace.summary import diff_reports, summarize_trace
from tests.test_trace_kineto import (
    AR,
    EVENT_SYNC,
    MI250,
    NODES_YAML,
    SHARED,
    TRITON,
    decode_trace,
    needs_shared,
    pattern_trace,
    write,
)

runner = CliRunner()


def stat(x, n):
    return {"median": x, "p20": x, "p80": x, "n": n}


def test_decode_trace_numbers(tmp_path):
    # 3 graph replays x 6 layers; layer 0 of each step holds the embedding: 15 steady layers
    gaps = {(0, i, 6): 2.5 for i in (1, 2, 3, 4)}  # a second stall site, after fused_moe, 4 times
    r = summarize_trace(write(tmp_path / "a.json.gz", decode_trace(gaps=gaps)))
    d = r.to_dict()
    assert d["layers"] == {"method": "allreduce", "found": 21, "steady": 15, "period": None,
                           "ars_per_layer": 2, "layers_per_unit": 1,
                           "description": "a layer ends after every 2 all-reduce calls, "
                                          "skipping the first 1 of each step",
                           "dropped": {"first of a step (prologue)": 3,
                                       "after the last full layer (epilogue)": 3}}
    # walls: 11 x 107.5 and 4 x 109.5 (the planted 2 us); p80 at rank 11.2 of 14
    assert d["wall_us"] == {"median": 107.5, "p20": 107.5, "p80": 109.5, "n": 15}
    assert d["kernel_sum_us"] == stat(100.0, 15) and d["overlap"] == stat(1.0, 15)
    # the 4 planted layers: launch 2.5 (one 0.5 gap became the stall), stall 3.0 + 2.5
    assert d["bubble_by_class_us"] == {"launch": {"median": 3.0, "p20": 2.5, "p80": 3.0, "n": 15},
                                       "fence": stat(1.5, 15),
                                       "stall": {"median": 3.0, "p20": 3.0, "p80": 5.5, "n": 15}}
    assert d["stalls_per_layer"] == {"median": 1, "p20": 1, "p80": 2, "n": 15}
    assert d["stall_sites"] == [
        {"before": "attn_decode", "after": "o_proj_gemm", "count": 15, "per_layer": 1.0,
         "total_us": 45.0, "median_us": 3.0, "max_us": 3.0},
        {"before": "fused_moe", "after": AR, "count": 4, "per_layer": 4 / 15,
         "total_us": 10.0, "median_us": 2.5, "max_us": 2.5}]
    assert d["allreduce_per_call_us"] == {"p10": 12.0, "p50": 12.0, "p90": 12.0, "mean": 12.0,
                                          "min": 12.0, "max": 12.0, "n": 30, "per_layer": 2.0}
    assert d["kernels_per_layer"] == stat(8, 15) and d["physical_streams"] == 1
    assert d["streams"] == [{"stream": "7", "ops": 3 * 53, "per_layer": 8.0,
                             "time_per_layer_us": 100.0}]
    rows = {k["name"]: k for k in d["kernels"]}
    assert [k["name"] for k in d["kernels"]][:3] == ["fused_moe", AR, "attn_decode"]
    assert rows[AR] == {"name": AR, "kind": "allreduce", "nodes": [], "calls": 30,
                        "per_layer": 2.0, "total_us": 360.0, "per_layer_us": 24.0,
                        "median_us": 12.0, "share": 0.24, "streams": ["7"]}
    assert rows["rmsnorm_kernel"]["per_layer"] == 2.0
    # outside: per step embedding 5 + its AR 12 + layer 0 (100) + LM head 22 us, 13 operations
    assert d["outside_layers"]["ops"] == 39 and d["outside_layers"]["time_us"] == 3 * 139.0
    assert d["loader"]["graph_launches"] == 3 and d["loader"]["ops_per_replay"] == [(53, 3)]


def test_ar_slowdown_and_extra_kernel_diff(tmp_path):
    a = summarize_trace(write(tmp_path / "a.json.gz", decode_trace()))
    b = summarize_trace(write(tmp_path / "b.json.gz",
                              decode_trace(ar_us=17.0, extra=("copy_kernel", 2.0, 0.5))))
    assert (a.summary.wall.median, b.summary.wall.median) == (107.5, 120.0)
    assert (a.allreduce["p50"], b.allreduce["p90"]) == (12.0, 17.0)
    d = diff_reports(a, b)
    m = {r["metric"]: (r["a"], r["b"], r["delta"]) for r in d["metrics"]}
    assert m["wall us (median)"] == (107.5, 120.0, 12.5)
    assert m["kernel sum us"] == (100.0, 112.0, 12.0)
    assert m["  launch us"] == (3.0, 3.5, 0.5)
    assert m["  stall us"] == (3.0, 3.0, 0.0)
    assert m["AR us per call p50"] == (12.0, 17.0, 5.0)
    assert m["AR calls per layer"] == (2.0, 2.0, 0.0)
    assert m["kernels per layer"] == (8, 9, 1)
    assert [(r["name"], r["per_layer_a"], r["per_layer_b"]) for r in d["kernel_count_changes"]] \
        == [("copy_kernel", 0.0, 1.0)]
    assert [(r["name"], r["us_delta"]) for r in d["kernel_time_changes"][:3]] == [
        (AR, 10.0), ("copy_kernel", 2.0), ("attn_decode", 0.0)]


def test_pattern_trace_multi_stream_numbers(tmp_path):
    r = summarize_trace(write(tmp_path / "p.json.gz", pattern_trace()))
    s = r.summary
    assert r.segmentation.period == 8 and r.layers == 20
    assert (s.wall.median, s.wall.p20) == (65.5, 65.5)
    assert s.kernel_sum.median == 65.0 and s.busy.median == 60.0
    assert s.overlap.median == 65.0 / 60.0
    assert s.bubble_by_class["stall"].median == 2.5 and s.bubble_by_class["launch"].median == 3.0
    assert r.allreduce is None and s.streams == ["7", "9"]
    assert [(x["before"], x["after"], x["count"]) for x in r.stall_sites] == [("oproj", "norm", 20)]
    assert [(x["stream"], x["per_layer"]) for x in r.streams] == [("7", 7.0), ("9", 1.0)]


def test_node_map_in_summary(tmp_path):
    (tmp_path / "n.yaml").write_text(NODES_YAML)
    r = summarize_trace(write(tmp_path / "a.json.gz", decode_trace()), nodes=tmp_path / "n.yaml")
    nodes = r.summary.nodes
    assert list(nodes) == ["input_norm", "attn", "allreduce_attn", "post_norm", "moe",
                           "allreduce_moe"]
    assert (nodes["allreduce_moe"].median, nodes["moe"].median, nodes["attn"].occurrences) == (
        12.0, 30.0, 15)
    assert r.allreduce["n"] == 30 and r.allreduce["p50"] == 12.0  # still one call per kernel
    assert r.stall_sites[0]["before"] == "attn" and r.stall_sites[0]["after"] == "o_proj_gemm"


@needs_shared
def test_real_traces_summary():
    r = summarize_trace(EVENT_SYNC)
    # no layer structure: the whole trace is one window, numbers exact (whole-us CUPTI stamps)
    assert r.segmentation.method == "whole" and r.layers == 1
    s = r.summary
    assert (s.wall.median, s.kernel_sum.median, s.busy.median) == (19506.0, 372.0, 372.0)
    assert s.bubble_by_class["stall"].median == 19506.0 - 372.0
    assert s.streams == ["20", "24", "28"] and r.allreduce is None
    assert [(x["before"], x["after"], x["count"]) for x in r.stall_sites] == [
        ("ampere_sgemm_128x64_nn", "Memset (Device)", 2),  # most time first: 19072 us in 2 gaps
        ("Memset (Device)", "ampere_sgemm_128x64_nn", 3)]

    r = summarize_trace(MI250)
    raw = json.loads(gzip.decompress(MI250.read_bytes()))["traceEvents"]
    dev = [e for e in raw if e.get("cat") in ("kernel", "gpu_memcpy")]
    s = r.summary
    assert r.info.tracer == "roctracer" and s.source.detail["tracer"] == "roctracer"
    assert s.kernel_sum.median == pytest.approx(sum(e["dur"] for e in dev), abs=1e-6)
    # stamps near 4.2e12 us carry about 0.5 ns of float resolution
    assert s.wall.median == pytest.approx(
        max(e["ts"] + e["dur"] for e in dev) - min(e["ts"] for e in dev), abs=1e-3)
    assert r.kernels_per_layer.median == 16 and s.streams == ["0"]

    r = summarize_trace(TRITON)
    assert r.summary.wall.median == pytest.approx(1.76) and r.summary.bubble.median == 0.0


def own_run(tmp_path):
    from streamlab.results import to_json
    from streamlab.runs import RunSetup, simulated_result
    from streamlab.scenario import load
    from streamlab.sim.profile_file import load_profile
    from streamlab.sim.run import simulate_scenario

    scen = load(Path(__file__).resolve().parents[1] / "scenarios" / "a_v4.yaml")
    sim = simulate_scenario(scen, load_profile("mi355x"), 4)
    result = to_json(simulated_result(scen, sim, RunSetup("cpu", {}, {}, 4, None)))
    path = write_chrome(sim.timeline, tmp_path / "a_v4-b4-sim-mi355x.trace.json.gz")
    return result, sim.timeline, path


def test_own_trace_gives_the_runs_numbers(tmp_path):
    result, timeline, path = own_run(tmp_path)
    r = summarize_trace(path)
    assert r.info.format == "streamlab" and r.segmentation is None
    assert r.summary == summarize(timeline)
    p, d = result["anatomy"], r.to_dict()
    for key in ("wall_us", "kernel_sum_us", "overlap", "bubble_us", "bubble_by_class_us",
                "stalls_per_layer", "allreduce_per_call_us", "physical_streams"):
        if key == "allreduce_per_call_us":
            ar = p[key]
            assert (d[key]["p50"], d[key]["n"]) == (ar["median"], ar["n"])
        else:
            assert d[key] == p[key], key
    assert [(x["before"], x["after"], x["count"]) for x in d["stall_sites"]] == [
        (x["before"], x["after"], x["count"]) for x in p["stall_sites"]]
    # the generic path on the same file finds the same layers from the all-reduces: the recorded
    # layers 1-3 (layer 0 holds the first step's start: a prologue)
    g = summarize_trace(path, ars_per_layer=2)
    assert g.segmentation.method == "allreduce" and g.layers == 3
    assert [(x.start, x.end, x.kernels) for x in g.summary.layers] == [
        (x.start, x.end, x.kernels) for x in r.summary.layers[1:]]


# --- CLI --------------------------------------------------------------------------------------


def test_cli_summary_and_json(tmp_path):
    path = write(tmp_path / "a.json.gz", decode_trace())
    res = runner.invoke(app, ["summary", str(path)])
    assert res.exit_code == 0, res.output
    out = res.stdout
    assert "15 steady (dropped: 3 first of a step (prologue), 3 after the last full layer" in out
    assert "wall 107.5 us (p20 107.5, p80 107.5)" in out
    assert "all-reduce 12.00 us per call (p10 12.00, p90 12.00, max 12.00)" in out
    res = runner.invoke(app, ["summary", str(path), "--json", "--ars-per-layer", "2"])
    assert res.exit_code == 0 and json.loads(res.stdout)["wall_us"]["median"] == 107.5
    (tmp_path / "n.yaml").write_text(NODES_YAML)
    res = runner.invoke(app, ["summary", str(path), "--nodes", str(tmp_path / "n.yaml")])
    assert res.exit_code == 0 and "allreduce_moe" in res.stdout


def test_cli_diff(tmp_path):
    a = write(tmp_path / "a.json.gz", decode_trace())
    b = write(tmp_path / "b.json.gz", decode_trace(ar_us=17.0, extra=("copy_kernel", 2.0, 0.5)))
    res = runner.invoke(app, ["diff", str(a), str(b)])
    assert res.exit_code == 0, res.output
    assert "copy_kernel" in res.stdout and "+12.5" in res.stdout
    res = runner.invoke(app, ["diff", str(a), str(b), "--json"])
    d = json.loads(res.stdout)
    assert d["kernel_count_changes"][0]["name"] == "copy_kernel"
    assert d["summary_b"]["allreduce_per_call_us"]["p50"] == 17.0


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path):
    full = gzip.compress(json.dumps(decode_trace()).encode(), mtime=0)
    cut = tmp_path / "x-TP-0-DECODE.trace.json.gz"
    cut.write_bytes(full[:1000])
    res = runner.invoke(app, ["summary", str(cut)])
    assert res.exit_code == EXIT_BAD_INPUT and res.stdout == ""
    assert res.stderr.startswith("error: ") and "truncated" in res.stderr
    assert str(cut.name) in res.stderr.replace("\n", "")
    assert "Traceback" not in res.output
    res = runner.invoke(app, ["summary", str(cut.with_name("a.json")), "--layer-regex", "("])
    assert res.exit_code == EXIT_BAD_INPUT and "cannot read" in res.stderr


def test_bad_options(tmp_path):
    path = write(tmp_path / "a.json.gz", decode_trace())
    with pytest.raises(Failure, match="not a valid regular expression"):
        summarize_trace(path, layer_regex="(")
    with pytest.raises(Failure, match="no all-reduce"):
        summarize_trace(write(tmp_path / "p.json.gz", pattern_trace()), ars_per_layer=2)


def test_short_names():
    assert short("void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>,"
                 " at::detail::Array<char*, 1> >(int, at::native::FillFunctor<float>, "
                 "at::detail::Array<char*, 1>)") == "at::native::vectorized_elementwise_kernel<…>"
    nccl = "ncclDevKernel_AllReduce_Sum_bf16_RING_LL"
    assert short(nccl) == nccl
    assert short(AR) == "vllm::cross_device_reduce_1stage<__hip_bfloat16, 8>"
    assert len(short("x" * 100)) == 64


def test_our_h100_graph_trace_splits_into_layers_not_replays():
    """Our raw Kineto trace of a_v4_moe_dual (4 eager passes then 20 replays of a 4-layer
    graph): the replayed kernels land on executor-chosen streams that repeat per replay, so one
    stream's period is 4 layers; all streams in start order give the 37-kernel layer. Layers are
    of the replayed kernels (the eager passes apart): all 20 x 4, each starting with its norm,
    even where two concurrent kernels swapped places in start order."""
    from tests.test_trace_kineto import H100

    r = summarize_trace(H100)
    seg = r.segmentation
    assert (seg.method, seg.period, seg.layers_per_unit) == ("pattern", 37, 1)
    assert "all streams" in seg.description
    assert (seg.found, r.layers) == (80, 80) and seg.dropped == {}
    assert all(len(seg.timeline.in_layer(k)) == 37 for k in range(r.layers))
    assert {seg.timeline.in_layer(k)[0].name for k in range(r.layers)} == {"_norm_kernel"}
    assert 215.0 < r.summary.wall.p20 < r.summary.wall.median < 260.0  # us per layer
    o = r.origins
    assert (o.replays, o.graph_ops, o.eager_ops) == (20, 2960, 592)
    assert r.steps.steps == 20 and r.steps.layers.median == 4


# --- the shared traces recorded by others ------------------------------------------------------

QWEN = SHARED / "sglang_Qwen3-8B_decode.json.gz"
CAPTURE = SHARED / "sglang_decode_bs32_graph_capture_rank0.json.gz"
GPT_OSS = SHARED / "vllm_decode_full_graph_execution.json.gz"
ROCPROF = SHARED / "rocprofv3_908_results.json.gz"


@needs_shared
def test_qwen3_decode_has_its_36_layers():
    """One replayed bs=32 decode step of Qwen3-8B (36 layers): each layer starts with its input
    norm (the first layer's a variant without the residual add), the final norm, LM head and
    sampling stay outside, and the eager kernel that ran beside the graph is no layer's."""
    r = summarize_trace(QWEN)
    seg = r.segmentation
    assert (seg.method, seg.period, seg.found, r.layers, seg.dropped) == ("pattern", 15, 36, 36, {})
    firsts = [seg.timeline.in_layer(k)[0].name for k in range(36)]
    assert all("add_rmsnorm_quant_kernel" in n for n in firsts) and len(set(firsts)) == 2
    assert all(len(seg.timeline.in_layer(k)) == 15 for k in range(36))
    outside = [iv.name for iv in r.timeline.intervals if iv.layer is None]
    assert any("neg_kernel" in n for n in outside) and any("vectorized_gather" in n for n in outside)
    assert sum("add_rmsnorm" in n for n in outside) == 1  # the final norm: the head's
    st = r.steps
    assert (st.steps, st.layers.median) == (1, 36)
    assert st.wall_us.median == pytest.approx(st.layers_us.median + st.outside_us.median
                                              + st.idle_us.median)
    assert (r.origins.graph_ops, r.origins.eager_ops) == (544, 14)


@needs_shared
def test_capture_trace_is_no_step():
    r = summarize_trace(CAPTURE)
    assert r.not_a_step.kind == "graph capture" and r.summary is None and r.layers == 0
    assert r.not_a_step.evidence == {"hipGraphInstantiateWithFlags": 1, "hipStreamBeginCapture": 1,
                                     "hipStreamEndCapture": 1, "kernel launches recorded": 546,
                                     "kernels run": 2}
    res = runner.invoke(app, ["summary", str(CAPTURE), "--json"])
    d = json.loads(res.stdout)
    assert res.exit_code == 4 and d["layers"] is None and "wall_us" not in d
    assert d["not_a_step"]["advice"].startswith("record a step after capture")
    res = runner.invoke(app, ["diff", str(CAPTURE), str(QWEN)])
    assert res.exit_code == 4 and "records a graph capture" in res.stderr


@needs_shared
def test_gpt_oss_decode_has_a_unit_of_two_layers():
    """gpt-oss alternates sliding-window and full-attention layers: the kernel sequence repeats
    every two layers (35 kernels); 12 units = 24 layers, the first unit (its first layer one
    kernel short and with another norm) found but not steady."""
    r = summarize_trace(GPT_OSS)
    seg = r.segmentation
    assert (seg.period, seg.layers_per_unit, seg.found, r.layers) == (35, 2, 12, 11)
    assert seg.dropped == {"kernel count other than 35": 1}
    assert r.steps.layers.median == 24
    unit = [iv.name for iv in seg.timeline.in_layer(0)]
    assert unit.count("kernel_unified_attention_2d") == 1
    assert unit.count("kernel_unified_attention_3d") == 1


@needs_shared
def test_rocprofv3_json_of_eight_gpus():
    r = summarize_trace(ROCPROF)
    info = r.info
    assert (info.format, info.tracer, info.events) == ("rocprofv3-json", "rocprofiler-sdk", 43915)
    assert info.device_ops == {"kernel": 43915} and info.metadata["gpus_listed"] == 8
    assert [(g.id, g.name, g.ops) for g in info.gpus] == [("0", "AMD Instinct MI350X (gfx950)", 43915)]
    assert info.gpu_choice == "GPU 0 (AMD Instinct MI350X (gfx950)): the only GPU with work"
    raw = json.loads(gzip.decompress(ROCPROF.read_bytes()))["rocprofiler-sdk-tool"][0]
    dispatches = raw["buffer_records"]["kernel_dispatch"]
    queues = Counter(str(d["dispatch_info"]["queue_id"]["handle"]) for d in dispatches)
    streams = Counter(str(d["stream_id"]["handle"]) for d in dispatches)
    assert [(q.queue, q.ops) for q in r.queues] == queues.most_common()
    assert [q.queue for q in r.queues] == ["18", "19", "20", "17", "16"]
    assert r.queues[0].streams[:2] == ["567", "5"]
    assert [(x["stream"], x["ops"]) for x in r.streams] == sorted(
        streams.items(), key=lambda kv: -kv[1])[:1] + [(x["stream"], x["ops"]) for x in r.streams[1:]]
    assert len(r.streams) == len(streams) == 567 and r.streams[0]["ops"] == 37300
    assert r.kernels[0]["calls"] > 0 and sum(k["calls"] for k in r.kernels) <= 43915
    res = runner.invoke(app, ["summary", str(ROCPROF), "--top", "5"])
    assert res.exit_code == 0 and "hardware queues" in res.stdout
    assert "... and 555 more streams" in res.stdout  # 12 listed
