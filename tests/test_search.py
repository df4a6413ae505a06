"""The layout space: enumeration against brute force, validity, equivalence, shipped layouts in
the space, the lower bound, pruning rule P2, and the explanation numbers."""

from __future__ import annotations

import itertools
import random

import pytest

from streamlab.layer import Layer, Node, TensorSpec, Variant
from streamlab.models import TINY, RankDims, Shape
from streamlab.scenario import load
from streamlab.schedule.validate import check
from streamlab.search.bound import Costs, LaneModel, captured_graph, lower_bound
from streamlab.search.enumerate import (
    Limits,
    assemble,
    closed_streams,
    place,
    region_layouts,
)
from streamlab.search.explain import explain
from streamlab.search.layout import Layout, build_program
from streamlab.search.rank import prediction_key
from streamlab.search.space import Space, partitions
from streamlab.sim import load_profile
from streamlab.sim.engine import per_layer_us, simulate
from streamlab.timeline import Interval, Source, Timeline

PROFILES = ("h100", "h200", "mi355x")


def small_layer() -> Layer:
    """a -> {b -> d, c, e} -> f: a region of four nodes between two sequential ones."""
    t = {n: TensorSpec(n, (1,), "fp32") for n in ("h", "t0", "t1", "t2", "t3", "t4")}
    nodes = [Node("a", "noop", {"x": "h"}, {"o": "t0"}),
             Node("b", "noop", {"x": "t0"}, {"o": "t1"}),
             Node("c", "noop", {"x": "t0"}, {"o": "t2"}),
             Node("d", "noop", {"x": "t1"}, {"o": "t3"}),
             Node("e", "noop", {"x": "t0"}, {"o": "t4"}),
             Node("f", "noop", {"x": "t2", "y": "t3", "z": "t4"}, {"o": "h"})]
    return Layer(RankDims(TINY, Shape(tp=1)), Variant(), t, nodes, {})


def orders(space: Space):
    """Every dispatch order the dependencies allow."""
    for perm in itertools.permutations(range(space.size)):
        done = 0
        for v in perm:
            if space.ancestors[v] & ~done:
                break
            done |= 1 << v
        else:
            yield perm


def brute_force(space: Space, limits: Limits) -> set[tuple]:
    """The class of every program: any streams, any dispatch order, any barriers, kept when each
    stream runs in reference order (R1) and the waits fit (R2). Every program must be valid."""
    (region,) = space.regions
    keys = set()
    all_orders = list(orders(space))
    for streams_r in itertools.product(range(limits.streams), repeat=len(region)):
        streams = [0] * space.size
        for j, v in enumerate(region):
            streams[v] = streams_r[j]
        for order in all_orders:
            rank = {v: i for i, v in enumerate(order)}
            if any(rank[a] > rank[b] for a in region for b in region if a < b and streams[a] == streams[b]):
                continue  # R1
            for k in range(limits.max_barriers + 1):
                for cuts in itertools.combinations(range(1, len(region)), k):
                    cut_nodes = [region[c] for c in cuts]
                    if any(rank[u] > rank[v] for c in cut_nodes for u in region if u < c for v in region if v >= c):
                        continue  # a barrier needs everything before it dispatched first
                    program = build_program(space, Layout(Variant(), tuple(streams), order, tuple(cut_nodes)))
                    assert check(space.layer, program) == [], (streams, order, cut_nodes)
                    parts, problems = place(space, program, limits)
                    if not problems:
                        keys.add(parts[0].key)
    return keys


@pytest.mark.parametrize("limits", [Limits(2, 8, 1), Limits(2, 2, 1), Limits(3, 8, 2)])
def test_the_walk_emits_every_class_of_the_small_layer_once(limits):
    space = Space.of(small_layer())
    assert [space.names[i] for i in sorted(space.sequential)] == ["a", "f"]
    emitted = list(region_layouts(space, 0, limits))
    keys = [rl.key for rl in emitted]
    assert len(set(keys)) == len(keys)  # no duplicates under the equivalence
    assert set(keys) == brute_force(space, limits)  # and nothing missing
    for rl in emitted:
        layout, _ = assemble(space, [rl])
        program = build_program(space, layout)
        assert check(space.layer, program) == []
        assert place(space, program, limits)[0][0].key == rl.key
    assert emitted[0].serial


