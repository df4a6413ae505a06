"""`streamlab trace summary` / `diff`: numbers of synthetic traces worked out by hand (see the
layer recipes in test_trace_kineto), real traces from elsewhere, and our own runs' traces, which
must give exactly the run's numbers."""

import gzip
import json
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from streamlab.analysis import StallSite, Stat, summarize
from streamlab.errors import EXIT_BAD_INPUT, Failure
from streamlab.report.trace_tables import short
from streamlab.results import (
    AllReduceCalls,
    TraceKernel,
    TraceLayers,
    TraceStream,
)
from streamlab.trace.chrome import write_chrome
from streamlab.trace.cli import app
from streamlab.trace.summary import diff, summarize_trace
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
    return Stat(x, x, x, n)


def test_decode_trace_numbers(tmp_path):
    # 3 graph replays x 6 layers; layer 0 of each step holds the embedding: 15 steady layers
    gaps = {(0, i, 6): 2.5 for i in (1, 2, 3, 4)}  # a second stall site, after fused_moe, 4 times
    d = summarize_trace(write(tmp_path / "a.json.gz", decode_trace(gaps=gaps))).summary
    assert d.layers == TraceLayers(
        method="allreduce", found=21, steady=15, period=None, ars_per_layer=2, layers_per_unit=1,
        description="a layer ends after every 2 all-reduce calls, skipping the first 1 of each step",
        dropped={"first of a step (prologue)": 3, "after the last full layer (epilogue)": 3})
    f = d.per_layer
    # walls: 11 x 107.5 and 4 x 109.5 (the planted 2 us); p80 at rank 11.2 of 14
    assert f.wall_us == Stat(107.5, 107.5, 109.5, 15)
    assert f.kernel_sum_us == stat(100.0, 15) and f.overlap == stat(1.0, 15)
    # the 4 planted layers: launch 2.5 (one 0.5 gap became the stall), stall 3.0 + 2.5
    assert f.bubble_by_class_us == {"launch": Stat(3.0, 2.5, 3.0, 15), "fence": stat(1.5, 15),
                                    "stall": Stat(3.0, 3.0, 5.5, 15)}
    assert f.stalls == Stat(1, 1, 2, 15)
    assert d.stall_sites == (
        StallSite(before="attn_decode", after="o_proj_gemm", count=15, per_layer=1.0, total_us=45.0,
                  median_us=3.0, max_us=3.0),
        StallSite(before="fused_moe", after=AR, count=4, per_layer=4 / 15, total_us=10.0,
                  median_us=2.5, max_us=2.5))
    assert d.allreduce_per_call_us == AllReduceCalls(12.0, 12.0, 12.0, 12.0, 12.0, 12.0, 30, 2.0)
    assert f.kernels == stat(8, 15) and f.physical_streams == 1
    assert d.streams == (TraceStream("7", 3 * 53, 8.0, 100.0),)
    rows = {k.name: k for k in d.kernels}
    assert [k.name for k in d.kernels][:3] == ["fused_moe", AR, "attn_decode"]
    assert rows[AR] == TraceKernel(name=AR, kind="allreduce", nodes=(), calls=30, per_layer=2.0,
                                   total_us=360.0, per_layer_us=24.0, median_us=12.0, share=0.24,
                                   streams=("7",))
    assert rows["rmsnorm_kernel"].per_layer == 2.0
    # outside: per step embedding 5 + its AR 12 + layer 0 (100) + LM head 22 us, 13 operations
    assert d.outside_layers.ops == 39 and d.outside_layers.time_us == 3 * 139.0
    assert d.loader.graph_launches == 3 and d.loader.ops_per_replay == ((53, 3),)


