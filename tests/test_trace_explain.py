"""Critical path, exposed communication, rank skew and roofline of a trace: exact answers on
small timelines built here, our H100 runs, rank traces generated from one of them with known
arrival shifts, and a foreign trace from ../shared."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from streamlab.layer import Layer
from streamlab.models.hardware import HARDWARE
from streamlab.timeline import Edge, Interval, Source, Timeline
from streamlab.trace.chrome import write_chrome
from streamlab.trace.cli import app
from streamlab.trace.comm import collective_calls, exposed_comm, rank_skew
from streamlab.trace.critical import critical_path, slack
from streamlab.trace.deps import dependency_graph
from streamlab.trace.explain import explain
from streamlab.trace.formats import load_trace
from streamlab.trace.roofline import layer_of
from streamlab.trace.summary import summarize_trace

ROOT = Path(__file__).resolve().parents[1]
H100 = ROOT / "traces" / "h100-2026-11-22"
QWEN = Path(__file__).resolve().parents[2] / "shared" / "traces" / "sglang_Qwen3-8B_decode.json.gz"
runner = CliRunner()


def two_streams() -> Timeline:
    """A: a [0, 10), c [12, 20), e [21, 25); B: b [11, 15) after a, d [15.5, 19) after b;
    e waits for c (stream) and d (event). The path: a -> c -> e (c ended last)."""
    ivs = [Interval("a", "A", 0.0, 10.0), Interval("b", "B", 11.0, 15.0),
           Interval("c", "A", 12.0, 20.0), Interval("d", "B", 15.5, 19.0),
           Interval("e", "A", 21.0, 25.0)]
    return Timeline(ivs, Source("trace"), edges=[Edge(0, 1, "event"), Edge(3, 4, "event")])


def test_critical_path_gaps_and_slack():
    g = dependency_graph(two_streams(), origin="events", note="")
    path = critical_path(g, 0)
    assert [(k.kernel, k.start_us, k.waited_on, k.wait_kind, k.cross_stream, k.gap_us, k.slack_us)
            for k in path.kernels] == [
        ("a", 0.0, None, None, False, 0.0, None), ("c", 12.0, "a", "stream", False, 2.0, None),
        ("e", 21.0, "c", "stream", False, 1.0, 1.0)]  # d ended 1 us before c
    assert (path.busy_us, path.gaps_us, path.cross_stream_waits, path.span_us) == (22.0, 3.0, 0, 25.0)
    assert path.by_stream_us == {"A": 22.0} and path.by_class_us == {"other": 22.0}
    # d may end 1 us later; b as much (d keeps its 0.5 us lag after b)
    assert slack(g, 0) == {0: 0.0, 1: 1.0, 2: 0.0, 3: 1.0, 4: 0.0}
    assert [(n.kernel, n.slack_us) for n in path.near_critical] == [("b", 1.0), ("d", 1.0)]


def test_critical_path_of_a_dual_stream_run_crosses_streams():
    report = summarize_trace(H100 / "a_v4-b4.trace.json.gz")
    e = explain(report).summary
    assert len(e.dependencies.step_span_us) == 5 and e.dependencies.origin == "scenario"
    p = e.critical_path
    assert p.cross_stream_waits > 0
    # the path ends the step: its last kernel is the step's last
    assert p.kernels[-1].start_us + p.kernels[-1].duration_us == pytest.approx(p.span_us)
    # through the indexer: mla_decode waits for idx_topk, the other branch done long before
    mla = [k for k in p.kernels if k.node == "mla_decode" and k.waited_on == "idx_topk"]
    assert len(mla) == 4 and all(k.slack_us > 30 for k in mla)
    # a step's span = where the path starts + its kernels + its gaps
    assert p.kernels[0].start_us + p.busy_us + p.gaps_us == pytest.approx(p.span_us)
    assert p.near_critical and all(n.slack_us >= 0 for n in p.near_critical)


def test_exposed_communication_is_the_time_nothing_else_ran():
    ivs = [Interval("gemm", "0", 0.0, 10.0, layer=0),
           Interval("nccl_AllReduce", "1", 6.0, 14.0, layer=0, kind="allreduce"),
           Interval("norm", "0", 12.0, 13.0, layer=0),
           Interval("ncclDevKernel_AllGather", "1", 20.0, 22.0, layer=1)]
    g = dependency_graph(Timeline(ivs, Source("trace")), origin="stream", note="")
    calls = collective_calls(g.timeline, g.step_of)
    assert [(c.name, c.cls, c.duration, c.exposed, c.hidden) for c in calls] == [
        ("nccl_AllReduce", "allreduce", 8.0, 3.0, 5.0),  # 10-12 and 13-14 alone
        ("ncclDevKernel_AllGather", "allgather", 2.0, 2.0, 0.0)]
    x = exposed_comm(g)
    assert [(r.name, r.calls, r.exposed_share, r.hidden_us_median) for r in x.collectives] == [
        ("nccl_AllReduce", 1, 3.0 / 8.0, 5.0), ("ncclDevKernel_AllGather", 1, 1.0, 0.0)]
    assert x.per_step_us.median == 5.0 and sorted([x.per_layer_us.p20, x.per_layer_us.p80]) == [2.2, 2.8]


def test_the_emulated_all_reduce_of_a_serial_run_is_fully_exposed():
    x = explain(summarize_trace(H100 / "serial-b4.trace.json.gz")).summary.exposed_communication
    assert [(r.name, r.calls) for r in x.collectives] == [("allreduce_attn", 20), ("allreduce_moe", 20)]
    assert all(r.exposed_share > 0.99 for r in x.collectives)  # stamps of one stream touch by ns
    assert x.per_layer_us.median == pytest.approx(sum(r.duration_us.median for r in x.collectives), rel=0.02)


def ranks_from(timeline: Timeline, shifts: list[list[float]]) -> list[Timeline]:
    """Rank r's trace: the run's own, where at all-reduce call k rank r arrived shifts[r][k] us
    after the first rank to get there (its call starts later, all ranks leave together)."""
    calls = sorted({(iv.layer, iv.node) for iv in timeline.intervals if iv.kind == "allreduce"},
                   key=lambda c: min(iv.start for iv in timeline.intervals if (iv.layer, iv.node) == c))
    first = {c: min((iv for iv in timeline.intervals if (iv.layer, iv.node) == c),
                    key=lambda iv: iv.start) for c in calls}
    out = []
    for rank in shifts:
        late = {first[c]: rank[k] for k, c in enumerate(calls)}
        out.append(Timeline([replace(iv, start=iv.start + late.get(iv, 0.0)) for iv in timeline.intervals],
                            timeline.source, list(timeline.layers)))
    return out


def test_rank_skew_finds_who_arrived_last(tmp_path):
    base = load_trace(H100 / "serial-b4.trace.json.gz").timeline
    calls = 40
    shifts = [[0.0] * calls, [0.5 * (k % 4) for k in range(calls)], [1.0 if k % 2 else 0.0 for k in range(calls)]]
    tls = ranks_from(base, shifts)
    skew = rank_skew([(f"rank{i}", tl) for i, tl in enumerate(tls)])
    assert len(skew.calls) == calls and "same names in order" in skew.matched
    for k, a in enumerate(skew.calls):  # a rank waited for the last one to arrive
        assert list(a.wait_us) == pytest.approx([max(r[k] for r in shifts) - r[k] for r in shifts],
                                                abs=1e-9)
    assert skew.calls[3].last_rank == 1 and skew.calls[3].spread_us == pytest.approx(1.5)
    paths = []
    for i, tl in enumerate(tls):
        write_chrome(tl, tmp_path / f"rank{i}.trace.json.gz")
        paths.append(str(tmp_path / f"rank{i}.trace.json.gz"))
    res = runner.invoke(app, ["summary", *paths, "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)["rank_skew"]
    assert [r["last_at"] for r in out["per_rank"]] == [sum(a.last_rank == r for a in skew.calls)
                                                      for r in range(3)]
    res = runner.invoke(app, ["summary", *paths])
    assert "rank skew" in res.output and "arrived last at" in res.output


def test_rank_skew_says_when_the_sequences_differ():
    base = load_trace(H100 / "serial-b4.trace.json.gz").timeline
    cut = Timeline([iv for iv in base.intervals if iv.layer is None or iv.layer < 19],
                   base.source, base.layers[:19])
    skew = rank_skew([("a", base), ("b", cut)])
    assert "differ" in skew.matched and len(skew.calls) == 38


def test_roofline_uses_the_house_floor():
    report = summarize_trace(H100 / "a_v4-b4.trace.json.gz")
    r = explain(report).summary.roofline
    layer, note = layer_of(report.timeline, report.path)
    assert isinstance(layer, Layer) and "batch 4" in note and r.hardware == HARDWARE["h100"]
    by = {row.node: row for row in r.nodes}
    assert "allreduce_attn" not in by and len(by) == 26
    experts = layer.node("experts")
    row = by["experts"]
    assert row.time_us == report.summary.nodes["experts"].median
    assert row.floor_us == HARDWARE["h100"].floor_us(experts)
    assert row.achieved_gbs == experts.bytes / (row.time_us * 1e3) and row.bound == "memory"
    assert row.of_bandwidth == row.achieved_gbs / HARDWARE["h100"].hbm_gbs
    assert 0.5 < row.of_roofline <= 1.0


def test_roofline_of_a_foreign_trace_says_no_shape(tmp_path):
    tl = Timeline([Interval("sm90_xmma_gemm", "7", 0.0, 5.0, layer=0)], Source("trace", "NVIDIA H100"))
    layer, note = layer_of(tl, tmp_path / "x.json")
    assert layer is None and note.startswith("no shape")


def test_critical_path_plot_is_written_atomically(tmp_path):
    res = runner.invoke(app, ["summary", str(H100 / "a_v4-b4.trace.json.gz"), "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_v4-b4-critical-path.png",
                                                          "a_v4-b4-critical-path.svg"]
    assert (tmp_path / "a_v4-b4-critical-path.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<svg" in (tmp_path / "a_v4-b4-critical-path.svg").read_text()[:2000]
    assert "critical path" in res.output and "nan" not in res.output


@pytest.mark.skipif(not QWEN.exists(), reason="../shared/traces is not here")
def test_foreign_graph_replay_from_elsewhere():
    e = explain(summarize_trace(QWEN), what_ifs=["gemm=0.5x"]).summary
    assert e.dependencies.origin == "stream" and "graph replay" in e.dependencies.note
    p = e.critical_path
    # one stream of the replay holds the whole path: the step is its kernels and their gaps
    assert list(p.by_stream_us) == ["3"] and p.cross_stream_waits == 0
    assert p.kernels[0].start_us + p.busy_us + p.gaps_us == pytest.approx(p.span_us)
    gemm = e.what_if.matched[0]
    assert gemm.us_per_step.after == pytest.approx(gemm.us_per_step.before / 2)
    assert e.what_if.step_us.delta == pytest.approx(-gemm.us_per_step.before / 2, rel=0.01)
    assert e.roofline.nodes == () and "no shape" in e.roofline.note