def test_program_count_is_stream_partitions_times_dispatch_orders():
    space = Space.of(small_layer())
    assert space.linear_extensions() == len(list(orders(space))) == 12
    assert partitions(6, 2) == 32 and partitions(6, 1) == 1
    assert space.programs(2) == 32 * 12


@pytest.fixture(scope="module")
def glm5():
    return {name: load(f"scenarios/{name}.yaml") for name in
            ("serial", "serial_moe_unfused", "pr23562", "a_v4", "a_v4_moe_dual", "pr23562_cuda")}


@pytest.fixture(scope="module")
def glm5_region_a(glm5):
    space = Space.of(glm5["serial"].layer)
    return space, list(region_layouts(space, 0, Limits()))


def test_glm5_regions_and_classes_are_distinct_and_valid(glm5_region_a):
    space, classes = glm5_region_a
    assert [space.names[i] for i in sorted(space.sequential)] == [
        "input_norm", "mla_decode", "bmm_w_vc", "o_proj", "allreduce_attn", "post_norm", "router_gate",
        "moe_topk", "experts", "allreduce_moe"]
    assert len(space.regions) == 1 and len(space.regions[0]) == 18
    assert len(classes) == 82783 and len({rl.key for rl in classes}) == len(classes)
    assert sum(rl.dominated for rl in classes) == 802
    for rl in random.Random(0).sample(classes, 150):
        program = build_program(space, assemble(space, [rl])[0])
        assert check(space.layer, program) == []
        assert place(space, program, Limits())[0][0].key == rl.key
        assert rl.waits <= 4 and len(rl.barriers) <= 1


def test_the_shipped_two_stream_layouts_are_in_the_space(glm5):
    for base, names in (("serial", ("serial", "pr23562", "a_v4")),
                        ("serial_moe_unfused", ("serial_moe_unfused", "a_v4_moe_dual"))):
        space = Space.of(glm5[base].layer)
        listed = [{rl.key for rl in region_layouts(space, r, Limits())} for r in range(len(space.regions))]
        for name in names:
            parts, problems = place(space, glm5[name].program, Limits())
            assert problems == [], name
            assert all(p.key in keys for p, keys in zip(parts, listed)), name


def test_pr23562_cuda_is_in_the_three_stream_space(glm5):
    space = Space.of(glm5["serial"].layer)
    limits = Limits(3, 9, 1)
    (part,), problems = place(space, glm5["pr23562_cuda"].program, limits)
    assert problems == []
    assert place(space, glm5["pr23562_cuda"].program, Limits())[1] == [
        "it uses 3 streams in region 0 (--streams 2)", "it needs 9 cross-stream waits in region 0 (--max-waits 4)"]
    pinned = region_layouts(space, 0, limits, prune=lambda j, streams, _: streams[j] != part.streams[j])
    assert part.key in {rl.key for rl in pinned}


def test_a_layout_off_the_rules_is_said_to_be_outside(glm5):
    space = Space.of(glm5["serial"].layer)
    text = ("model: glm5\nschedule:\n  - run: [input_norm, qkv_a_proj, q_a_norm, kv_a_norm, q_b_proj]\n"
            "  - run: [idx_wk, idx_wq_b]\n  - run: [idx_k_norm, idx_weights_proj, idx_rope, idx_hadamard_q,"
            " idx_hadamard_k, idx_q_quant, idx_k_cache, idx_weights_scale, idx_logits, idx_topk, bmm_w_kc,"
            " rope_cat_cache, mla_decode, bmm_w_vc, o_proj, allreduce_attn]\n  - fork: alt\n"
            "  - on: alt\n    run: [post_norm]\n  - join: alt\n  - run: [moe, allreduce_moe]\n")
    from streamlab.scenario import parse
    _, problems = place(space, parse(text).program, Limits())
    assert problems == ["post_norm runs on stream alt, not main: nothing can run beside it (P1)",
                        "stream 0 of region 0 does not run its nodes in reference order (R1)"]


