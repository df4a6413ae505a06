"""Calibration reads only serial measurements, isolated nodes and the pairwise benchmark; its
profile reproduces the serial layer, takes each variant's own node latencies, and recovers the
cross-stream parameters that generated synthetic pairwise data."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from streamlab.errors import Failure
from streamlab.results import NodeTime, RunResult
from streamlab.scenario import load
from streamlab.schedule.program import Launch, Program, WaitStream
from streamlab.sim.calibrate import calibrate
from streamlab.sim.engine import per_layer_us, simulate
from streamlab.sim.pairwise import NOOP
from streamlab.sim.profile import Param, variant_key
from streamlab.sim.profile_file import dump_profile, load_profile
from tests.synthetic import run_result, with_node
from tests.synthetic import write as write_runs

SCENARIOS = Path(__file__).parent.parent / "scenarios"


def measured(name: str, batch: int, node_us: float, layer_us: float, iso: dict | None = None) -> RunResult:
    """A result as `streamlab run` writes it: every node `node_us` in the graph, isolated 1.1x
    that unless `iso` says otherwise."""
    return run_result(name, batch, node_us=node_us, latency=layer_us, iso=iso)


def write(tmp_path: Path, name: str, doc) -> Path:
    """Runs as a compare report (a GPU matrix); anything else (pairwise.json) as plain JSON."""
    if isinstance(doc, list) and doc and isinstance(doc[0], RunResult):
        return write_runs(tmp_path, name, doc)
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return path


def test_profile_from_serial_runs_reproduces_them(tmp_path):
    n = len(load(SCENARIOS / "serial.yaml").layer.nodes)
    runs = [measured("serial", 4, 3.0, 3.0 * n + 0.5 * 2 * n), measured("serial", 64, 5.0, 5.0 * n + 0.5 * 2 * n),
            measured("a_v4_moe_dual", 4, 99.0, 999.0)]
    prof = calibrate([write(tmp_path, "matrix.json", runs)], "h200")
    assert prof.launch_gap_us.value == pytest.approx(0.5)
    assert prof.node_us["qkv_a_proj"] == {4: 3.0, 64: 5.0}  # the dual run is held out
    assert prof.streams == "cuda"
    (tmp_path / "h200.yaml").write_text(dump_profile(prof))
    again = load_profile(str(tmp_path / "h200.yaml"))
    assert again.node_us == prof.node_us and again.launch_gap_us == prof.launch_gap_us
    assert again.variant_node_us == prof.variant_node_us
    serial = load(SCENARIOS / "serial.yaml")
    tl = simulate(serial.layer, serial.program, again, layers=4)
    # n nodes of 3 us in 2 kernels each, 0.5 us after every kernel (the replay's last one uncounted)
    assert per_layer_us(tl, 4) == pytest.approx(3.0 * n + 0.5 * 2 * n - 0.5 / 4)
    assert prof.node_kernels["experts"] == 2


def test_the_launch_gap_is_per_batch_and_a_node_enters_at_its_mean_over_layers(tmp_path):
    """The serial layer is reproduced at every measured batch, with a gap below 0 too (its node
    times, from the profiler, read longer than the replay timed with events); a node whose layers
    differ (p80 far above the median) counts at the mean of p20, median and p80."""
    serial = load(SCENARIOS / "serial.yaml")
    n = len(serial.layer.nodes)
    b1 = measured("serial", 1, 3.0, 3.0 * n - 0.1 * 2 * n)  # 2 kernels per node, each 0.1 us shorter
    b64 = measured("serial", 64, 5.0, 5.0 * (n - 1) + 8.0 + 0.3 * 2 * n)
    b64 = with_node(b64, "experts", in_graph_us=NodeTime(5.0, 4.0, 15.0, 20))
    prof = calibrate([write(tmp_path, "m.json", [b1, b64])], "x")
    assert prof.node_us["experts"] == {1: 3.0, 64: pytest.approx(8.0)}
    assert prof.launch_gap_us.by_batch == {1: pytest.approx(-0.1), 64: pytest.approx(0.3)}
    assert prof.launch_gap_us.at(8) == pytest.approx(0.1)  # halfway in log(batch)
    assert "per batch" in prof.launch_gap_us.source
    # a result that has each node's mean (streamlab writes it) is taken at its word
    b64 = with_node(b64, "experts", in_graph_us=NodeTime(5.0, 4.0, 15.0, 20, mean=9.0))
    assert calibrate([write(tmp_path, "m.json", [b1, b64])], "x").node_us["experts"][64] == 9.0
    for batch, layer_us in ((1, 3.0 * n - 0.2 * n), (64, 5.0 * (n - 1) + 8.0 + 0.6 * n - 0.3 / 4)):
        scen = serial.override(batch=batch)  # the replay's last gap is not counted
        tl = simulate(scen.layer, scen.program, prof, layers=4)
        assert per_layer_us(tl, 4) == pytest.approx(layer_us)


def test_a_variant_takes_its_own_isolated_latency_on_the_serial_in_graph_scale(tmp_path):
    # serial: every node 3 us in the graph, isolated 1.1x; experts isolated 4 us (ratio 0.75)
    serial = measured("serial", 4, 3.0, 200.0, iso={"experts": 4.0})
    # the unfused variant: its experts are another kernel (isolated 20 us), its shared expert is
    # new (isolated 8 us: scaled by the median ratio 1 / 1.1); the attention nodes are identical
    dual = measured("a_v4_moe_dual", 4, 99.0, 999.0, iso={"experts": 20.0, "shared_down": 8.0})
    prof = calibrate([write(tmp_path, "m.json", [serial, dual])], "x")
    key = variant_key(load(SCENARIOS / "a_v4_moe_dual.yaml").variant)
    own = prof.variant_node_us[key]
    assert own["experts"] == {4: pytest.approx(20.0 * 3.0 / 4.0)}
    assert own["shared_down"] == {4: pytest.approx(8.0 / 1.1)}
    assert "qkv_a_proj" not in own and "mla_decode" not in own  # same kernel as serial's
    assert "moe_topk" in own  # it picks no shared-expert slot here: another kernel
    # the simulator uses the variant's latency for the dual layout and the base one for serial
    p = replace(prof, launch_gap_us=Param(0.0, "t"), multi_stream_launch_gap_us=Param(0.0, "t"),
                fence_us=Param(0.0, "t"), concurrency_slowdown=Param(0.0, "t"))
    for name, want in (("a_v4_moe_dual", 15.0), ("serial", 3.0)):
        scen = load(SCENARIOS / f"{name}.yaml")
        tl = simulate(scen.layer, scen.program, p, layers=1)
        experts = next(iv for iv in tl.intervals if iv.node == "experts")
        assert experts.end - experts.start == pytest.approx(want, rel=1e-3)  # HBM shared a little


def test_a_variant_takes_its_in_graph_latency_from_its_own_serial_layout(tmp_path):
    """Where the variant's single-stream layout was measured at a batch, its in-graph medians
    win over the isolated estimate; other batches keep the estimate."""
    serial = [measured("serial", b, 3.0, 200.0, iso={"experts": 4.0}) for b in (4, 16)]
    dual = [measured("a_v4_moe_dual", b, 99.0, 999.0, iso={"experts": 20.0}) for b in (4, 16)]
    own_serial = measured("serial_moe_unfused", 4, 13.0, 500.0)
    prof = calibrate([write(tmp_path, "m.json", [*serial, *dual, own_serial])], "x")
    own = prof.variant_node_us[variant_key(load(SCENARIOS / "a_v4_moe_dual.yaml").variant)]
    assert own["experts"] == {4: 13.0, 16: pytest.approx(20.0 * 3.0 / 4.0)}
    assert own["shared_down"][4] == 13.0
    assert prof.node_us["experts"] == {4: 3.0, 16: 3.0}  # the base variant: serial's own
    assert "serial_moe_unfused" in prof.variant_source


def test_calibrate_needs_a_serial_run(tmp_path):
    with pytest.raises(Failure, match="no measured run of the 'serial' layout"):
        calibrate([write(tmp_path, "r.json", [measured("a_v4", 4, 3.0, 100.0)])], "x")


# --- pairwise: synthetic data from known parameters, then calibrate must find them ---

ALONE_US = {"q_b_proj": 7.0, "idx_wq_b": 8.0, "experts": 300.0, "shared_down": 5.0,
            "allreduce_attn": 11.0, NOOP: 1.0}
EXCESS = {("q_b_proj", "idx_wq_b"): 1.2, ("idx_wq_b", "q_b_proj"): 1.0,
          ("experts", "shared_down"): 0.25, ("shared_down", "experts"): -0.3}  # noise below 0
HARNESS_US, GAP, FENCE_EXTRA, ENTRY, AR_FACTOR = 2.0, 0.4, 0.3, 6.0, 1.25
SERIAL_US = {4: 200.0, 64: 260.0}  # the serial layer in a fresh process (matrix)
BRANCHED_SERIAL_US = {4: 220.0, 64: 300.0}  # the same once graphs with branches ran: 20, 40 us more


def serial_runs(tmp_path: Path) -> Path:
    """Serial runs of nodes so short that the launch gap is nearly all of the layer."""
    return write(tmp_path, "m.json", [measured("serial", b, 0.001, us) for b, us in SERIAL_US.items()])


def pairwise_doc(states: tuple[str, ...] = ("clean", "cupti")) -> dict:
    """What a pairs stage (calibration/pairbench.py) would write for a device with these pair excesses, fence, graph
    entry and all-reduce slowdown (in every state alike)."""
    records = []

    def rec(state, batch, kind, units, main, alt, us):
        records.append({"state": state, "batch": batch, "kind": kind, "units": units, "main": main,
                        "alt": alt, "replay_us": us})

    def makespan(a: str, b: str) -> float:
        if a == "allreduce_attn":  # it outlasts b and runs 1 / f as fast while b runs
            return ALONE_US[b] + ALONE_US[a] - ALONE_US[b] / AR_FACTOR
        return max(ALONE_US[a], ALONE_US[b]) + EXCESS[(a, b)] * min(ALONE_US[a], ALONE_US[b])
    for state in states:
        for units in (4, 16, 64):
            rec(state, 0, "chain", units, [NOOP], [], 5.0 + units * (1.0 + GAP))
            rec(state, 0, "ladder", units, [NOOP], [NOOP], 5.0 + ENTRY + units * (1.0 + GAP + FENCE_EXTRA))
        for batch in (4, 64):
            rec(state, batch, "pair", 8, [NOOP], [NOOP], 8 * (HARNESS_US + 1.0))
            for a, b in [*EXCESS, ("allreduce_attn", "q_b_proj")]:
                rec(state, batch, "pair", 8, [a], [NOOP], 8 * (HARNESS_US + ALONE_US[a]))
                rec(state, batch, "pair", 8, [NOOP], [b], 8 * (HARNESS_US + ALONE_US[b]))
                rec(state, batch, "pair", 8, [a], [b], 8 * (HARNESS_US + makespan(a, b)))
    scen = load(SCENARIOS / "a_v4_moe_dual.yaml")
    return {"device": "NVIDIA H200", "model": "glm5",
            "shape": {k: v for k, v in vars(scen.shape).items() if k != "batch"},
            "variant": vars(scen.variant), "records": records, "noop_us": 1.0,
            "serial_layer_us": {s: {str(b): us for b, us in BRANCHED_SERIAL_US.items()} for s in states}}


def test_pairwise_fit_recovers_the_parameters_that_made_the_data(tmp_path):
    n = len(load(SCENARIOS / "serial.yaml").layer.nodes)
    pw = write(tmp_path, "pairwise.json", pairwise_doc())
    prof = calibrate([serial_runs(tmp_path)], "x", pairwise=pw)
    gap = {b: (us - 0.001 * n) / (2 * n) for b, us in SERIAL_US.items()}  # from the matrix's serial runs
    # from pairwise's: each batch's gap + the median of what the serial layer gains per kernel
    branched = {b: g + 30.0 / (2 * n) for b, g in gap.items()}
    assert prof.launch_gap_us.by_batch == pytest.approx(gap)
    assert prof.multi_stream_launch_gap_us.by_batch == pytest.approx(branched)
    for b in gap:
        assert prof.lane_gap_us(False, b) == pytest.approx(gap[b])
        assert prof.lane_gap_us(True, b) == pytest.approx(branched[b])
    assert prof.fence_us.by_batch == pytest.approx({b: g + FENCE_EXTRA for b, g in branched.items()})
    assert prof.multi_stream_graph_entry_us.value == pytest.approx(ENTRY)
    assert "clean process state" in prof.fence_us.source
    assert prof.ar_concurrency_factor.value == pytest.approx(AR_FACTOR)
    assert prof.concurrency_slowdown.value == 0.0  # superseded by the pairs
    for (a, b), e in EXCESS.items():
        assert prof.pair_excess[f"{a}|{b}"] == {4: pytest.approx(max(0.0, e)), 64: pytest.approx(max(0.0, e))}
    assert not any("allreduce" in k for k in prof.pair_excess)  # its factor covers it
    # the fallback demands: where a pair measured e > 0 they add up to 1 + e (the smaller one,
    # since one demand per node cannot tell the two orders apart)
    sm = prof.sm_demand
    assert sm["q_b_proj"][4] + sm["idx_wq_b"][4] == pytest.approx(2.0, abs=0.03)  # capped at 1 each
    assert sm["experts"][64] + sm["shared_down"][64] == pytest.approx(1.0, abs=0.2)
    (tmp_path / "p.yaml").write_text(dump_profile(prof))
    again = load_profile(str(tmp_path / "p.yaml"))
    for table in ("pair_excess", "sm_demand"):  # written to 3 decimals
        assert getattr(again, table) == {k: {b: pytest.approx(v, abs=1e-3) for b, v in t.items()}
                                         for k, t in getattr(prof, table).items()}
    assert again.multi_stream_graph_entry_us == prof.multi_stream_graph_entry_us
    assert again.lane_gap_us(True, 64) == pytest.approx(branched[64], abs=1e-4)
    # the engine realizes a measured pair: q_b_proj then idx_wq_b together take 8 + 1.2 * 7 us
    p = replace(again, node_us={"q_b_proj": {4: 7.0}, "idx_wq_b": {4: 8.0}})
    assert pair_makespan(p, "q_b_proj", "idx_wq_b", 4) == pytest.approx(8.0 + 1.2 * 7.0)


def pair_makespan(prof, first: str, second: str, batch: int) -> float:
    """The two nodes forked onto two lanes in a graph of their own, on the engine."""
    layer = load(SCENARIOS / "a_v4_moe_dual.yaml").override(batch=batch).layer
    prog = Program([WaitStream("alt", "main"), Launch(first, "main"), Launch(second, "alt"),
                    WaitStream("main", "alt")])
    none = Param(0.0, "t")
    tl = simulate(layer, prog, replace(prof, launch_gap_us=none, multi_stream_launch_gap_us=none,
                                       fence_us=none, multi_stream_graph_entry_us=none), layers=1)
    return max(iv.end for iv in tl.intervals) - min(iv.start for iv in tl.intervals)


def test_pairwise_state_can_be_named_and_must_exist(tmp_path):
    pw = write(tmp_path, "pairwise.json", pairwise_doc(("cupti",)))
    m = serial_runs(tmp_path)
    assert "cupti process state" in calibrate([m], "x", pairwise=pw).fence_us.source  # the only one
    with pytest.raises(Failure, match="no state 'clean'"):
        calibrate([m], "x", pairwise=pw, pairwise_state="clean")


def test_the_demand_model_in_closed_form_is_the_engine_s():
    """fit_overlap uses max(1, HBM sum, SM sum) - 1 for speed; the engine's own replay of two
    kernels started together must give the same excess."""
    from streamlab.sim.engine import Kernel, pair_excess
    from streamlab.sim.pairwise import Demand, demand_excess
    from tests.simprofile import bare_profile

    p = bare_profile()
    for us_a, us_b, h_a, h_b, s_a, s_b in [(10, 4, 0.1, 0.2, 0.5, 0.7), (3, 9, 0.8, 0.7, 0.2, 0.1),
                                           (5, 5, 0.0, 0.0, 1.0, 1.0), (7, 2, 0.3, 0.1, 0.3, 0.2)]:
        engine = pair_excess(p, Kernel(us_a, h_a, s_a), Kernel(us_b, h_b, s_b))
        assert demand_excess(Demand(us_a, h_a), Demand(us_b, h_b), s_a, s_b) == pytest.approx(engine, abs=1e-9)


def test_the_overlap_model_spread_is_its_leave_one_out_miss(tmp_path):
    """Every measured pair predicted from the others at its batch: pairs with e > 1 (the GEMMs)
    cannot be predicted by one demand per node, so the spread is large, and it says how many."""
    pw = write(tmp_path, "pairwise.json", pairwise_doc())
    prof = calibrate([serial_runs(tmp_path)], "x", pairwise=pw)
    spread = prof.overlap_model_spread
    # q_b_proj|idx_wq_b left out: both nodes fall to the prior, whose demands cannot exceed 1: e 0 for 1.2
    assert spread.value == pytest.approx(1.2, abs=1e-6) and "leave-one-out" in spread.source
    assert f"{2 * len(EXCESS)} measurements" in spread.source  # 4 ordered pairs at 2 batches
