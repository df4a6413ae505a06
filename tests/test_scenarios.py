"""Shipped scenarios validate; seeded mistakes are rejected with file, line, nodes and a fix."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamlab.scenario import ScenarioError, load, parse
from streamlab.schedule.graph import capture, hip_streams
from streamlab.report.schedule_view import concurrent_sets

SCENARIOS = Path(__file__).parent.parent / "scenarios"
SHIPPED = ["serial", "pr23562", "pr23562_cuda", "a_v4", "a_v4_moe_dual"]


def text(name: str) -> str:
    return (SCENARIOS / f"{name}.yaml").read_text()


def rejected(src: str) -> str:
    with pytest.raises(ScenarioError) as e:
        parse(src, "s.yaml")
    return str(e.value)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_scenarios_validate(name):
    scen = load(SCENARIOS / f"{name}.yaml")
    assert scen.name == name
    assert sorted(op.node for op in scen.program.launches) == sorted(scen.layer.names)


def test_a_v4_overlaps_indexer_with_q_b_proj_bmm_and_fused_kernel():
    scen = load(SCENARIOS / "a_v4.yaml")
    sets = concurrent_sets(scen.layer, scen.program)
    assert (["q_b_proj", "bmm_w_kc", "rope_cat_cache"], scen.layer.groups["indexer"]) in sets
    assert (["q_a_norm"], ["kv_a_norm"]) in sets


def test_hip_rule_first_dispatched_branch_keeps_the_stream():
    a_v4 = load(SCENARIOS / "a_v4.yaml")
    hip = hip_streams(capture(a_v4.program))
    assert hip[(0, "q_b_proj")] == hip[(0, "q_a_norm")] == 0
    assert hip[(0, "idx_wq_b")] != 0
    pr = load(SCENARIOS / "pr23562.yaml")  # there q_b_proj (alt) is dispatched first
    hip = hip_streams(capture(pr.program))
    assert hip[(0, "q_b_proj")] == 0 and hip[(0, "idx_wq_b")] != 0
    assert set(hip_streams(capture(load(SCENARIOS / "serial.yaml").program, 4)).values()) == {0}


def test_dropped_final_join_is_a_race_with_the_fix():
    msg = rejected(text("a_v4").replace("  - join: alt                      # after the fused", "  # "))
    assert ("s.yaml:22: race on topk_slots: idx_topk (stream alt, line 18) writes it and "
            "mla_decode (stream main, line 22) reads it with nothing ordering them; add `join: alt` "
            "(main.wait_stream(alt)) after line 18 and before line 22") in msg
    assert "stream alt (last used at line 18) is never joined back into main" in msg


def test_join_moved_before_the_fused_kernel_on_alt_is_a_race():
    src = text("a_v4").replace(
        "  - run: [bmm_w_kc, rope_and_cache]\n  - join: alt",
        "  - run: [bmm_w_kc]\n  - join: alt\n  - on: alt\n    run: [rope_and_cache]\n  - fork: alt")
    msg = rejected(src)
    assert "race on q_nope_out: bmm_w_kc (stream main, line 20) writes it and rope_cat_cache (stream alt, line 22)" in msg
    assert "race on kv_cache: rope_cat_cache (stream alt, line 22) writes it and mla_decode (stream main" in msg


def test_moe_shared_expert_without_join_races_on_its_output():
    msg = rejected(text("a_v4_moe_dual").replace("  - join: alt\n  - run: [shared_add", "  - run: [shared_add"))
    assert "race on sh_out: shared_down (stream alt, line 25) writes it and shared_add (stream main, line 27)" in msg


def test_fork_missing_before_the_indexer():
    msg = rejected(text("a_v4").replace("  - fork: alt                      # placed before", "  # "))
    assert "race on q_lora: q_a_norm (stream main, line 12) writes it and idx_wq_b (stream alt, line 18)" in msg
    assert "add `fork: alt` (alt.wait_stream(main)) after line 12 and before line 18" in msg


def test_side_stream_used_before_any_fork():
    src = text("serial").replace("  - run: [attn_prep, indexer,", "  - on: alt\n    run: [input_norm]\n"
                                 "  - join: alt\n  - run: [qkv_a_proj, q_a_norm, kv_a_norm, q_b_proj, indexer,")
    assert ("s.yaml:8: node input_norm runs on stream alt, which has not joined the graph: add "
            "`fork: alt` before it") in rejected(src)


@pytest.mark.parametrize("edit, expected", [
    (("[q_b_proj]", "[q_b_prj]"), "s.yaml:17: unknown node or group 'q_b_prj' (did you mean 'q_b_proj'?)"),
    (("[mla_decode,", "[mla_decode, q_b_proj,"), "s.yaml:22: node q_b_proj is scheduled twice (first at line 17)"),
    (("  - run: [post_norm, moe, allreduce_moe]", "  - run: [post_norm, moe]"), "nodes never scheduled (each node of the layer runs exactly once): allreduce_moe"),
    (("measure: {layers: 4", "measure: {layrs: 4"), "s.yaml:25: unknown key measure.layrs (did you mean 'layers'?)"),
    (("batch: 4", "batch: four"), "s.yaml:7: shape.batch must be an integer, got 'four'"),
    (("batch: 4", "batch: 0"), "shape.batch must be an integer from 1 to 65536, got 0"),
    (("tp: 8", "tp: 7"), "num_attention_heads=64 is not divisible by tp=7"),
    (("schedule:", "schedule: ["), "s.yaml:10: not valid YAML"),
    (("model: glm5", "model: glm6"), "s.yaml:6: unknown model 'glm6' (did you mean 'glm5'?)"),
    (("  - fork: alt                      # fork 0", "  - frok: alt"), "s.yaml:11: a step needs exactly one of run, fork, join, record, wait (found none)"),
    (("  - join: alt\n  - fork: alt                      # placed", "  - join: alt\n    on: alt\n  - fork: alt  #"), "s.yaml:16: unknown key 'on' in a join step; allowed: into"),
    (("collective: {impl: auto}", "collective: {impl: mpi}"), "s.yaml:24: collective.impl must be one of auto, emulated, nccl, symm_mem, aiter, got 'mpi'"),
    (("fused_rope_cat_cache: true", "fused_rope_cat_cache: false"), "unknown node or group 'rope_cat_cache'"),
])
def test_bad_input_names_file_and_line(edit, expected):
    src = text("a_v4").replace(*edit)
    if "fused_rope_cat_cache: false" in edit[1]:
        src = src.replace("rope_and_cache", "rope_cat_cache")
    assert src != text("a_v4")
    assert expected in rejected(src)


def test_wait_on_unrecorded_event():
    src = text("serial").replace("  - run: [post_norm", "  - wait: ev\n    on: main\n  - run: [post_norm")
    assert "event ev is waited on before it is recorded" in rejected(src)


def test_override_shape_and_model_revalidate():
    scen = load(SCENARIOS / "a_v4.yaml").override(batch=64, context=4096)
    assert scen.dims.tokens == 64 and scen.layer.tensors["idx_logits"].shape == (64, 4096)
    assert load(SCENARIOS / "a_v4.yaml").override(model="deepseek_v32").dims.heads == 16
    with pytest.raises(ScenarioError, match="not divisible by tp=3"):
        load(SCENARIOS / "a_v4.yaml").override(tp=3)


yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 10 ** 6) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["name", "model", "shape", "variant", "schedule", "collective",
                                        "measure", "backend", "x"]), yaml_values, max_size=6))
def test_loader_never_crashes_on_random_documents(doc):
    import yaml
    try:
        parse(yaml.safe_dump(doc), "r.yaml")
    except ScenarioError as e:
        assert str(e).startswith("r.yaml")


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_loader_never_crashes_on_mutated_scenarios(data):
    src = text(data.draw(st.sampled_from(SHIPPED)))
    lines = src.splitlines()
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(lines) - 1))
        action = data.draw(st.sampled_from(["drop", "dup", "swap", "garble"]))
        if action == "drop":
            del lines[i]
        elif action == "dup":
            lines.insert(i, lines[i])
        elif action == "swap":
            j = data.draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        else:
            pos = data.draw(st.integers(0, max(len(lines[i]) - 1, 0)))
            lines[i] = lines[i][:pos] + data.draw(st.sampled_from([":", "[", "-", "  ", "x", "{", "'"])) + lines[i][pos:]
        if not lines:
            break
    try:
        parse("\n".join(lines), "m.yaml")
    except ScenarioError as e:
        assert str(e).startswith("m.yaml")
