"""Triton sparse MLA decode, MoE routing and fused MoE against the reference backend.

On the CPU the kernels run in the Triton interpreter at TINY shapes; the `gpu` tests run them at
GLM-5 tp=8 shapes and also check that they are deterministic and replay from a CUDA graph.
Buffers come from the layer builder, so shapes, dtypes and weight scales are the real ones;
outputs are poisoned with NaN first so an unwritten element fails the check.
"""

from __future__ import annotations

from functools import partial

import pytest
import torch

from streamlab.exec.buffers import Buffers
from streamlab.kernels import reference as ref
from streamlab.kernels.triton import attention
from streamlab.kernels.triton.attention import sparse_mla_decode
from streamlab.kernels.triton.moe import MoeConfig, biased_topk, fused_moe, run_fused_moe
from streamlab.layer import build_layer
from streamlab.models import GLM5, TINY, RankDims, Shape

ATTN_TOL = 1e-2  # bf16 output, fp16 probabilities into the PV product
MOE_TOL = 3e-2  # fp8 re-quantisation of the intermediate can round differently
WEIGHT_TOL = 1e-5


def rel_err(out: torch.Tensor, want: torch.Tensor) -> float:
    assert torch.isfinite(out).all(), "output has unwritten (NaN) or non-finite elements"
    return ((out.float() - want.float()).norm() / want.float().norm()).item()


def layer_buffers(model, batch: int, context: int, tp: int, device="cpu", kv_cache="fp8"):
    dims = RankDims(model, Shape(batch=batch, context=context, tp=tp, kv_cache=kv_cache))
    return dims, Buffers(build_layer(dims), device=device).tensors()


def poisoned(t: torch.Tensor) -> torch.Tensor:
    return torch.full_like(t, float("nan"))


