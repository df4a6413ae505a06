"""Dependency graphs of traces: Timeline edges, their Chrome-trace flow events, the captured
graph's edges of our own runs (recorded, or recovered from the scenario), and CUPTI event waits
in Kineto traces (a synthetic trace with known waits, and a real one from ../shared)."""

import gzip
import json
from pathlib import Path

import pytest

from streamlab.errors import EXIT_BAD_INPUT, Failure
from streamlab.scenario import load
from streamlab.schedule.graph import capture_edges, with_capture_edges
from streamlab.timeline import Edge, Interval, Source, Timeline
from streamlab.trace.chrome import from_chrome, read_chrome, to_chrome, write_chrome
from streamlab.trace.deps import STREAM, dependency_graph, for_trace, scenario_edges
from streamlab.trace.formats import load_trace

ROOT = Path(__file__).resolve().parents[1]
H100 = ROOT / "traces" / "h100-2026-11-22"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "traces"
EVENT_SYNC = SHARED / "event_sync_trace.json.gz"
T0 = 1_000_000.0


def test_timeline_renumbers_edges_when_it_sorts():
    a, b, c = (Interval("a", "0", 5.0, 6.0), Interval("b", "1", 0.0, 1.0),
               Interval("c", "1", 7.0, 8.0))
    tl = Timeline([a, b, c], Source("trace"), edges=[Edge(0, 2, "event"), Edge(1, 0, "graph")])
    assert [iv.name for iv in tl.intervals] == ["b", "a", "c"]
    assert tl.edges == [Edge(1, 2, "event"), Edge(0, 1, "graph")]
    assert Timeline([a, b], Source("trace")).edges == []  # default: none


def test_edges_are_flow_events_and_read_back_exactly(tmp_path):
    tl = Timeline([Interval("k1", "7", 0.1, 2.2, "n1", 0), Interval("k2", "9", 2.5, 3.0, "n2", 0),
                   Interval("k3", "7", 3.1, 4.0, "n3", 0)], Source("measured", "H100"),
                  layers=[(0.1, 4.0)], edges=[Edge(0, 1, "graph"), Edge(1, 2, "launch")])
    events = to_chrome(tl)["traceEvents"]
    flows = [e for e in events if e["ph"] in ("s", "f")]
    assert [(e["ph"], e["id"], e["tid"], e["ts"]) for e in flows] == [
        ("s", 0, 1, 0.1), ("f", 0, 2, 2.5), ("s", 1, 2, 2.5), ("f", 1, 1, 3.1)]
    assert all(e.get("bp") == "e" for e in flows if e["ph"] == "f")
    assert flows[0]["args"] == {"before": 0, "after": 1, "kind": "graph"}
    assert from_chrome(json.loads(json.dumps(to_chrome(tl)))) == tl
    write_chrome(tl, tmp_path / "t.trace.json.gz")
    assert read_chrome(tmp_path / "t.trace.json.gz") == tl
    assert load_trace(tmp_path / "t.trace.json.gz").timeline.edges == tl.edges


def test_an_edge_naming_no_interval_is_bad_input(tmp_path):
    obj = to_chrome(Timeline([Interval("k", "0", 0.0, 1.0, "n", 0)], Source("measured", "x")))
    obj["traceEvents"].append({"ph": "s", "id": 0, "cat": "dependency", "name": "graph", "pid": 1,
                               "tid": 1, "ts": 0.0, "args": {"before": 0, "after": 5, "kind": "graph"}})
    path = tmp_path / "bad.trace.json"
    path.write_text(json.dumps(obj))
    with pytest.raises(Failure) as e:
        load_trace(path)
    assert e.value.code == EXIT_BAD_INPUT and "names no interval" in str(e.value)


def test_an_edge_pointing_back_in_time_is_refused():
    tl = Timeline([Interval("a", "0", 0.0, 1.0), Interval("b", "1", 2.0, 3.0)], Source("trace"),
                  edges=[Edge(1, 0, "graph")])
    with pytest.raises(Failure, match="the waiting interval starts first"):
        dependency_graph(tl, origin="recorded", note="")


def _a_v4():
    return load_trace(H100 / "a_v4-b4.trace.json.gz")


