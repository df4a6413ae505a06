"""SM / CU budgets in layouts: a scenario's `sms:` parsed and validated, carried into the Program,
reaching the Triton kernels as max_programs with outputs bitwise those of the unbudgeted serial
layout (interpreter, TINY shapes), refused where a kernel cannot honour it, modelled by the
simulator (never faster alone, less contention beside another kernel), and chosen by the search
into a scenario that loads and validates."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from streamlab.cli import app
from streamlab.errors import EXIT_BAD_INPUT, Failure
from streamlab.exec.buffers import Buffers
from streamlab.exec.eager import StreamSet, run_program
from streamlab.kernels import Bound, bind_layer, bind_portable
from streamlab.kernels.triton.targets import work_grids
from streamlab.layer import Variant, build_layer
from streamlab.models import GLM5, TINY, RankDims, Shape
from streamlab.scenario import ScenarioError, check_budgets, load, parse
from streamlab.schedule.program import Launch, Program
from streamlab.search.budgets import budget_variants
from streamlab.search.enumerate import Limits
from streamlab.search.find import Request, find
from streamlab.search.layout import build_program
from streamlab.search.predict import Predicted, layer_at, rank_us
from streamlab.search.rank import Candidate
from streamlab.search.space import Space
from streamlab.search.write import scenario_text
from streamlab.sim import load_profile, predict
from streamlab.sim.costs import budget_costs
from streamlab.sim.engine import run

ROOT = Path(__file__).parent.parent
A_V4 = (ROOT / "scenarios" / "a_v4.yaml").read_text()
BUDGETED = A_V4.replace("  - on: alt\n    run: [indexer]", "  - on: alt\n    run: [indexer]\n    sms: 66")


def rejected(src: str) -> str:
    with pytest.raises(ScenarioError) as e:
        parse(src, "s.yaml")
    assert e.value.code == EXIT_BAD_INPUT
    return str(e.value)


# -- the scenario key -------------------------------------------------------------------------

def test_sms_on_a_run_step_budgets_each_of_its_nodes():
    scen = parse(BUDGETED, "s.yaml")
    indexer = scen.layer.expand("indexer")
    assert scen.program.budgets == dict.fromkeys(indexer, 66)
    launches = {op.node: op for op in scen.program.launches}
    assert all(launches[n].stream == "alt" and launches[n].line == 18 for n in indexer)
    assert launches["q_b_proj"].sms is None
    assert all(op.sms == 66 for op in scen.program.repeated(3).launches if op.node in indexer)
    moved = scen.override(batch=64)  # the budget is part of the schedule, whatever the shape
    assert moved.program.budgets == scen.program.budgets


@pytest.mark.parametrize("value, message", [
    ("0", ("s.yaml:20: sms takes the SMs / CUs the step's nodes may use at once, a whole number from 1 "
           "to the device's count, got 0")),
    ("-3", "got -3"), ("true", "got True"), ("'66'", "got '66'"), ("6.5", "got 6.5"),
])
def test_bad_sms_values_name_file_and_line(value, message):
    assert message in rejected(BUDGETED.replace("sms: 66", f"sms: {value}"))


def test_sms_elsewhere_is_refused_with_the_fix():
    assert "s.yaml:16: unknown key 'sms' in a join step; allowed: into" in rejected(
        A_V4.replace("  - join: alt\n  - fork: alt  ", "  - join: alt\n    sms: 4\n  - fork: alt  "))
    assert "unknown key 'sm' in a run step (did you mean 'sms'?)" in rejected(BUDGETED.replace("sms: 66", "sm: 66"))
    assert ("s.yaml:22: sms: allreduce_attn is a collective (the all-reduce), which takes no SM budget"
            in rejected(A_V4.replace("allreduce_attn]", "allreduce_attn]\n    sms: 8")))


def test_a_budget_over_the_devices_count_names_the_step():
    scen = parse(BUDGETED.replace("sms: 66", "sms: 200"), "s.yaml")
    check_budgets(scen, 256, "mi355x")  # fits 256 CUs
    with pytest.raises(ScenarioError, match=r"s.yaml:18: sms: 200 is more than the 132 SMs / CUs of h200; "
                                            r"give 1 to 132"):
        check_budgets(scen, 132, "h200")
    with pytest.raises(ScenarioError, match="s.yaml:18: sms: 200 is more than the 132 SMs / CUs of the h200 "
                                            "profile's device"):
        predict(scen, load_profile("h200"))


def test_graph_shows_the_budget_and_checks_it_against_the_hardware(tmp_path):
    path = tmp_path / "b.yaml"
    path.write_text(BUDGETED)
    out = CliRunner().invoke(app, ["graph", str(path), "--hardware", "h200"])
    assert out.exit_code == 0, out.output
    assert "idx_wq_b [66 of" in out.output
    path.write_text(BUDGETED.replace("sms: 66", "sms: 140"))
    out = CliRunner().invoke(app, ["graph", str(path), "--hardware", "h200"])
    assert out.exit_code == EXIT_BAD_INPUT and "sms: 140 is more than the 132 SMs / CUs of h200" in out.output


# -- the budget reaches the kernels -----------------------------------------------------------

TRITON_NODES = ("q_b_proj", "q_a_norm", "o_proj")  # GEMMs and a norm on Triton, the rest reference


def test_a_budgeted_layout_reaches_max_programs_and_computes_what_serial_computes(launched):
    """A two-stream layout with budgets on two Triton nodes, against the serial layout without
    budgets, from the same buffers (CPU: dispatch order, interpreter kernels)."""
    layer = build_layer(RankDims(TINY, Shape(batch=3, context=200, tp=1, page_size=16)), Variant())
    bound = bind_layer(layer, "reference")
    bound.update({n: bind_portable(layer.node(n), "triton") for n in TRITON_NODES})
    widest = {}
    serial = Program([Launch(n, "main") for n in layer.names])
    buffers = Buffers(layer, 1, torch.device("cpu"), seed=5)
    start = {k: t.clone() for k, t in buffers.tensors(0).items()}
    launched.clear()
    run_program(serial, bound, buffers, StreamSet(torch.device("cpu")))
    for kernel, programs in launched:
        widest[kernel] = max(widest.get(kernel, 0), programs)
    want = {k: t.clone() for k, t in buffers.tensors(0).items()}
    assert widest["_gemm_kernel"] > 2 and widest["_norm_kernel"] > 1  # so the budgets below bind

    src = (ROOT / "scenarios" / "a_v4.yaml").read_text().replace(
        "  - run: [q_a_norm]", "  - run: [q_a_norm]\n    sms: 1").replace(
        "  - run: [q_b_proj]   ", "  - run: [q_b_proj]\n    sms: 2\n  #")
    scen = parse(src, "b.yaml").override(model="tiny", batch=3, context=200, tp=1, page_size=16)
    assert scen.program.budgets == {"q_a_norm": 1, "q_b_proj": 2}
    for k, t in buffers.tensors(0).items():
        t.copy_(start[k])
    launched.clear()
    marks = []
    for op in scen.program.ops:  # one launch at a time, to see each node's grids
        before = len(launched)
        run_program(Program([op]), bound, buffers, StreamSet(torch.device("cpu")))
        if isinstance(op, Launch) and op.node in TRITON_NODES:
            marks.append((op.node, [p for _, p in launched[before:]]))
    grids = dict(marks)
    assert max(grids["q_a_norm"]) == 1 and max(grids["q_b_proj"]) <= 2
    assert max(grids["o_proj"]) > 2  # unbudgeted in the layout: its usual grid
    for k, t in buffers.tensors(0).items():
        assert torch.equal(_bits(t), _bits(want[k])), f"{k} differs from serial"


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.uint8)


def test_kernels_that_cannot_honour_a_budget_say_why():
    node = build_layer(RankDims(TINY, Shape(batch=3, context=200, tp=1, page_size=16)), Variant()).node("q_b_proj")
    assert Bound(node, "triton", print).budget_problem(gpu=True) is None
    assert Bound(node, "reference", print).budget_problem(gpu=False) is None  # CPU: checks results
    assert "--backend triton" in Bound(node, "reference", print).budget_problem(gpu=True)
    why = Bound(node, "aiter", print).budget_problem(gpu=True)
    assert "CU mask" in why and "does not survive HIP graph capture" in why and "--backend triton" in why
    assert Bound(node, "triton (aiter fallback: shape)", print).budget_problem(gpu=True) is None
    assert "emulated" in Bound(node, "emulated", print).budget_problem(gpu=True)


def test_a_cpu_run_of_a_budgeted_found_layout_matches_serial(tmp_path):
    """`streamlab run` without a GPU: outputs checked against serial with the reference kernels,
    then simulated; the result names each budgeted node's budget."""
    path = tmp_path / "b.yaml"
    path.write_text(BUDGETED)
    out = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path), "--profile", "h200"])
    assert out.exit_code == 0, out.output
    assert "bitwise equal" in out.output
    doc = json.loads(next(tmp_path.glob("*-sim-h200.json")).read_text())
    nodes = doc["nodes"]
    assert nodes["idx_wq_b"]["backend"] == "simulated [at most 66 SMs/CUs]"
    assert nodes["q_b_proj"]["backend"] == "simulated"