def random_topk_slots(dims: RankDims, b: dict, gen: torch.Generator) -> torch.Tensor:
    """Distinct positions of each token's context, mapped through its block table to slots."""
    page, table = dims.shape.page_size, b["block_table"].cpu().long()
    rows = []
    for t in range(dims.tokens):
        pos = torch.randperm(dims.shape.context, generator=gen)[: dims.topk]
        rows.append(table[t, pos // page] * page + pos % page)
    return torch.stack(rows).to(torch.int32).to(b["kv_cache"].device)


def check_mla(dims: RankDims, b: dict, slots: torch.Tensor, q=None, out=None) -> float:
    q = b["q_cat"] if q is None else q
    out = poisoned(b["attn_out"]) if out is None else out
    want = poisoned(b["attn_out"])
    args = dict(q=q, kv_cache=b["kv_cache"], topk_slots=slots, kv_scale=b["kv_scale"],
                softmax_scale=dims.qk_head_dim ** -0.5)
    sparse_mla_decode(**args, out=out)
    ref.sparse_mla_decode(**args, out=want)
    return rel_err(out, want)


def mla_setup(model, batch, context, tp, device="cpu", kv_cache="fp8", seed=0):
    dims, b = layer_buffers(model, batch, context, tp, device, kv_cache)
    gen = torch.Generator().manual_seed(seed)
    b["q_cat"].copy_(torch.randn(b["q_cat"].shape, generator=gen))
    return dims, b, random_topk_slots(dims, b, gen)


def routed(b: dict, dims: RankDims, seed=0) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference routing of random router logits: (ids, weights) with the fused shared expert."""
    node = build_layer(dims).node("moe_topk")
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(b["router_logits"].shape, generator=gen).to(b["router_logits"].device)
    ids, weights = b["topk_ids"].clone(), b["topk_weights"].clone()
    ref.biased_topk(logits=logits, bias=b["e_score_bias"], ids=ids, weights=weights, **node.attrs)
    return ids, weights


def check_moe(b: dict, ids, weights, x=None, out=None) -> float:
    x = b["x2"] if x is None else x
    out = poisoned(b["moe_out"]) if out is None else out
    want = poisoned(b["moe_out"])
    args = dict(x=x, ids=ids, weights=weights, w13=b["w13"], w13_scale=b["w13_scale"],
                w2=b["w2"], w2_scale=b["w2_scale"])
    fused_moe(**args, out=out)
    ref.fused_moe(**args, out=want)
    return rel_err(out, want)


def moe_setup(model, batch, context, tp, device="cpu", seed=0):
    dims, b = layer_buffers(model, batch, context, tp, device)
    b["x2"].copy_(torch.randn(b["x2"].shape, generator=torch.Generator().manual_seed(seed)))
    return dims, b


# -- sparse MLA decode ----------------------------------------------------------------------
@pytest.mark.parametrize("kv_cache", ["fp8", "bf16"])
@pytest.mark.parametrize("batch", [1, 2, 3])
def test_sparse_mla_decode_tiny(batch, kv_cache):
    dims, b, slots = mla_setup(TINY, batch, 256, 1, kv_cache=kv_cache)
    assert check_mla(dims, b, slots) < ATTN_TOL


def test_sparse_mla_decode_invalid_slots_and_views():
    """-1 slots (scattered, a short-context tail, a whole row) and strided q / slots / out."""
    dims, b, slots = mla_setup(TINY, 3, 256, 1, seed=1)
    slots[0, ::3] = -1
    slots[1, 40:] = -1
    slots[2] = -1
    t, h, d = b["q_cat"].shape
    q = torch.randn(t, h, d + 40).bfloat16()[..., 40:]
    q.copy_(b["q_cat"])
    slots_view = slots.t().contiguous().t()  # column-major
    out = torch.full((t, h, 2 * b["attn_out"].shape[-1]), float("nan")).bfloat16()[..., ::2]
    want = poisoned(b["attn_out"])
    args = dict(kv_cache=b["kv_cache"], kv_scale=b["kv_scale"],
                softmax_scale=dims.qk_head_dim ** -0.5)
    sparse_mla_decode(q=q, topk_slots=slots_view, out=out, **args)
    ref.sparse_mla_decode(q=b["q_cat"], topk_slots=slots, out=want, **args)
    assert rel_err(out[:2], want[:2]) < ATTN_TOL
    assert (out[2] == 0).all(), "a token with no valid slot gets zeros"


@pytest.mark.parametrize("splits", [1, 2, 4])
@pytest.mark.parametrize("prefetch", [True, False])
def test_sparse_mla_decode_split_counts(splits, prefetch):
    """One split (the output written directly), two, and one split per step (four), with and
    without the prefetching loop; twice in a row gives the same bits. Invalid slots as above,
    including a token with none (zeros), and a token whose q exceeds fp16's range."""
    dims, b, slots = mla_setup(TINY, 3, 256, 1, seed=2)
    slots[0, 5::2] = -1
    slots[1, 20:] = -1  # a whole split without a valid slot
    slots[2] = -1
    b["q_cat"][1] *= 2.0 ** 17  # scaled down by a power of two for the fp16 products
    args = dict(q=b["q_cat"], kv_cache=b["kv_cache"], topk_slots=slots, kv_scale=b["kv_scale"],
                softmax_scale=dims.qk_head_dim ** -0.5)
    want = poisoned(b["attn_out"])
    ref.sparse_mla_decode(**args, out=want)
    policy = dict(programs_per_sm=1000, max_splits=splits)
    assert attention.num_splits(3, dims.topk, b["q_cat"].device, **policy)[0] == splits
    got = []
    for _ in range(2):
        out = poisoned(b["attn_out"])
        attention._mla_launch(**args, out=out, **policy, prefetch=prefetch)
        got.append(out)
    assert rel_err(got[0][:2], want[:2]) < ATTN_TOL
    assert (got[0][2] == 0).all()
    assert torch.equal(got[0], got[1])


# -- routing --------------------------------------------------------------------------------
@pytest.mark.parametrize("model,tokens,shared", [(TINY, 3, True), (TINY, 2, False),
                                                 (GLM5, 5, True)])
def test_biased_topk(model, tokens, shared):
    gen = torch.Generator().manual_seed(tokens)
    experts, k = model.n_routed_experts, model.num_experts_per_tok
    logits = torch.randn(tokens, experts, generator=gen)
    bias = torch.randn(experts, generator=gen) * 0.1
    attrs = dict(topk=k, scale=model.routed_scaling_factor,
                 shared_expert_id=experts if shared else -1)
    slots = k + shared
    ids = torch.full((tokens, slots), -1, dtype=torch.int32)
    weights = torch.full((tokens, slots), float("nan"))
    want_ids, want_w = ids.clone(), weights.clone()
    biased_topk(logits=logits, bias=bias, ids=ids, weights=weights, **attrs)
    ref.biased_topk(logits=logits, bias=bias, ids=want_ids, weights=want_w, **attrs)
    got, order = ids.long().sort(1)
    want, want_order = want_ids.long().sort(1)
    assert torch.equal(got, want)
    assert rel_err(weights.gather(1, order), want_w.gather(1, want_order)) < WEIGHT_TOL
    if shared:
        assert (ids[:, -1] == experts).all() and (weights[:, -1] == 1).all()


# -- fused MoE ------------------------------------------------------------------------------
@pytest.mark.parametrize("batch", [1, 3])
def test_fused_moe_routed(batch):
    dims, b = moe_setup(TINY, batch, 256, 1, seed=batch)
    ids, weights = routed(b, dims, seed=batch)
    assert check_moe(b, ids, weights) < MOE_TOL


def test_fused_moe_shared_experts_and_views():
    """20 tokens all on expert 0 (two blocks of it) and several sharing others; a dropped (-1)
    slot; strided x / ids / weights / out."""
    dims, b = moe_setup(TINY, 20, 256, 1, seed=7)
    ids, weights = routed(b, dims, seed=7)
    ids[:, 0] = 0
    ids[::2, 1] = 5
    ids[1::4, 2] = 5
    ids[3, 2] = -1  # the reference reads expert -1 (the last) for it: weight 0 cancels it
    weights[3, 2] = 0.0
    t, h = b["x2"].shape
    x = torch.randn(t, 2 * h).bfloat16()[:, ::2]
    x.copy_(b["x2"])
    ids_view = torch.full((t, ids.shape[1] + 3), 99, dtype=torch.int32)[:, 3:]
    ids_view.copy_(ids)
    weights_view = weights.t().contiguous().t()
    out = torch.full((2 * t, h), float("nan")).bfloat16()[::2]
    want = poisoned(b["moe_out"])
    args = dict(w13=b["w13"], w13_scale=b["w13_scale"], w2=b["w2"], w2_scale=b["w2_scale"])
    fused_moe(x=x, ids=ids_view, weights=weights_view, out=out, **args)
    ref.fused_moe(x=b["x2"], ids=ids, weights=weights, out=want, **args)
    assert rel_err(out, want) < MOE_TOL


@pytest.mark.parametrize("cfg", [
    MoeConfig(gu_block_n=32, gu_splits=2, down_block_n=64, down_swap=True),
    MoeConfig(gu_block_n=128, gu_splits=3, gu_warps=8, gu_swap=True, down_block_n=256,
              down_warps=8),
], ids=["split2", "split3-uneven"])
def test_fused_moe_configs(cfg):
    """gate_up split over the hidden dim (the last split of a tile sums the partials and applies
    the activation) and the slot sum fused into down (its last program per column tile), for
    3 tokens with one expert shared by all; a second call on the same output (counters reset
    by the first) gives bitwise the same result."""
    dims, b = moe_setup(TINY, 3, 256, 1, seed=3)
    ids, weights = routed(b, dims, seed=3)
    ids[:, 0] = 0
    args = dict(x=b["x2"], ids=ids, weights=weights, w13=b["w13"], w13_scale=b["w13_scale"],
                w2=b["w2"], w2_scale=b["w2_scale"])
    out, want = poisoned(b["moe_out"]), poisoned(b["moe_out"])
    run_fused_moe(**args, out=out, config=cfg)
    ref.fused_moe(**args, out=want)
    assert rel_err(out, want) < MOE_TOL
    first = out.clone()
    out.fill_(float("nan"))
    run_fused_moe(**args, out=out, config=cfg)
    assert torch.equal(out, first)


# -- GPU, GLM-5 tp=8 ------------------------------------------------------------------------
def graph_replay(fn, outputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """Run `fn` eagerly (warm-up: compiles, allocates workspaces), capture it, replay it."""
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    for o in outputs:
        o.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    return [o.clone() for o in outputs]


@pytest.mark.gpu
@pytest.mark.parametrize("batch", [4, 64])
def test_sparse_mla_decode_glm5_gpu(batch):
    dims, b, slots = mla_setup(GLM5, batch, 8192, 8, device="cuda")
    assert (dims.heads, dims.kv_dim, dims.topk) == (8, 576, 2048)
    slots[0, 1500:] = -1
    slots[-1, ::5] = -1
    assert check_mla(dims, b, slots) < ATTN_TOL
    out = poisoned(b["attn_out"])
    run = partial(sparse_mla_decode, q=b["q_cat"], kv_cache=b["kv_cache"], topk_slots=slots,
                  kv_scale=b["kv_scale"], out=out, softmax_scale=dims.qk_head_dim ** -0.5)
    run()
    first = out.clone()
    (replayed,) = graph_replay(run, [out])
    assert torch.equal(replayed, first), "not deterministic, or wrong from a graph"


@pytest.mark.gpu
@pytest.mark.parametrize("batch", [1, 4, 16, 64])
def test_sparse_mla_decode_replays_glm5_gpu(batch):
    """Replayed many times, a graph gives the eager output every time (at every split count the
    batch sizes give). One token's q is far beyond fp16's range: the kernel scales it down by a
    power of two for its fp16 products."""
    dims, b, slots = mla_setup(GLM5, batch, 8192, 8, device="cuda", seed=3)
    slots[-1, 100:] = -1
    b["q_cat"][0] *= 2.0 ** 17
    out = poisoned(b["attn_out"])
    run = partial(sparse_mla_decode, q=b["q_cat"], kv_cache=b["kv_cache"], topk_slots=slots,
                  kv_scale=b["kv_scale"], out=out, softmax_scale=dims.qk_head_dim ** -0.5)
    assert check_mla(dims, b, slots) < ATTN_TOL
    run()
    torch.cuda.synchronize()
    first = out.clone()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    for _ in range(5):
        out.fill_(float("nan"))
        for _ in range(3):
            graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, first)


@pytest.mark.gpu
@pytest.mark.parametrize("batch", [4, 64])
def test_fused_moe_glm5_gpu(batch):
    dims, b = moe_setup(GLM5, batch, 8192, 8, device="cuda")
    assert b["w13"].shape == (257, 512, 6144) and b["w2"].shape == (257, 6144, 256)
    ids, weights = routed(b, dims)
    assert check_moe(b, ids, weights) < MOE_TOL
    out = poisoned(b["moe_out"])
    run = partial(fused_moe, x=b["x2"], ids=ids, weights=weights, w13=b["w13"],
                  w13_scale=b["w13_scale"], w2=b["w2"], w2_scale=b["w2_scale"], out=out)
    run()
    first = out.clone()
    (replayed,) = graph_replay(run, [out])
    assert torch.equal(replayed, first), "not deterministic, or wrong from a graph"


@pytest.mark.gpu
@pytest.mark.parametrize("batch", [4, 64])
def test_biased_topk_glm5_gpu(batch):
    dims, b = moe_setup(GLM5, batch, 8192, 8, device="cuda")
    node = build_layer(dims).node("moe_topk")
    logits = torch.randn(b["router_logits"].shape, device="cuda")
    ids = torch.full_like(b["topk_ids"], -1)
    weights = poisoned(b["topk_weights"])
    want_ids, want_w = ids.clone(), weights.clone()
    biased_topk(logits=logits, bias=b["e_score_bias"], ids=ids, weights=weights, **node.attrs)
    ref.biased_topk(logits=logits, bias=b["e_score_bias"], ids=want_ids, weights=want_w,
                    **node.attrs)
    got, order = ids.long().sort(1)
    want, want_order = want_ids.long().sort(1)
    assert torch.equal(got, want)
    assert rel_err(weights.gather(1, order), want_w.gather(1, want_order)) < WEIGHT_TOL
