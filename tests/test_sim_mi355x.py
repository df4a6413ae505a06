"""The mi355x profile against the published single-stream vs A_v4 + MoE-dual analysis (reference
section 5, one trace, 15 layers averaged).

The profile is built from single-stream and component facts only (node times split by the
published single-stream walls, no launch gap, the cross-queue stall, the re-entry stall, the
per-kernel queue wait, the all-reduce beside the alt stream, the MoE kernel time, and how HIP maps
a graph's branches to hardware queues); the dual-stream layer, its bubble and stalls and its MoE
and indexer walls come out of the model. The issue asks each component within 20% of the
published one and the total within 10% of +49 us. Then each mechanism is taken away in turn: the
part it carries must leave its bound, so these tests fail if a mechanism is removed.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from streamlab.analysis import summarize
from streamlab.scenario import load
from streamlab.schedule.graph import Captured, captured, hip_queue_ids
from streamlab.sim.engine import run
from streamlab.sim.explain import breakdown, launch_queue_branches
from streamlab.sim.predict import predict
from streamlab.sim.profile import Param
from streamlab.sim.profile_file import load_profile

SCENARIOS = Path(__file__).parent.parent / "scenarios"
TOTAL, BUBBLE, STALLS = "total per layer", "all-stream-idle bubble", "  of it >= 2 us stalls"
AR, MOE, INDEXER = "all-reduce (per call x calls)", "MoE block wall", "indexer chain wall"
PUBLISHED = {TOTAL: 49.0, BUBBLE: 18.2, STALLS: 17.3, AR: 15.8, MOE: 8.8, INDEXER: 7.0}  # per layer, us
BOUND = {TOTAL: 0.10, BUBBLE: 0.20, STALLS: 0.20, AR: 0.20, MOE: 0.20, INDEXER: 0.20}


@pytest.fixture(scope="module")
def mi355x():
    return load_profile("mi355x")


@pytest.fixture(scope="module")
def dual():
    return load(SCENARIOS / "a_v4_moe_dual.yaml")


def parts(scen, profile) -> dict:
    return {p.name: p for p in breakdown(scen, profile)}


def off(part) -> float:
    return (part.difference_us - PUBLISHED[part.name]) / PUBLISHED[part.name]


def test_the_single_stream_layer_is_the_published_one(mi355x, dual):
    """The inputs: the serial layer and its parts are the published single-stream figures."""
    p = parts(dual, mi355x)
    assert p[TOTAL].baseline_us == pytest.approx(271, abs=0.5)
    assert p[BUBBLE].baseline_us == pytest.approx(0.0, abs=0.5)  # the trace idles ~0 us
    assert p[AR].baseline_us == pytest.approx(20.6)
    assert p[MOE].baseline_us == pytest.approx(78.6)
    assert p[INDEXER].baseline_us == pytest.approx(63.3)


def test_each_dual_stream_component_lands_within_its_bound(mi355x, dual):
    p = parts(dual, mi355x)
    for name, published in PUBLISHED.items():
        assert p[name].published_us == pytest.approx(published), name  # what the profile carries
        assert abs(off(p[name])) <= BOUND[name], f"{name}: {p[name].difference_us:+.1f} vs {published:+.1f}"
    assert abs(p[STALLS].difference_us - 18.2) / 18.2 <= 0.2  # also against the bubble, as the issue reads
    # the published decomposition leaves -0.8 us to the rest; the model a few us more saved elsewhere
    assert -10 < p["rest: total - bubble, all-reduce, MoE, indexer (overlap saved, other kernels slowed)"].difference_us < 5


def test_the_a_v4_overlap_costs_more_than_it_hides(mi355x, dual):
    """Why the overlap saves nothing on MI355X: where the indexer has a queue of its own, it starts
    a fence after kv_a_norm (as q_b_proj does) and mla_decode starts a fence after it ends, so the
    span from kv_a_norm to attention is two fences and the slower indexer: longer than the serial
    layer's q_b_proj, bmm_w_kc, rope_cat_cache (the published ~10 us theoretical saving) and indexer."""
    serial = load(SCENARIOS / "serial.yaml")
    fence = mi355x.fence_us.value
    hidden = sum(mi355x.node_us[n][4] for n in ("q_b_proj", "bmm_w_kc", "rope_cat_cache"))
    assert hidden == pytest.approx(10.0) and 2 * fence > hidden
    first = {iv.node: iv for iv in run(serial.layer, serial.program, mi355x, 2).timeline.intervals if iv.layer == 1}
    serial_span = first["mla_decode"].start - first["q_b_proj"].start
    tl = run(dual.layer, dual.program, mi355x, 8).timeline
    own_queue = 0
    for layer in range(8):
        iv = {i.node: i for i in tl.intervals if i.layer == layer}
        if iv["idx_wq_b"].stream in ("0", iv["kv_a_norm"].stream):
            continue
        own_queue += 1
        assert iv["idx_wq_b"].start == pytest.approx(iv["kv_a_norm"].end + fence)
        assert iv["mla_decode"].start == pytest.approx(iv["idx_topk"].end + fence)
        assert iv["mla_decode"].start - iv["kv_a_norm"].end > serial_span
    assert own_queue == 6  # three layers in four: the fourth puts the indexer on queue 0, after q_b_proj