def test_ar_slowdown_and_extra_kernel_diff(tmp_path):
    a = summarize_trace(write(tmp_path / "a.json.gz", decode_trace())).summary
    b = summarize_trace(write(tmp_path / "b.json.gz",
                              decode_trace(ar_us=17.0, extra=("copy_kernel", 2.0, 0.5)))).summary
    assert (a.per_layer.wall_us.median, b.per_layer.wall_us.median) == (107.5, 120.0)
    assert (a.allreduce_per_call_us.p50, b.allreduce_per_call_us.p90) == (12.0, 17.0)
    d = diff(a, b)
    m = {r.metric: (r.a, r.b, r.delta) for r in d.metrics}
    assert m["wall us (median)"] == (107.5, 120.0, 12.5)
    assert m["kernel sum us"] == (100.0, 112.0, 12.0)
    assert m["  launch us"] == (3.0, 3.5, 0.5)
    assert m["  stall us"] == (3.0, 3.0, 0.0)
    assert m["AR us per call p50"] == (12.0, 17.0, 5.0)
    assert m["AR calls per layer"] == (2.0, 2.0, 0.0)
    assert m["kernels per layer"] == (8, 9, 1)
    assert [(r.name, r.per_layer_a, r.per_layer_b) for r in d.kernel_count_changes] \
        == [("copy_kernel", 0.0, 1.0)]
    assert [(r.name, r.us_delta) for r in d.kernel_time_changes[:3]] == [
        (AR, 10.0), ("copy_kernel", 2.0), ("attn_decode", 0.0)]


def test_pattern_trace_multi_stream_numbers(tmp_path):
    r = summarize_trace(write(tmp_path / "p.json.gz", pattern_trace())).summary
    s = r.per_layer
    assert r.layers.period == 8 and r.layers.steady == 20
    assert (s.wall_us.median, s.wall_us.p20) == (65.5, 65.5)
    assert s.kernel_sum_us.median == 65.0 and s.busy_us.median == 60.0
    assert s.overlap.median == 65.0 / 60.0
    assert s.bubble_by_class_us["stall"].median == 2.5 and s.bubble_by_class_us["launch"].median == 3.0
    assert r.allreduce_per_call_us is None and s.physical_streams == 2
    assert [(x.before, x.after, x.count) for x in r.stall_sites] == [("oproj", "norm", 20)]
    assert [(x.stream, x.per_layer) for x in r.streams] == [("7", 7.0), ("9", 1.0)]


def test_node_map_in_summary(tmp_path):
    (tmp_path / "n.yaml").write_text(NODES_YAML)
    r = summarize_trace(write(tmp_path / "a.json.gz", decode_trace()), nodes=tmp_path / "n.yaml").summary
    nodes = r.nodes
    assert list(nodes) == ["input_norm", "attn", "allreduce_attn", "post_norm", "moe",
                           "allreduce_moe"]
    assert (nodes["allreduce_moe"].median, nodes["moe"].median, nodes["attn"].occurrences) == (
        12.0, 30.0, 15)
    assert r.allreduce_per_call_us.n == 30 and r.allreduce_per_call_us.p50 == 12.0  # a call per kernel
    assert r.stall_sites[0].before == "attn" and r.stall_sites[0].after == "o_proj_gemm"


@needs_shared
def test_real_traces_summary():
    r = summarize_trace(EVENT_SYNC).summary
    # no layer structure: the whole trace is one window, numbers exact (whole-us CUPTI stamps)
    assert r.layers.method == "whole" and r.layers.steady == 1
    s = r.per_layer
    assert (s.wall_us.median, s.kernel_sum_us.median, s.busy_us.median) == (19506.0, 372.0, 372.0)
    assert s.bubble_by_class_us["stall"].median == 19506.0 - 372.0
    assert sorted(x.stream for x in r.streams) == ["20", "24", "28"] and r.allreduce_per_call_us is None
    assert [(x.before, x.after, x.count) for x in r.stall_sites] == [
        ("ampere_sgemm_128x64_nn", "Memset (Device)", 2),  # most time first: 19072 us in 2 gaps
        ("Memset (Device)", "ampere_sgemm_128x64_nn", 3)]

    r = summarize_trace(MI250).summary
    raw = json.loads(gzip.decompress(MI250.read_bytes()))["traceEvents"]
    dev = [e for e in raw if e.get("cat") in ("kernel", "gpu_memcpy")]
    s = r.per_layer
    assert r.loader.tracer == "roctracer" and r.source.detail["tracer"] == "roctracer"
    assert s.kernel_sum_us.median == pytest.approx(sum(e["dur"] for e in dev), abs=1e-6)
    # stamps near 4.2e12 us carry about 0.5 ns of float resolution
    assert s.wall_us.median == pytest.approx(
        max(e["ts"] + e["dur"] for e in dev) - min(e["ts"] for e in dev), abs=1e-3)
    assert s.kernels.median == 16 and [x.stream for x in r.streams] == ["0"]

    s = summarize_trace(TRITON).summary.per_layer
    assert s.wall_us.median == pytest.approx(1.76) and s.bubble_us.median == 0.0