@pytest.mark.parametrize("profile", PROFILES)
def test_the_bound_is_below_every_simulation_and_equal_for_serial(glm5, glm5_region_a, profile):
    space, classes = glm5_region_a
    prof = load_profile(profile)
    for rl in [classes[0]] + random.Random(1).sample(classes, 25):
        layout, graph = assemble(space, [rl])
        program = build_program(space, layout)
        simulated = per_layer_us(simulate(space.layer, program, prof, 4), 4)
        exact = captured_graph(space.layer, program, prof, 4)
        bound = lower_bound(Costs.of(space.layer, prof, multi_lane=exact.multi_lane), exact)
        assert bound <= simulated + 1e-9
        if rl.serial:
            assert bound == pytest.approx(simulated, abs=1e-9)
        if prof.streams == "cuda":  # on capture streams the enumerated graph gives the same bound
            costs = Costs.of(space.layer, prof, multi_lane=graph.multi_lane)
            assert lower_bound(costs, graph, 4) == pytest.approx(bound)


@pytest.mark.parametrize("profile", PROFILES)
def test_a_dominated_layout_never_beats_its_streams_moved_to_main(glm5_region_a, profile):
    """P2 as the simulator sees it: the same happens-before on main, minus the fences."""
    space, classes = glm5_region_a
    prof = load_profile(profile)
    dominated = [rl for rl in classes if rl.dominated]
    for rl in random.Random(2).sample(dominated, 20):
        layout, _ = assemble(space, [rl])
        closed = closed_streams(rl.streams, rl.ancestors)
        streams = tuple(0 if s in closed else s for s in layout.streams)
        image = Layout(layout.variant, streams, layout.order, layout.barriers)
        a, b = (per_layer_us(simulate(space.layer, build_program(space, x), prof, 4), 4) for x in (layout, image))
        assert a >= b - 1e-9


def test_classes_the_profile_cannot_tell_apart_predict_the_same(glm5_region_a):
    """On CUDA lanes only the release orders of measured pairs reach the simulator."""
    space, classes = glm5_region_a
    prof = load_profile("h100")
    pairs = frozenset(tuple(k.split("|", 1)) for k in prof.pair_excess)
    groups: dict[tuple, list] = {}
    for rl in classes:
        groups.setdefault(prediction_key(rl, space, pairs, LaneModel()), []).append(rl)
    shared = [g for g in groups.values() if len(g) > 1]
    assert len(groups) < len(classes) and shared
    rng = random.Random(3)
    for group in rng.sample(shared, 15):
        a, b = (per_layer_us(simulate(space.layer, build_program(space, assemble(space, [rl])[0]), prof, 4), 4)
                for rl in rng.sample(group, 2))
        assert a == b


def test_explanation_numbers_on_a_small_case():
    source = Source("simulated", "test")
    serial = Timeline([Interval("k", "main", 0, 10, "a", 0), Interval("k", "main", 13, 20, "b", 0),
                       Interval("k", "main", 20, 25, "c", 0)], source, [(0, 25)])
    dual = Timeline([Interval("k", "main", 0, 10, "a", 0), Interval("k", "alt", 4, 12, "b", 0),
                     Interval("k", "main", 12, 18, "c", 0)], source, [(0, 18)])
    e = explain(dual, serial)
    assert [(o.first, o.second, o.us) for o in e.overlaps] == [("a", "b", 6.0)]
    assert e.overlap_us == 6.0
    assert [(s.node, s.us, s.serial_us) for s in e.slowed] == [("b", 8.0, 7.0), ("c", 6.0, 5.0)]
    assert [(s.before, s.after, s.total_us) for s in e.stalls_gone] == [("a", "b", 3.0)]
    assert e.stalls_new == ()
    assert e.bubble_us["stall"] == 0.0 and e.serial_bubble_us["stall"] == 3.0
    assert e.line == "overlaps a || b 6.0 us (6.0 in all); b 7.0 -> 8.0 us; stalls -3.0 us"