def test_capture_edges_of_a_run_hold_in_its_trace():
    tl = _a_v4().timeline
    ivs = tl.intervals
    edges = capture_edges(tl, load(ROOT / "scenarios" / "a_v4.yaml").program, 4)
    # every edge of the captured graph was respected by the GPU: the waiting kernel started
    # after the one it waited for ended
    assert all(ivs[e.before].end <= ivs[e.after].start for e in edges)
    kinds = {k: sum(e.kind == k for e in edges) for k in ("graph", "launch")}
    assert kinds["launch"] == 4  # 5 replays: one sink (allreduce_moe's last kernel) -> one root
    cross = [e for e in edges if ivs[e.before].stream != ivs[e.after].stream]
    assert len(cross) >= 4 * 5  # forks and joins of every layer, on physical streams
    launch = [e for e in edges if e.kind == "launch"]
    assert all(ivs[e.before].node == "allreduce_moe" and ivs[e.after].node == "input_norm"
               for e in launch)
    assert [ivs[e.after].layer for e in launch] == [4, 8, 12, 16]


def test_recorded_edges_and_scenario_edges_give_the_same_graph(tmp_path):
    loaded = _a_v4()
    from_scenario = for_trace(loaded.timeline, loaded.info)
    assert from_scenario.origin == "scenario" and "a_v4.yaml" in from_scenario.note
    recorded = with_capture_edges(loaded.timeline, load(ROOT / "scenarios" / "a_v4.yaml").program, 4)
    write_chrome(recorded, tmp_path / "a.trace.json.gz")
    again = load_trace(tmp_path / "a.trace.json.gz")
    graph = for_trace(again.timeline, again.info)
    assert graph.origin == "recorded" and "774 graph edges" in graph.note
    n = len(graph.timeline.intervals)
    assert [graph.deps(i) for i in range(n)] == [from_scenario.deps(i) for i in range(n)]
    assert graph.steps == 5 and graph.step_of[0] == 0 and graph.step_of[-1] == 4


def test_a_trace_whose_scenario_is_unknown_falls_back_to_stream_order():
    loaded = _a_v4()
    tl = loaded.timeline
    stranger = Timeline(list(tl.intervals), Source("measured", "H100", {"scenario": "no_such"}),
                        list(tl.layers))
    edges, why = scenario_edges(stranger)
    assert edges == [] and "no_such.yaml" in why and "not there" in why
    graph = for_trace(stranger, loaded.info)
    assert graph.origin == "stream" and not graph.edges_known
    assert "stream order only" in graph.note
    assert not graph.edges and all(d.kind == STREAM for i in range(len(tl.intervals))
                                   for d in graph.deps(i))


# --- Kineto event waits ----------------------------------------------------------------------

def _op(name, stream, ts, dur, corr):
    return {"ph": "X", "cat": "kernel", "name": name, "pid": 0, "tid": stream, "ts": T0 + ts,
            "dur": dur, "args": {"device": 0, "stream": stream, "correlation": corr}}


def _runtime(name, ts, corr):
    return {"ph": "X", "cat": "cuda_runtime", "name": name, "pid": 9, "tid": 9, "ts": T0 + ts,
            "dur": 1, "args": {"correlation": corr}}


def _wait(stream, on, record, corr, ts):
    return {"ph": "X", "cat": "cuda_sync", "name": "Stream Wait Event", "pid": 0, "tid": stream,
            "ts": T0 + ts, "dur": 1, "args": {"cuda_sync_kind": "Stream Wait Event", "stream": stream,
                                            "wait_on_stream": on, "wait_on_cuda_event_record_corr_id": record,
                                            "correlation": corr, "device": 0}}


def test_stream_wait_events_become_edges(tmp_path):
    # stream 7: a (corr 10), b (corr 12); record on 7 after a (corr 11); stream 9 waits on it
    # (corr 13), then c (corr 14); d (corr 15) on 9 follows c by stream order
    events = [_op("a", 7, 0, 10, 10), _runtime("cudaEventRecord", 1, 11), _op("b", 7, 10, 10, 12),
              _runtime("cudaStreamWaitEvent", 2, 13), _wait(9, 7, 11, 13, 2),
              _op("c", 9, 11, 4, 14), _op("d", 9, 15, 2, 15)]
    path = tmp_path / "waits.json"
    path.write_text(json.dumps({"traceEvents": events}))
    loaded = load_trace(path)
    path.unlink()  # the waits were read in the loader's one pass
    assert (loaded.info.event_edges, loaded.info.loader().event_waits) == ([(0, 2)], 1)
    graph = for_trace(loaded.timeline, loaded.info)
    names = [iv.name for iv in loaded.timeline.intervals]
    assert names == ["a", "b", "c", "d"]
    assert graph.origin == "events" and "1 observed event waits" in graph.note
    assert [[(names[d.before], d.kind) for d in graph.deps(i)] for i in range(4)] == [
        [], [("a", "stream")], [("a", "event")], [("c", "stream")]]