def own_run(tmp_path):
    from streamlab.runs import RunSetup, simulated_result
    from streamlab.scenario import load
    from streamlab.sim.profile_file import load_profile
    from streamlab.sim.run import simulate_scenario

    scen = load(Path(__file__).resolve().parents[1] / "scenarios" / "a_v4.yaml")
    sim = simulate_scenario(scen, load_profile("mi355x"), 4)
    result = simulated_result(scen, sim, RunSetup("cpu", {}, {}, 4, None))
    path = write_chrome(sim.timeline, tmp_path / "a_v4-b4-sim-mi355x.trace.json.gz")
    return result, sim.timeline, path


def test_own_trace_gives_the_runs_numbers(tmp_path):
    result, timeline, path = own_run(tmp_path)
    r = summarize_trace(path)
    assert r.info.format == "streamlab" and r.segmentation is None
    assert r.stats == summarize(timeline)
    p, d = result.anatomy, r.summary.per_layer
    assert (d.wall_us, d.kernel_sum_us, d.overlap, d.bubble_us, d.bubble_by_class_us, d.stalls,
            d.physical_streams) == (p.wall_us, p.kernel_sum_us, p.overlap, p.bubble_us,
                                    p.bubble_by_class_us, p.stalls_per_layer, p.physical_streams)
    ar = r.summary.allreduce_per_call_us
    assert (ar.p50, ar.n) == (p.allreduce_per_call_us.median, p.allreduce_per_call_us.n)
    assert r.summary.stall_sites == p.stall_sites
    # the generic path on the same file finds the same layers from the all-reduces: the recorded
    # layers 1-3 (layer 0 holds the first step's start: a prologue)
    g = summarize_trace(path, ars_per_layer=2)
    assert g.summary.layers.method == "allreduce" and g.summary.layers.steady == 3
    assert [(x.start, x.end, x.kernels) for x in g.stats.layers] == [
        (x.start, x.end, x.kernels) for x in r.stats.layers[1:]]


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
    assert res.exit_code == 0 and json.loads(res.stdout)["per_layer"]["wall_us"]["median"] == 107.5
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
    assert d["kind"] == "trace-diff" and d["kernel_count_changes"][0]["name"] == "copy_kernel"
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
    seg, s = r.segmentation, r.summary
    assert (seg.method, seg.period, seg.layers_per_unit) == ("pattern", 37, 1)
    assert "all streams" in seg.description
    assert (seg.found, s.layers.steady) == (80, 80) and seg.dropped == {}
    assert all(len(seg.timeline.in_layer(k)) == 37 for k in range(80))
    assert {seg.timeline.in_layer(k)[0].name for k in range(80)} == {"_norm_kernel"}
    assert 215.0 < s.per_layer.wall_us.p20 < s.per_layer.wall_us.median < 260.0  # us per layer
    o = s.graph_and_eager
    assert (o.replays, o.graph_ops, o.eager_ops) == (20, 2960, 592)
    assert s.per_step.steps == 20 and s.per_step.layers.median == 4


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
    assert (seg.method, seg.period, seg.found, r.summary.layers.steady, seg.dropped) == (
        "pattern", 15, 36, 36, {})
    firsts = [seg.timeline.in_layer(k)[0].name for k in range(36)]
    assert all("add_rmsnorm_quant_kernel" in n for n in firsts) and len(set(firsts)) == 2
    assert all(len(seg.timeline.in_layer(k)) == 15 for k in range(36))
    outside = [iv.name for iv in r.timeline.intervals if iv.layer is None]
    assert any("neg_kernel" in n for n in outside) and any("vectorized_gather" in n for n in outside)
    assert sum("add_rmsnorm" in n for n in outside) == 1  # the final norm: the head's
    st = r.summary.per_step
    assert (st.steps, st.layers.median) == (1, 36)
    assert st.wall_us.median == pytest.approx(st.layers_us.median + st.outside_us.median
                                              + st.idle_us.median)
    o = r.summary.graph_and_eager
    assert (o.graph_ops, o.eager_ops) == (544, 14)


