"""SM / CU budgets (`max_programs`): under any budget every Triton op computes bitwise what it
computes without one and no launch exceeds the budget; and the ROCm CU-mask path's arithmetic
and guard.

CPU: small shapes in the Triton interpreter. Each op runs without a budget, at budget 1 (one
program does every work item) and at a budget a little over half its widest grid (programs do
one or two items), from the same starting outputs; the unbudgeted result is also checked against
the reference with the tolerances of the op's own tests. GPU (`gpu`): every op of the GLM-5
layer at batch 4 and 64 at 7 programs and half the SMs, and the time of two budgeted GEMMs
alone against the unbudgeted ones (printed: what a budget costs a kernel alone, which the
simulator needs).
"""

from __future__ import annotations

import inspect
import math
import os
import statistics

import pytest
import torch
import triton
import triton.language as tl

from streamlab.errors import EXIT_BAD_INPUT, EXIT_ENVIRONMENT, Failure
from streamlab.exec.buffers import Buffers
from streamlab.kernels import cu_mask as cm
from streamlab.kernels import reference as ref
from streamlab.kernels.triton import OPS, indexer, topk
from streamlab.kernels.triton.common import each_work_item, grid_size, plan_grid
from streamlab.kernels.triton.moe import MoeConfig, run_fused_moe
from streamlab.layer import Variant, build_layer
from streamlab.models import GLM5, TINY, RankDims, Shape
from tests.test_triton_attention_moe import ATTN_TOL, MOE_TOL, WEIGHT_TOL, rel_err
from tests.test_triton_gemm_norm import BF16_TOL, FP8_TOL, FP32_TOL
from tests.test_triton_indexer_rope import COMPARE
from tests.tolerance import same_sets

TINY_DIMS = RankDims(TINY, Shape(batch=3, context=200, tp=1, page_size=16))
UNFUSED = Variant(fused_rope_cat_cache=False, shared_expert_fused=False)
FUSED = Variant(fused_rope_cat_cache=True, shared_expert_fused=True)
# checked on their own: one program at TINY batch 3 (hadamard, act_quant), or slow in the
# interpreter at the layer's config (fused_moe)
OWN_TESTS = {"hadamard", "act_quant", "fused_moe"}


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.uint8)


