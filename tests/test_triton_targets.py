"""`streamlab compile`: the layer's Triton kernels compile for MI355X (gfx950) and H100 (sm_90) at
the configs the layer launches there, on this CPU-only machine, through Triton's own compiler.
Compiling needs Triton without its interpreter, so these run in a fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from streamlab.cli import app
from streamlab.errors import EXIT_BAD_INPUT, Failure
from streamlab.kernels.triton.targets import TARGETS, record_launches, target
from streamlab.scenario import load

ROOT = Path(__file__).resolve().parent.parent
# one scenario per variant: the fused and the unfused shared expert
SCENARIOS = [str(ROOT / "scenarios" / f"{name}.yaml") for name in ("serial", "a_v4_moe_dual")]
KERNELS = ("_gemm_kernel", "_chunk_select_kernel", "_paged_mqa_logits_kernel", "_mla_split_kernel",
           "_gate_up_kernel", "_down_kernel", "_rope_cat_cache_kernel")


def compiler_process(args: list[str], timeout: float = 900) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | {"COLUMNS": "200"}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("target", ["mi355x", "h100"])
def test_every_launch_of_the_shipped_layers_compiles_for(target):
    done = compiler_process(["-m", "streamlab", "compile", *SCENARIOS, "--for", target,
                             "--batch", "1,4,16,64"])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"compile for {TARGETS[target]}" in done.stdout
    for kernel in KERNELS:  # the recorder saw the layer's main kernels
        assert kernel in done.stdout


def test_a_kernel_that_does_not_compile_is_named_with_the_compiler_message(tmp_path):
    script = tmp_path / "bad_kernel.py"  # Triton reads a kernel's source from its file
    script.write_text(textwrap.dedent("""
        import triton, triton.language as tl
        from streamlab.kernels.triton.targets import TARGETS, KernelLaunch, compile_launch

        @triton.jit
        def bad(x, BLOCK: tl.constexpr):
            a = tl.load(x + tl.arange(0, BLOCK))
            tl.store(x + tl.arange(0, BLOCK), tl.dot(a, a))  # tl.dot needs 2-d operands

        launch = KernelLaunch(bad, {"x": "*fp32", "BLOCK": "constexpr"}, {"BLOCK": 32}, {"num_warps": 4})
        print("ERROR", compile_launch(launch, TARGETS["mi355x"]).error)
    """))
    done = compiler_process([str(script)], timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(ln for ln in done.stdout.splitlines() if ln.startswith("ERROR"))
    assert line != "ERROR None" and "CompilationError" in line


def test_compiling_refuses_the_interpreter_unknown_targets_and_a_triton_without_the_backend(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(Failure, match="unset TRITON_INTERPRET"):
        record_launches([load(SCENARIOS[0]).layer], TARGETS["mi355x"])
    r = CliRunner().invoke(app, ["compile", SCENARIOS[0], "--for", "mi300"])
    assert r.exit_code == EXIT_BAD_INPUT and "unknown compile target 'mi300'; known: h100, h200, mi355x" in r.output
    import triton.backends
    monkeypatch.setattr(triton.backends, "backends", {"nvidia": triton.backends.backends["nvidia"]})
    with pytest.raises(Failure, match=r"has no amd backend to compile for mi355x \(gfx950, 256 CUs\)"):
        target("mi355x")


# Plans every Triton node of the shipped layers at batch 4 (and an unfused-rope layer at context
# 1024, whose rows take the one-program top-k) under a budget of half the target's SMs / CUs and
# of 1, prints the planned programs per node, then compiles the budgeted (persistent) launches:
# every distinct one of the half-GPU plan, and one per kernel that only budget 1 makes persistent.
BUDGET_SCRIPT = """
import json, sys
from streamlab.errors import Failure
from streamlab.kernels import bind_layer
from streamlab.kernels.triton.targets import TARGETS, compile_launch, record_launches
from streamlab.layer import Variant, build_layer
from streamlab.models import GLM5, RankDims, Shape
from streamlab.scenario import load

tgt = TARGETS[sys.argv[1]]
layers = [load(p).override(batch=4).layer for p in sys.argv[2:]]
layers.append(build_layer(RankDims(GLM5, Shape(batch=4, context=1024)), Variant(fused_rope_cat_cache=False)))
mine = {n for layer in layers for n, b in bind_layer(layer, "triton").items() if b.backend == "triton"}