@needs_shared
def test_capture_trace_is_no_step():
    r = summarize_trace(CAPTURE).summary
    assert r.not_a_step.kind == "graph capture" and r.per_layer is None and r.steady_layers == 0
    assert r.not_a_step.evidence == {"hipGraphInstantiateWithFlags": 1, "hipStreamBeginCapture": 1,
                                     "hipStreamEndCapture": 1, "kernel launches recorded": 546,
                                     "kernels run": 2}
    res = runner.invoke(app, ["summary", str(CAPTURE), "--json"])
    d = json.loads(res.stdout)
    assert res.exit_code == 4 and d["layers"] is None and d["per_layer"] is None
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
    assert (seg.period, seg.layers_per_unit, seg.found, r.summary.layers.steady) == (35, 2, 12, 11)
    assert seg.dropped == {"kernel count other than 35": 1}
    assert r.summary.per_step.layers.median == 24
    unit = [iv.name for iv in seg.timeline.in_layer(0)]
    assert unit.count("kernel_unified_attention_2d") == 1
    assert unit.count("kernel_unified_attention_3d") == 1


@needs_shared
def test_rocprofv3_json_of_eight_gpus():
    r = summarize_trace(ROCPROF).summary
    info = r.loader
    assert (info.format, info.tracer, info.events) == ("rocprofv3-json", "rocprofiler-sdk", 43915)
    assert info.device_ops == {"kernel": 43915} and info.gpus_listed == 8
    assert [(g.id, g.name, g.ops) for g in info.gpus] == [("0", "AMD Instinct MI350X (gfx950)", 43915)]
    assert info.gpu_choice == "GPU 0 (AMD Instinct MI350X (gfx950)): the only GPU with work"
    raw = json.loads(gzip.decompress(ROCPROF.read_bytes()))["rocprofiler-sdk-tool"][0]
    dispatches = raw["buffer_records"]["kernel_dispatch"]
    queues = Counter(str(d["dispatch_info"]["queue_id"]["handle"]) for d in dispatches)
    streams = Counter(str(d["stream_id"]["handle"]) for d in dispatches)
    assert [(q.queue, q.ops) for q in r.hardware_queues] == queues.most_common()
    assert [q.queue for q in r.hardware_queues] == ["18", "19", "20", "17", "16"]
    assert r.hardware_queues[0].streams[:2] == ("567", "5")
    assert [(x.stream, x.ops) for x in r.streams] == sorted(
        streams.items(), key=lambda kv: -kv[1])[:1] + [(x.stream, x.ops) for x in r.streams[1:]]
    assert len(r.streams) == len(streams) == 567 and r.streams[0].ops == 37300
    assert r.kernels[0].calls > 0 and sum(k.calls for k in r.kernels) <= 43915
    res = runner.invoke(app, ["summary", str(ROCPROF), "--top", "5"])
    assert res.exit_code == 0 and "hardware queues" in res.stdout
    assert "... and 555 more streams" in res.stdout  # 12 listed