def test_stream_waits_of_another_gpu_or_outside_the_trace(tmp_path):
    """A wait whose recorded event precedes every operation on its stream names work outside
    the trace; a wait of another GPU belongs to that GPU's summary."""
    other = [dict(e, args=dict(e["args"], device=1)) for e in (_op("x", 7, 30, 1, 20),
                                                             _wait(9, 7, 21, 22, 31), _op("y", 9, 32, 1, 23))]
    events = [_wait(9, 7, 5, 13, 2), _op("a", 7, 0, 10, 10), _op("c", 9, 11, 4, 14)] + other
    path = tmp_path / "waits.json.gz"
    path.write_bytes(gzip.compress(json.dumps({"traceEvents": events}).encode()))
    loaded = load_trace(path, gpu="0")
    assert loaded.info.event_edges == [] and loaded.info.event_waits_unmatched == 1
    graph = for_trace(loaded.timeline, loaded.info)
    assert graph.origin == "stream" and "1 event waits name work outside the trace" in graph.note
    on_one = load_trace(path, gpu="1")
    assert [(on_one.timeline.intervals[a].name, on_one.timeline.intervals[b].name)
            for a, b in on_one.info.event_edges] == [("x", "y")]


@pytest.mark.skipif(not EVENT_SYNC.exists(), reason="../shared/traces is not here")
def test_event_sync_trace_from_elsewhere():
    loaded = load_trace(EVENT_SYNC)
    graph = for_trace(loaded.timeline, loaded.info)
    ivs = loaded.timeline.intervals
    events = [(ivs[d.before], ivs[i]) for i in range(len(ivs)) for d in graph.deps(i)
              if d.kind == "event"]
    # the memset on stream 24 waits for the sgemm on stream 20 (event recorded at correlation 1385)
    assert [(a.name, a.stream, b.name, b.stream) for a, b in events] == [
        ("ampere_sgemm_128x64_nn", "20", "Memset (Device)", "24")]
    assert graph.steps == 1


def test_a_graph_replay_of_a_foreign_trace_says_its_edges_are_unknown(tmp_path):
    events = [_runtime("cudaGraphLaunch", 0, 50), _op("k1", 7, 1, 2, 50), _op("k2", 8, 1.5, 2, 50),
              _op("k3", 7, 4, 1, 50)]
    path = tmp_path / "replay.json.gz"
    path.write_bytes(gzip.compress(json.dumps({"traceEvents": events}).encode()))
    loaded = load_trace(path)
    graph = for_trace(loaded.timeline, loaded.info)
    assert graph.origin == "stream" and "graph replay" in graph.note and "2 streams" in graph.note
    assert graph.steps == 1 and set(graph.step_of) == {0}


@pytest.mark.gpu
def test_a_fresh_runs_trace_respects_its_captured_graph(tmp_path):
    """On a GPU: run a_v4 at batch 4, read its trace back; the run recorded its captured graph's
    edges (exec.measure), and every one of them held on the device."""
    from rich.console import Console

    from streamlab.session.run import run_scenario

    scen = load(ROOT / "scenarios" / "a_v4.yaml").override(batch=4)
    run_scenario(scen, Console(), backend=None, device="cuda", layers=None, out=tmp_path)
    (trace,) = tmp_path.glob("a_v4-glm5-b4-*.trace.json.gz")  # the name says everything that makes the run
    loaded = load_trace(trace)
    graph = for_trace(loaded.timeline, loaded.info)
    assert graph.origin == "recorded", graph.note
    ivs = loaded.timeline.intervals
    waits = [(d.before, i) for i in range(len(ivs)) for d in graph.deps(i) if d.kind != STREAM]
    assert len(waits) > 100
    assert all(ivs[a].end <= ivs[b].start + 1e-3 for a, b in waits)