def programs(budget):
    launches, failed = record_launches(layers, tgt, {n: budget for n in mine} if budget else None)
    assert not failed, failed
    most = {}
    for launch in launches:
        for node, p in launch.programs.items():
            most[node] = max(most.get(node, 0), p)
    return launches, most

half = tgt.units // 2
_, plain = programs(None)
budgeted, planned = programs(half)
at_one, _ = programs(1)
print(json.dumps({"budget": half, "plain": plain, "planned": planned}))
persistent = {l.key: l for l in budgeted if l.constexprs.get("PERSISTENT")}
names = {l.name for l in persistent.values()}
for launch in at_one:
    if launch.constexprs.get("PERSISTENT") and launch.name not in names:
        names.add(launch.name)
        persistent[launch.key] = launch
errors = [f"{l.name}: {r.error}" for l in persistent.values() if (r := compile_launch(l, tgt)).error]
print(json.dumps({"compiled": sorted(names), "errors": errors}))
for bad, why in (({"no_such_node": 4}, "does not have"), ({"allreduce_attn": 4}, "takes no SM budget"),
                 ({"q_b_proj": 0}, "max_programs")):
    try:
        record_launches(layers[:1], tgt, bad)
        print(json.dumps({"refused": None}))
    except Failure as e:
        print(json.dumps({"refused": why in str(e), "code": e.code}))
"""


def test_budgeted_launches_plan_within_their_budget_and_compile(tmp_path):
    """For h100 and mi355x at once (two processes): no budgeted node plans more programs than
    its budget, while unbudgeted some plan more; the persistent launches compile; budgets on
    unknown or non-Triton nodes, or bad budgets, are refused with EXIT_BAD_INPUT."""
    script = tmp_path / "plan_budgets.py"
    script.write_text(BUDGET_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | {"PYTHONPATH": str(ROOT)}
    runs = {t: subprocess.Popen([sys.executable, str(script), t, *SCENARIOS], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for t in ("h100", "mi355x")}
    for name, run in runs.items():
        out, err = run.communicate(timeout=900)
        assert run.returncode == 0, err[-3000:]
        lines = [json.loads(ln) for ln in out.splitlines() if ln.startswith("{")]
        plan, compiled, refusals = lines[0], lines[1], lines[2:]
        budget = plan["budget"]
        assert budget == TARGETS[name].units // 2
        assert max(plan["planned"].values()) <= budget, plan["planned"]
        assert {"q_b_proj", "experts", "idx_logits", "mla_decode"} <= {
            n for n, p in plan["plain"].items() if p > budget}
        assert compiled["errors"] == []
        assert {"_gemm_kernel", "_gate_up_kernel", "_down_kernel", "_mla_split_kernel",
                "_chunk_select_kernel", "_topk_slots_kernel", "_norm_kernel"} <= set(compiled["compiled"])
        assert refusals == [{"refused": True, "code": EXIT_BAD_INPUT}] * 3


@pytest.mark.gpu
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_the_launches_planned_for_an_h100_are_those_the_h100_makes(scenario, monkeypatch):
    """The recorder's claim: on meta tensors, planned for 132 SMs, it sees the launches the
    layer makes on the GPU itself."""
    import torch
    from triton.runtime.jit import JITFunction

    from streamlab.exec.buffers import Buffers
    from streamlab.kernels import bind_layer
    from streamlab.kernels.triton.common import sm_count
    from streamlab.kernels.triton.targets import launch_of

    if sm_count(torch.device("cuda"), off_gpu=0) != TARGETS["h100"].units:
        pytest.skip("needs a GPU with the H100's 132 SMs")
    layer = load(scenario).override(batch=4).layer
    planned, failed = record_launches([layer], TARGETS["h100"])
    assert not failed
    seen, run = set(), JITFunction.run

    def spy(kernel, *args, grid, warmup, **kwargs):
        seen.add(launch_of(kernel, args, kwargs).key)
        return run(kernel, *args, grid=grid, warmup=warmup, **kwargs)

    monkeypatch.setattr(JITFunction, "run", spy)
    tensors = Buffers(layer, device="cuda").tensors()
    for bound in bind_layer(layer, "triton").values():
        bound(tensors)
    torch.cuda.synchronize()
    assert seen == {launch.key for launch in planned} and len(seen) > 20