def _same_bits_under_budgets(run, outputs: dict[str, torch.Tensor], launched: list,
                            budgets=None) -> dict[str, torch.Tensor]:
    """Run `run(max_programs)` without a budget, then under each budget (default: 1 and a
    little over half the widest grid), each from the outputs' starting values. Asserts the same
    kernels in the same order, no launch over its budget, and bitwise equal outputs. Leaves the
    outputs as they started and returns the unbudgeted results."""
    start = {role: t.clone() for role, t in outputs.items()}

    def once(budget):
        for role, t in outputs.items():
            t.copy_(start[role])
        launched.clear()
        run(budget)
        return {role: t.clone() for role, t in outputs.items()}, list(launched)

    want, plain = once(None)
    widest = max(programs for _, programs in plain)
    if budgets is None:
        assert widest > 1, f"{plain}: one program, no budget can bind"
        budgets = sorted({1, widest // 2 + 1} - {widest})
    for budget in (b for b in budgets if b < widest):
        got, grids = once(budget)
        assert [k for k, _ in grids] == [k for k, _ in plain]
        assert max(p for _, p in grids) <= budget, f"budget {budget}: {grids}"
        for role in want:
            assert torch.equal(_bits(got[role]), _bits(want[role])), f"{role} differs at budget {budget}"
    for role, t in outputs.items():
        t.copy_(start[role])
    return want


def _close_to_reference(op: str, role: str, got: torch.Tensor, want: torch.Tensor) -> None:
    """The check the op's own tests make (tests/test_triton_*.py)."""
    if op in COMPARE:
        COMPARE[op][role](got, want)
    elif op == "biased_topk":
        if role == "ids":
            same_sets(got, want)
        else:
            assert rel_err(got.sort(1).values, want.sort(1).values) < WEIGHT_TOL
    else:
        tol = {"sparse_mla_decode": ATTN_TOL, "fused_moe": MOE_TOL, "fp8_linear": FP8_TOL}.get(
            op, FP32_TOL if got.dtype == torch.float32 else BF16_TOL)
        assert rel_err(got, want) <= tol, f"{op} {role}"


def _replay_under_budgets(dims: RankDims, variant: Variant, ops: set[str], launched: list,
                          device: str = "cpu", budgets=None, against_reference: bool = True) -> set[str]:
    """The layer run by the reference backend; at the first node of each op in `ops`, the Triton
    op under budgets (`_same_bits_under_budgets`) and, unbudgeted, against the reference. Returns
    the ops checked."""
    layer = build_layer(dims, variant)
    tensors = Buffers(layer, device=device, seed=3).tensors(0)
    checked = set()
    for node in layer.nodes:
        args = {role: tensors[name] for role, name in node.inputs.items()}
        outs = {role: tensors[name] for role, name in node.outputs.items()}
        first = node.op in ops and node.op not in checked
        if first:
            def run(budget, node=node, args=args, outs=outs):
                OPS[node.op](**{**args, **outs}, **node.attrs, max_programs=budget)
            mine = _same_bits_under_budgets(run, outs, launched, budgets)
            checked.add(node.op)
        ref.OPS[node.op](**{**args, **outs}, **node.attrs)
        if first and against_reference:
            for role, t in outs.items():
                _close_to_reference(node.op, role, mine[role], t)
    return checked


def _triton_ops(variant: Variant) -> set[str]:
    return {n.op for n in build_layer(TINY_DIMS, variant).nodes if n.op in OPS}


# -- planning ---------------------------------------------------------------------------------

def test_plan_grid_keeps_the_launch_unless_a_budget_binds():
    assert plan_grid((5, 3, 2), None) == ((5, 3, 2), (5, 3, 2), False)
    assert plan_grid((5, 3), 15) == ((5, 3), (5, 3, 1), False)
    assert plan_grid((5, 3), 15).args == {"work0": None, "work1": None, "work2": None,
                                          "PERSISTENT": False}
    plan = plan_grid((5, 3), 4)
    assert plan == ((4,), (5, 3, 1), True)
    assert plan.args == {"work0": 5, "work1": 3, "work2": 1, "PERSISTENT": True}
    for bad in (0, -3, 2.5, True, "66"):
        with pytest.raises(Failure, match="max_programs") as e:
            plan_grid((5,), bad)
        assert e.value.code == EXIT_BAD_INPUT


@triton.jit
def _log_visit(pid, grid, log, visits):
    """Work item pid writes (program * 1000 + how many items the program did before it)."""
    item = pid[0] + grid_size(grid, 0) * (pid[1] + grid_size(grid, 1) * pid[2])
    before = tl.atomic_add(visits + tl.program_id(0), 1)
    tl.store(log + item, tl.program_id(0) * 1000 + before)


@triton.jit
def _log_kernel(log, visits, work0, work1, work2, PERSISTENT: tl.constexpr):
    each_work_item(_log_visit, (log, visits), work0, work1, work2, PERSISTENT)


def test_the_work_loop_visits_every_item_once_in_order():
    """`each_work_item` under a budget of 4 programs over a (5, 3, 2) grid: each item once, by
    program item % 4, in increasing order within a program (flat index, axis 0 fastest)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    plan = plan_grid((5, 3, 2), 4)
    log = torch.full((30,), -1, dtype=torch.int32, device=device)
    visits = torch.zeros(4, dtype=torch.int32, device=device)
    _log_kernel[plan.grid](log, visits, **plan.args)
    log = log.cpu()
    program, order = log // 1000, log % 1000
    assert program.tolist() == [i % 4 for i in range(30)]
    assert order.tolist() == [i // 4 for i in range(30)]


# -- every op, bitwise the same under budgets -------------------------------------------------

@pytest.mark.parametrize("variant", ["unfused", "fused"])
def test_layer_ops_are_bitwise_the_same_under_budgets(variant, launched):
    """TINY layer ops at their layer shapes and inputs: the unfused variant's ops, then what
    the fused one adds (rope_cat_cache)."""
    ops = _triton_ops(UNFUSED) - OWN_TESTS
    if variant == "fused":
        ops = _triton_ops(FUSED) - _triton_ops(UNFUSED)
    assert _replay_under_budgets(TINY_DIMS, FUSED if variant == "fused" else UNFUSED, ops,
                                 launched) == ops


def test_every_op_has_a_budget_test():
    assert (_triton_ops(UNFUSED) | _triton_ops(FUSED)) == set(OPS)
    assert OWN_TESTS <= set(OPS)


def test_hadamard_and_act_quant_under_budgets(launched):
    """40 rows of 128: two Hadamard programs (32 rows each), three act_quant ones (16 groups)."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(10, 4, 128, generator=g).bfloat16()
    out = {"out": torch.full_like(x, float("nan"))}
    got = _same_bits_under_budgets(lambda b: indexer.hadamard(x=x, **out, max_programs=b), out,
                                  launched)
    ref.hadamard(x=x, **out)
    _close_to_reference("hadamard", "out", got["out"], out["out"])
    outs = {"out": torch.empty(10, 4, 128, dtype=torch.float8_e4m3fn),
            "scale": torch.full((10, 4, 1), float("nan"))}
    got = _same_bits_under_budgets(lambda b: indexer.act_quant(x=x, **outs, max_programs=b), outs,
                                  launched)
    ref.act_quant(x=x, **outs)
    for role, want in outs.items():
        _close_to_reference("act_quant", role, got[role], want)


def test_fused_moe_under_budgets(launched):
    """Two tokens on 2 of 4 experts (hidden 256, inter 128; one expert shared by both); gate_up
    split in two over the hidden dim (a tile's last split sums the partials), the slot sum in
    down's last item of each column tile."""
    g = torch.Generator().manual_seed(2)
    experts, hidden, inter = 4, 256, 128

    def fp8(*shape):
        return torch.randn(shape, generator=g).to(torch.float8_e4m3fn)

    def scales(*shape, k):
        return (torch.rand(shape, generator=g) + 0.5) * k ** -0.5

    args = {"x": torch.randn(2, hidden, generator=g).bfloat16(),
            "ids": torch.tensor([[0, 2], [2, 3]], dtype=torch.int32),
            "weights": torch.rand(2, 2, generator=g),
            "w13": fp8(experts, 2 * inter, hidden), "w13_scale": scales(experts, 2, 2, k=hidden),
            "w2": fp8(experts, hidden, inter), "w2_scale": scales(experts, 2, 1, k=inter)}
    cfg = MoeConfig(gu_block_n=64, gu_splits=2, down_block_n=128)
    out = {"out": torch.full((2, hidden), float("nan")).bfloat16()}
    got = _same_bits_under_budgets(lambda bud: run_fused_moe(**args, **out, config=cfg,
                                                            max_programs=bud), out, launched)
    ref.fused_moe(**args, **out)
    _close_to_reference("fused_moe", "out", got["out"], out["out"])


@pytest.mark.parametrize("tuning", [{"chunk": 64}, {"chunk": 64, "cap": 16, "pair": 16}],
                         ids=["chunked", "rows_finished_whole"])
def test_topk_chunks_under_budgets(tuning, launched):
    """Rows cut into chunks of 64 (three launches of rows x chunks programs); with a capacity
    of 16 the rows are finished whole by their last chunk to arrive."""
    g = torch.Generator().manual_seed(9)
    page, pps, k = 16, 13, 64
    seq_lens = torch.tensor([208, 150], dtype=torch.int32)
    table = torch.randperm(2 * pps, generator=g).to(torch.int32).reshape(2, pps)
    logits = torch.randn(2, pps * page, generator=g)
    out = {"out": torch.full((2, k), -7, dtype=torch.int32)}
    got = _same_bits_under_budgets(
        lambda b: topk._topk_launch(logits, table, seq_lens, out["out"], **tuning, max_programs=b),
        out, launched)
    ref.topk_slots(logits=logits, block_table=table, seq_lens=seq_lens, **out)
    same_sets(got["out"], out["out"])


def test_ops_take_a_budget_and_the_reference_ignores_it():
    for name, fn in OPS.items():
        for impl in (fn, ref.OPS[name]):
            p = inspect.signature(impl).parameters["max_programs"]
            assert p.kind is p.KEYWORD_ONLY and p.default is None, name


# -- ROCm CU masks ------------------------------------------------------------------------------

def test_cu_masks_from_a_count_or_a_list():
    half = cm.cu_mask(total=256, count=128)
    assert half.words == (0xFFFFFFFF,) * 4 + (0,) * 4 and half.cus == tuple(range(128))
    odd = cm.cu_mask(total=80, cus=[0, 33, 79])
    assert odd.words == (1, 2, 1 << 15) and odd.cus == (0, 33, 79)
    assert str(cm.cu_mask(total=40, count=36)) == "36 of 40 CUs (0x0000000fffffffff)"
    xcd0 = cm.cus_on_xcds([0], total=256, xcd_count=8)
    assert xcd0 == list(range(0, 256, 8))  # bit i is on XCD i % 8
    assert len(cm.cus_on_xcds([2, 5], total=256, xcd_count=8)) == 64
    for kwargs in ({"count": 0}, {"count": 257}, {"cus": [256]}, {"cus": [3, 3]}, {"cus": []},
                   {"count": 4, "cus": [1]}, {}):
        with pytest.raises(Failure) as e:
            cm.cu_mask(total=256, **kwargs)
        assert e.value.code == EXIT_BAD_INPUT
    with pytest.raises(Failure, match="XCDs 0 to 7"):
        cm.cus_on_xcds([8], total=256, xcd_count=8)


def test_a_cu_mask_stream_off_rocm_fails_naming_why(monkeypatch):
    mask = cm.cu_mask(total=256, count=128)
    monkeypatch.setattr(torch.version, "hip", None)
    with pytest.raises(Failure, match="ROCm feature .* SM budget") as e, cm.cu_mask_stream(mask):
        pass
    assert e.value.code == EXIT_ENVIRONMENT
    monkeypatch.setattr(torch.version, "hip", "6.4")  # a ROCm torch: no GPU, then in a capture
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(Failure, match="sees none") as e, cm.cu_mask_stream(mask):
        pass
    assert e.value.code == EXIT_ENVIRONMENT
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    with pytest.raises(Failure, match="does not survive into a captured HIP graph") as e, \
            cm.cu_mask_stream(mask):
        pass
    assert e.value.code == EXIT_BAD_INPUT
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    monkeypatch.setattr(cm, "_HIP_LIBRARY", "libno_such_hip")  # nor a HIP runtime to load
    monkeypatch.setattr(cm.ctypes.util, "find_library", lambda name: None)
    cm._load_hip.cache_clear()
    with pytest.raises(Failure, match="libno_such_hip.so is not loaded") as e, cm.cu_mask_stream(mask):
        pass
    assert e.value.code == EXIT_ENVIRONMENT


@pytest.mark.gpu
@pytest.mark.skipif(torch.version.hip is None, reason="CU masks need a ROCm build of torch and an AMD GPU")
def test_a_cu_mask_stream_runs_a_gemm_on_half_the_cus():
    """On ROCm: HIP reports the mask on the stream, and a GEMM run on it gives the default
    stream's bits."""
    total = torch.cuda.get_device_properties(0).multi_processor_count
    mask = cm.cu_mask(total=total, count=total // 2)
    x = torch.randn(4, 2048, device="cuda").bfloat16()
    w = torch.randn(2048, 2048, device="cuda").clamp(-448, 448).to(torch.float8_e4m3fn)
    ws = torch.rand(16, 16, device="cuda") * 2048 ** -0.5
    want, got = (torch.empty(4, 2048, device="cuda").bfloat16() for _ in range(2))
    OPS["fp8_linear"](x=x, weight=w, weight_scale=ws, out=want)
    with cm.cu_mask_stream(mask) as stream:
        if not (os.environ.get("HIP_CU_MASK") or os.environ.get("ROC_GLOBAL_CU_MASK")):
            assert cm.stream_cu_mask(stream, total) == mask
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            OPS["fp8_linear"](x=x, weight=w, weight_scale=ws, out=got)
    assert torch.equal(got, want)


# -- GPU: GLM-5 shapes --------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("batch", [4, 64])
def test_glm5_ops_are_bitwise_the_same_under_budgets_gpu(batch, launched):
    """Every Triton op of the GLM-5 tp=8 layer (both variants) at 7 programs (each loops over
    many work items; budget 1 would take seconds at these grids), half the SMs and none: the
    budgeted runs bitwise equal the unbudgeted one (which the ops' own gpu tests check against
    the reference at these shapes)."""
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    dims = RankDims(GLM5, Shape(batch=batch, context=8192, tp=8))
    done = set()
    for variant in (UNFUSED, FUSED):
        ops = {n.op for n in build_layer(dims, variant).nodes if n.op in OPS} - done
        done |= _replay_under_budgets(dims, variant, ops, launched, device="cuda",
                                      budgets=[7, sms // 2], against_reference=False)
    torch.cuda.synchronize()
    assert done == set(OPS)


def _captured(call, copies: int) -> torch.cuda.CUDAGraph:
    """A graph of call(0) ... call(copies - 1), after an eager run of them."""
    for i in range(copies):  # eager warm-up: compiles and allocates the workspaces
        call(i)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(copies):
            call(i)
    return graph


@pytest.mark.gpu
@pytest.mark.parametrize("node", ["q_b_proj", "idx_wq_b"])
def test_what_a_budget_costs_a_glm5_gemm_gpu(node, capsys):
    """The GEMM at batch 4, its weight rotated through copies worth 256 MB (no L2 reuse),
    captured in a graph per budget; graphs replayed interleaved, median over 30 replays of the
    time per call. Outputs bitwise equal the unbudgeted call."""
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    layer = build_layer(RankDims(GLM5, Shape(batch=4, context=8192, tp=8)), UNFUSED)
    spec = layer.node(node)
    tensors = Buffers(layer, device="cuda", seed=3).tensors(0)
    args = {role: tensors[name] for role, name in spec.inputs.items()}
    weight = args.pop("weight")
    copies = max(2, math.ceil(256e6 / weight.nbytes))
    weights = [weight.clone() for _ in range(copies)]
    out = tensors[spec.outputs["out"]]
    budgets = [None, 3 * sms // 4, sms // 2, sms // 4]
    results, graphs = {}, {}
    for budget in budgets:
        def call(i, budget=budget):
            OPS[spec.op](**args, weight=weights[i], out=out, **spec.attrs, max_programs=budget)
        graphs[budget] = _captured(call, copies)
        out.fill_(float("nan"))
        graphs[budget].replay()
        torch.cuda.synchronize()
        results[budget] = out.clone()  # the last copy's product
    times = {b: [] for b in budgets}
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(30):
        for budget in budgets:
            start.record()
            graphs[budget].replay()
            end.record()
            end.synchronize()
            times[budget].append(start.elapsed_time(end) * 1e3 / copies)
    for budget in budgets:
        assert torch.equal(_bits(results[budget]), _bits(results[None])), budget
    base = statistics.median(times[None])
    with capsys.disabled():
        print(f"\n{node} ({spec.op} {tuple(weight.shape)}, batch 4, {copies} weight copies, "
              f"{torch.cuda.get_device_name()}):")
        for budget in budgets:
            t = statistics.median(times[budget])
            label = f"{sms} SMs, unbudgeted" if budget is None else f"max_programs {budget}"
            print(f"  {label:>24}: {t:7.2f} us a call (p20-p80 "
                  f"{statistics.quantiles(times[budget], n=5)[0]:.2f}-"
                  f"{statistics.quantiles(times[budget], n=5)[3]:.2f}), x{t / base:.2f}")