def test_a_quarter_of_the_branches_wrap_onto_the_launch_queue_and_run_after_main(mi355x, dual):
    """The HIP walk over 4 stream ids: kv_a_norm, the indexer and the shared expert each land on id
    0 (the launch stream's queue) in one layer of four, and run there one after the other with the
    main branch (the barrier bit)."""
    c = captured(dual.program, 4)
    ids = hip_queue_ids(c, mi355x.hip_queues)
    at = {k: q for k, q in zip(c.keys, ids)}
    assert [at[(layer, "kv_a_norm")] for layer in range(4)] == [0, 1, 2, 3]
    assert [at[(layer, "idx_wq_b")] for layer in range(4)] == [3, 0, 1, 2]
    assert [at[(layer, "shared_gate_up")] for layer in range(4)] == [2, 3, 0, 1]
    assert launch_queue_branches(dual, mi355x, 16) == (12, 48)
    iv = {i.node: i for i in run(dual.layer, dual.program, mi355x, 4).timeline.intervals if i.layer == 1}
    assert iv["idx_wq_b"].start >= iv["q_b_proj"].end and iv["idx_wq_b"].stream == iv["q_b_proj"].stream


def test_hip_walk_follows_clr_where_a_per_edge_counter_would_not():
    """clr's iterative walk (rocm-systems #2876), worked by hand on a graph where counting extra
    out-edges gives node 9 id 1: the walk reaches 9 from 6 on the branch that carries id 0."""
    parents = [[], [0], [1], [1], [1, 2, 3], [1], [1, 5], [2, 6], [2, 3, 6], [0, 5, 6]]
    children = [[c for c, ps in enumerate(parents) if p in ps] for p in range(len(parents))]
    c = Captured([(0, str(i)) for i in range(10)], ["main"] * 10, parents, children)
    assert hip_queue_ids(c, 4) == [0, 0, 0, 3, 0, 0, 0, 1, 2, 0]
    assert hip_queue_ids(c, 2) == [0, 0, 0, 1, 0, 0, 0, 1, 0, 0]


@pytest.mark.parametrize("mechanism, change, leaves", [
    ("the cross-queue wait (fence)", {"fence_us": Param(0.0, "removed")}, (TOTAL, STALLS, BUBBLE)),
    ("the per-kernel queue wait", {"queue_wait_kernel_us": Param(0.0, "removed")}, (TOTAL, INDEXER, MOE)),
    ("the re-entry stall", {"multi_stream_entry_us": Param(0.0, "removed")}, (TOTAL, STALLS, BUBBLE)),
    ("the all-reduce beside the alt stream", {"ar_concurrency_factor": Param(1.0, "removed")}, (TOTAL, AR)),
    ("branches wrapping onto the launch queue", {"hip_queues": 64}, (TOTAL,)),
    ("no launch gap (a trace's kernel time holds it)", {"launch_gap_us": Param(0.8, "the old fit")}, (TOTAL, BUBBLE)),
])
def test_without_a_mechanism_its_parts_leave_their_bounds(mi355x, dual, mechanism, change, leaves):
    p = parts(dual, replace(mi355x, **change))
    for name in leaves:
        assert abs(off(p[name])) > BOUND[name], f"without {mechanism}, {name} still lands at {off(p[name]):+.0%}"


def test_the_overlap_saving_is_the_published_one_not_more(mi355x, dual):
    """With the A_v4 branch at the ~18 us an earlier split gave it (not the published ~10 us saving)
    the overlap hides twice as much and the total leaves its bound."""
    scaled = {n: {4: mi355x.node_us[n][4] * 1.8} for n in ("q_b_proj", "bmm_w_kc", "rope_cat_cache")}
    p = parts(dual, replace(mi355x, node_us={**mi355x.node_us, **scaled}))
    assert off(p[TOTAL]) < -BOUND[TOTAL]


def test_the_moe_kernel_time_is_the_pairs_source_claim(mi355x, dual):
    """pair_source: the release rule at excess 0 gives 139 us of MoE kernel time per layer, against
    the published 125 (79 alone)."""
    nodes = summarize(predict(dual, mi355x, layers=16).timeline).nodes
    assert sum(nodes[n].mean for n in dual.layer.groups["moe"]) == pytest.approx(139, abs=1)
    serial = load(SCENARIOS / "serial.yaml")
    nodes = summarize(predict(serial, mi355x, layers=16).timeline).nodes
    assert sum(nodes[n].mean for n in serial.layer.groups["moe"] if n in nodes) == pytest.approx(78.6)