# -- the simulator's model --------------------------------------------------------------------

def test_grids_are_the_planned_launches():
    layer = build_layer(RankDims(GLM5, Shape(batch=4)), Variant())
    g132, g256 = work_grids(layer, 132), work_grids(layer, 256)
    assert set(g132) == {n.name for n in layer.nodes if not n.is_collective}
    assert g132["input_norm"] == (4,) and len(g132["mla_decode"]) == 2
    assert g132["qkv_a_proj"] == (132,) and g256["qkv_a_proj"][0] > 132  # split to fill the device


@pytest.mark.parametrize("profile", ["h200", "h100", "mi355x"])
def test_fewer_sms_are_never_faster_alone(profile):
    prof = load_profile(profile)
    scen = load(ROOT / "scenarios" / "serial.yaml")
    units = budget_costs(scen.layer, prof, {"q_b_proj": 1}).units
    last = {}
    for b in sorted({1, 2, 7, 33, units // 2, units - 1, units}, reverse=True):
        costs = budget_costs(scen.layer, prof, {n.name: b for n in scen.layer.nodes if not n.is_collective})
        for n, k in zip(scen.layer.names, costs.stretch):
            assert k >= last.get(n, 1.0) >= 1.0
            last[n] = k
    assert last["q_b_proj"] > 1  # a GEMM of many programs on one SM is slower
    serial = run(scen.layer, scen.program, prof).per_layer_us
    times = []
    for b in (units, units // 2, 7):
        budgeted = Program([replace(op, sms=b) if op.node == "q_b_proj" else op for op in scen.program.ops])
        times.append(run(scen.layer, budgeted, prof).per_layer_us)
    assert times[0] == pytest.approx(serial) and times == sorted(times) and times[2] > serial


def test_a_budget_relieves_the_overlap_it_takes_part_in():
    """a_v4 at batch 64 on the H100 profile, idx_wq_b (beside q_b_proj) on half the SMs: q_b_proj
    runs faster beside it than beside the unbudgeted one, idx_wq_b slower than its own
    unbudgeted self; both predicted, and the prediction says the budget is modelled."""
    prof = load_profile("h100")
    plain = parse(A_V4, "a.yaml").override(batch=64)
    rest = ", ".join(n for n in plain.layer.expand("indexer") if n != "idx_wq_b")
    half = parse(A_V4.replace("    run: [indexer]", f"    run: [idx_wq_b]\n    sms: 66\n  - on: alt\n"
                                                    f"    run: [{rest}]"), "b.yaml").override(batch=64)
    costs = budget_costs(half.layer, prof, half.program.budgets)
    i, j = half.layer.index["q_b_proj"], half.layer.index["idx_wq_b"]
    assert costs.claim[j] == pytest.approx(0.5) and costs.relief([i, j]) < 1.0
    p_plain, p_half = predict(plain, prof), predict(half, prof)

    def took(p, node):
        return next(iv.end - iv.start for iv in p.timeline.intervals if iv.node == node and iv.layer == 1)

    assert took(p_half, "q_b_proj") < took(p_plain, "q_b_proj")
    assert took(p_half, "idx_wq_b") > took(p_plain, "idx_wq_b")
    assert p_half.per_layer_us != p_plain.per_layer_us
    band = next(b for b in p_half.bands if b.name == "SM budgets")
    assert band.us > 0 and "modelled" in band.source and "not measured" in band.source
    assert not any(b.name == "SM budgets" for b in p_plain.bands)


def test_a_profile_without_a_device_count_cannot_simulate_budgets():
    prof = replace(load_profile("h200"), hardware="", name="mine")
    scen = parse(BUDGETED, "s.yaml")
    with pytest.raises(Failure, match="set `hardware:` to one of"):
        run(scen.layer, scen.program, prof)


# -- the search ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def budgeted_search():
    return find(Request(model="tiny", shape=Shape(tp=1), batches=(64,), profile="h100", limits=Limits(2, 4, 0),
                        top=3, workers=1, budgets=(0.25, 0.5)))


def test_the_search_tries_budgets_on_the_top_layouts_overlaps(budgeted_search):
    (o,) = budgeted_search.batches
    assert o.budget is not None and o.budget.tried > 0 and o.budget.units == 132
    assert o.budget.shares == (0.25, 0.5) and o.budget.layouts >= 1
    ranked = [r.candidate.predicted.us for r in o.top]
    assert ranked == sorted(ranked)


def test_budgeted_candidates_are_written_as_scenarios_that_load(budgeted_search, tmp_path):
    """The budgeted variants of the best layout become scenarios whose simulation is the
    search's prediction; their sms: steps hold 33 or 66 (a quarter or half of 132)."""
    (o,) = budgeted_search.batches
    req, prof = budgeted_search.request, budgeted_search.profile
    assert any(r.candidate.layout.options for r in o.top)  # budgets win here, on the model
    best = replace(o.best.candidate.layout, options=())
    space = Space.of(layer_at(req.model, replace(req.shape, batch=64), best.variant))
    variants = budget_variants(space, best, prof, req.budgets, req.layers)
    assert variants and all(len(v.options) == 1 and v.streams == best.streams for v in variants)
    for k, layout in enumerate(variants):
        us = rank_us(space.layer, build_program(space, layout), prof, req.layers)
        entry = replace(o.best, candidate=Candidate(layout, layout.describe(space), Predicted(us), 0.0))
        text = scenario_text(budgeted_search, o, entry, command="test")
        path = tmp_path / f"b{k}.yaml"
        path.write_text(text)
        scen = load(path)
        assert scen.program.budgets == build_program(space, layout).budgets
        assert set(scen.program.budgets.values()) <= {33, 66}
        assert run(scen.layer, scen.program, prof).per_layer_us == pytest.approx(us)
        assert "budgets:   shares 0.25, 0.5 of 132 SMs / CUs" in text and "not measured" in text
        assert " on 33 SMs" in entry.candidate.name or " on 66 SMs" in entry.candidate.name


@pytest.mark.parametrize("value", ["0", "1.5", "most", "0.5,x"])
def test_bad_share_lists_are_one_line_and_exit_2(value, tmp_path):
    out = CliRunner().invoke(app, ["search", "--model", "tiny", "--tp", "1", "--workers", "1", "--no-report",
                                   "--sm-budgets", value, "--out", str(tmp_path)])
    assert out.exit_code == EXIT_BAD_INPUT
    assert f"--sm-budgets {value!r}: give half, thirds, quarters or fractions" in out.output


def test_the_bench_scenarios_load_and_differ_from_a_v4_only_by_their_budget():
    plain = load(ROOT / "scenarios" / "a_v4.yaml")
    for name, budgets in (("a_v4_wq_b_half", {"idx_wq_b": 66}), ("a_v4_q_b_proj_half", {"q_b_proj": 66})):
        scen = load(ROOT / "bench" / "budgets" / f"{name}.yaml")
        assert scen.program.budgets == budgets
        assert [(op.node, op.stream) for op in scen.program.launches] == [
            (op.node, op.stream) for op in plain.program.launches]
