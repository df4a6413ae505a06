"""aiter's kernels against the reference, node by node, and the preshuffled index-K cache
layout shared by the backends.

- On ROCm with aiter loadable: every node bound to aiter runs on realistic inputs (the layer
  replayed with the reference backend) and is compared with the reference node; skipped with
  the loader's reason elsewhere.
- Everywhere: the same replay with torch stand-ins that follow aiter's documented semantics
  and calling conventions, so the glue (argument order, views, layouts, the top-k slot mapping,
  the shuffled MoE weights) runs on the CPU.
- The preshuffled index-K cache: written by Triton (the interpreter on the CPU) and by the
  reference, bit for bit; read back by Triton's logits kernel; and the aiter side (its store and
  gather) against the same bytes where aiter loads.
"""

from __future__ import annotations

import functools
from dataclasses import replace

import pytest
import torch

from streamlab.errors import Failure
from streamlab.exec.buffers import Buffers
from streamlab.kernels import reference as ref
from streamlab.kernels.aiter import require_aiter
from streamlab.kernels.aiter.api import BY_KEY
from streamlab.kernels.aiter.nodes import TOPK, bind_aiter
from streamlab.kernels.aiter.runtime import AiterRuntime, Unmapped
from streamlab.kernels.aiter.signature import live_problem
from streamlab.kernels.quant import (
    FP8,
    dequant_blocks,
    dequant_groups,
    index_cache_read,
    index_cache_write,
    quant_groups,
)
from streamlab.kernels.triton import indexer
from streamlab.layer import Variant, build_layer
from streamlab.models import GLM5, TINY, RankDims, Shape
from tests.tolerance import close_index_cache, equal, same_sets

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@functools.cache
def _aiter() -> AiterRuntime | str:
    try:
        return require_aiter()
    except Failure as e:
        return str(e)


def _need_aiter() -> AiterRuntime:
    rt = _aiter()
    if isinstance(rt, str):
        pytest.skip(f"aiter cannot load here: {rt}")
    return rt


# -- comparisons ------------------------------------------------------------------------------

def _close(got, want, rel=2e-2):
    """Relative to the tensor's largest |value|: sums of terms of both signs mean nothing
    element-wise near zero."""
    got, want = got.float(), want.float()
    finite = torch.isfinite(want)
    assert torch.equal(finite, torch.isfinite(got)), "-inf / nan patterns differ"
    scale = want[finite].abs().max().clamp_min(1e-6)
    err = (got - want)[finite].abs().max()
    assert err <= rel * scale, f"max error {err:.3g} vs {rel} x {scale:.3g}"


def _close_cache(got, want):
    if got.dtype == FP8:  # one e4m3 step apart at most
        torch.testing.assert_close(got.float(), want.float(), rtol=0.125, atol=2.0 ** -9)
    else:
        _close(got, want)


COMPARE = {
    "fp8_linear": {"out": _close}, "rmsnorm": {"out": _close},
    "rmsnorm_add": {"out": _close, "residual": _close},
    "rope": {"q_out": _close, "k_out": _close},
    "rope_cat_cache": {"q_out": _close, "kv_cache": _close_cache},
    "index_k_cache_store": {"cache": functools.partial(close_index_cache, identical=0.0)},
    "paged_mqa_logits": {"out": functools.partial(_close, rel=1e-3)},
    "topk_slots": {"out": same_sets},
    "biased_topk": {"ids": equal, "weights": functools.partial(_close, rel=1e-5)},
    "fused_moe": {"out": _close},
}


def _replay(dims: RankDims, variant: Variant, rt: AiterRuntime, device) -> set[str]:
    """Run the layer with the reference backend; at each node bound to aiter also run it on
    copies of its outputs and compare. Returns the ops that ran on aiter."""
    layer = build_layer(dims, variant)
    t = Buffers(layer, device=device, seed=5).tensors(0)
    ran = set()
    for node in layer.nodes:
        args = {role: t[name] for role, name in node.inputs.items()}
        outs = {role: t[name] for role, name in node.outputs.items()}
        bound = bind_aiter(node, layer.tensors, rt)
        copies = {role: x.clone() for role, x in outs.items()}
        if bound.backend == "aiter":
            bound.fn(**{**args, **copies}, **node.attrs)
        ref.OPS[node.op](**{**args, **outs}, **node.attrs)
        if bound.backend == "aiter":
            ran.add(node.op)
            for role, check in COMPARE[node.op].items():
                check(copies[role], outs[role])
    return ran


# -- on ROCm: the real kernels ----------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("preshuffle", [False, True])
def test_aiter_nodes_match_the_reference(preshuffle):
    rt = _need_aiter()
    dims = RankDims(GLM5, Shape(batch=4, context=4096, tp=8, page_size=64))
    ran = _replay(dims, Variant(preshuffle_index_cache=preshuffle), rt, "cuda")
    assert {"fp8_linear", "rmsnorm_add", "rmsnorm", "rope", "rope_cat_cache", "topk_slots",
            "biased_topk", "fused_moe"} <= ran


# -- everywhere: torch stand-ins with aiter's semantics ----------------------------------------------

def _rotate(x, cos, sin, gptj):
    if gptj:
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), -1).flatten(-2)
    h = x.shape[-1] // 2
    return torch.cat((x[..., :h] * cos - x[..., h:] * sin, x[..., h:] * cos + x[..., :h] * sin), -1)


def _unshuffle(w):
    """aiter's (16, 16) weight layout undone from its closed form (not from our shuffle)."""
    e, n, k = w.shape
    nn, kk = torch.meshgrid(torch.arange(n), torch.arange(k), indexing="ij")
    off = (((nn // 16) * (k // 32) + kk // 32) * 512 + ((kk % 32) // 16) * 256
           + (nn % 16) * 16 + kk % 16)
    return w.reshape(e, -1)[:, off.reshape(-1).to(w.device)].reshape(e, n, k)


class Stand:
    """aiter entry points in torch: parameter names as in aiter (checked against the table)."""

    @staticmethod
    def per_1x128_quant(out, input, scales, scale_ub, shuffle_scale):
        g = input.float()
        s = g.abs().amax(-1).clamp_min(1e-10) / 448.0
        out.view(-1, 128).copy_((g * (1.0 / s)[:, None]).clamp(-448, 448).to(FP8))
        scales.view(-1).copy_(s)

    @staticmethod
    def gemm_a8w8_blockscale(XQ, WQ, x_scale, w_scale, Out):
        Out.copy_(dequant_groups(XQ, x_scale) @ dequant_blocks(WQ, w_scale).t())

    @staticmethod
    def rmsnorm2d_fwd(input, weight, epsilon, use_model_sensitive_rmsnorm=0):
        x = input.float()
        return (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + epsilon) * weight.float()).to(input.dtype)

    @staticmethod
    def rmsnorm2d_fwd_with_add(out, input, residual_in, residual_out, weight, epsilon,
                               use_model_sensitive_rmsnorm=0):
        acc = input.float() + residual_in.float()
        residual_out.copy_(acc)
        out.copy_(acc * torch.rsqrt(acc.pow(2).mean(-1, keepdim=True) + epsilon) * weight.float())

    @staticmethod
    def rope_2c(output_x, output_y, input_x, input_y, cos, sin, positions, rotate_style,
                reuse_freqs_front_part, nope_first):
        assert reuse_freqs_front_part and not nope_first and cos.is_contiguous()
        c, s = cos[positions].squeeze(-2), sin[positions].squeeze(-2)  # [s, b, 1, f]
        r = 2 * cos.shape[-1]
        for src, dst in ((input_x, output_x), (input_y, output_y)):
            x = src.float()
            dst.copy_(torch.cat((_rotate(x[..., :r], c, s, rotate_style == 1), x[..., r:]), -1))

    @staticmethod
    def fused_qk_rope_cat_and_cache_mla(q_nope, q_pe, k_nope, k_pe, kv_cache, slot_mapping, pos,
                                        cos, sin, k_scale, is_neox, num_decode_toks_for_zeros=0,
                                        apply_scale=True, q_out=None, decode_q_pe_out=None,
                                        k_pe_out=None, q_out_dtype=None):
        c, s = cos[pos][:, None, :].float(), sin[pos][:, None, :].float()
        q_out.copy_(torch.cat((q_nope.float(), _rotate(q_pe.float(), c, s, not is_neox)), -1))
        entry = torch.cat((k_nope.float(), _rotate(k_pe.float(), c, s, not is_neox)), -1)
        entry = (entry * (1.0 / k_scale.float())).squeeze(1)
        keep = slot_mapping >= 0
        cast = entry.clamp(-448, 448).to(FP8) if kv_cache.dtype == FP8 else entry.to(kv_cache.dtype)
        kv_cache[slot_mapping[keep], 0] = cast[keep]

    @staticmethod
    def indexer_k_quant_and_cache(k, kv_cache, slot_mapping, quant_block_size, scale_fmt,
                                  preshuffle=False):
        assert quant_block_size == 128 and scale_fmt == "ue8m0"
        q, s = quant_groups(k, ue8m0=True)
        index_cache_write(kv_cache, slot_mapping, q, s.reshape(-1), preshuffle)

    @staticmethod
    def deepgemm_fp8_paged_mqa_logits(q_fp8, kv_cache, weights, out_logits, context_lens,
                                      kv_indices, max_model_len, Preshuffle=False, KVBlockSize=1):
        cache = kv_cache.squeeze(2)
        assert cache.shape[1] == KVBlockSize and out_logits.shape[1] == max_model_len
        for b in range(q_fp8.shape[0]):
            n = int(context_lens[b])
            k, ks = index_cache_read(cache, kv_indices[b, : -(-n // KVBlockSize)].long(), Preshuffle)
            k = k.float().reshape(-1, k.shape[-1])[:n] * ks.reshape(-1)[:n, None]
            out_logits[b, :n] = (weights[b][:, None] * torch.relu(q_fp8[b, 0].float() @ k.t())).sum(0)

    @staticmethod
    def top_k_per_row_decode(logits, next_n, seqLens, indices, numRows, stride0, stride1):
        assert next_n == 1 and indices.shape[1] == TOPK
        indices.fill_(-1)
        for r in range(numRows):
            n = int(seqLens[r])
            top = torch.arange(n) if n <= TOPK else torch.topk(logits[r, :n], TOPK).indices
            indices[r, : top.numel()] = top.to(indices.dtype)

    @staticmethod
    def biased_grouped_topk(gating_output, correction_bias, topk_weights, topk_ids,
                            num_expert_group, topk_group, need_renorm, routed_scaling_factor=1.0):
        assert num_expert_group == topk_group == 1 and need_renorm
        s = torch.sigmoid(gating_output.float())
        top = torch.topk(s + correction_bias, topk_ids.shape[1], -1).indices
        w = s.gather(1, top)
        topk_ids.copy_(top)
        topk_weights.copy_(w / w.sum(-1, keepdim=True) * routed_scaling_factor)

    @staticmethod
    def fused_moe(hidden_states, w1, w2, topk_weight, topk_ids, expert_mask=None, activation=None,
                  quant_type=None, doweight_stage1=False, w1_scale=None, w2_scale=None,
                  a1_scale=None, a2_scale=None):
        assert (activation, quant_type, expert_mask, a1_scale, a2_scale) == ("silu", "1x128", None, None, None)
        assert w1.is_shuffled and w2.is_shuffled
        out = torch.empty_like(hidden_states)
        ref.fused_moe(x=hidden_states, ids=topk_ids, weights=topk_weight, w13=_unshuffle(w1),
                      w13_scale=w1_scale, w2=_unshuffle(w2), w2_scale=w2_scale, out=out)
        return out


def _stand_in_runtime() -> AiterRuntime:
    fns = {"per_1x128_quant": Stand.per_1x128_quant, "gemm_a8w8_blockscale": Stand.gemm_a8w8_blockscale,
           "rmsnorm2d_fwd": Stand.rmsnorm2d_fwd, "rmsnorm2d_fwd_with_add": Stand.rmsnorm2d_fwd_with_add,
           "rope_2c": Stand.rope_2c,
           "fused_qk_rope_cat_and_cache_mla": Stand.fused_qk_rope_cat_and_cache_mla,
           "indexer_k_quant_and_cache": Stand.indexer_k_quant_and_cache,
           "indexer_k_quant_and_cache/preshuffle": Stand.indexer_k_quant_and_cache,
           "deepgemm_fp8_paged_mqa_logits": Stand.deepgemm_fp8_paged_mqa_logits,
           "top_k_per_row_decode": Stand.top_k_per_row_decode,
           "biased_grouped_topk": Stand.biased_grouped_topk, "fused_moe": Stand.fused_moe}
    for key, fn in fns.items():
        assert live_problem(BY_KEY[key], fn) is None, key
    return AiterRuntime("stand-in", fns, {},
                        {"fp8": FP8, "QuantType.per_1x128": "1x128", "ActivationType.Silu": "silu"})


# TINY with a full-size indexer (16 heads, top-2048 of a 2304-token context): every op maps
TINY_INDEXER = replace(TINY, index_n_heads=16, index_topk=2048)


@pytest.mark.parametrize("preshuffle,fused,kv", [(True, True, "fp8"), (False, False, "bf16")])
def test_the_glue_with_stand_ins(preshuffle, fused, kv):
    dims = RankDims(TINY_INDEXER, Shape(batch=2, context=2304, tp=1, page_size=64, kv_cache=kv))
    variant = Variant(preshuffle_index_cache=preshuffle, fused_rope_cat_cache=fused)
    ran = _replay(dims, variant, _stand_in_runtime(), DEVICE)
    want = {"fp8_linear", "rmsnorm_add", "rmsnorm", "rope", "index_k_cache_store",
            "paged_mqa_logits", "topk_slots", "biased_topk", "fused_moe"}
    assert ran == want | ({"rope_cat_cache"} if fused else set())


# -- the preshuffled index-K cache, bit for bit ---------------------------------------------------

def _exact_k_rows(g, n):
    """K rows whose ue8m0 quantisation is exact: fp8 values times a power of two, each row's
    largest |value| exactly 448 x 2^e, so scale = 2^e and k / scale rounds nowhere."""
    codes = torch.randint(0, 126, (n, 128), generator=g, dtype=torch.uint8)
    vals = codes.view(FP8).float() * torch.where(torch.rand(n, 128, generator=g) < 0.5, -1.0, 1.0)
    vals[:, 7] = 448.0
    scale = torch.exp2(torch.randint(-8, 3, (n, 1), generator=g).float())
    return (vals * scale).to(torch.bfloat16), vals.to(FP8), scale.reshape(-1)


@pytest.mark.parametrize("preshuffle", [True, False])
def test_index_cache_layout_is_the_same_through_triton_and_the_reference(preshuffle):
    g = torch.Generator().manual_seed(11)
    pages, page, n = 3, 32, 40
    k, want_q, want_s = _exact_k_rows(g, n)
    slots = torch.randperm(pages * page, generator=g)[:n]
    want = torch.zeros(pages, page, 132, dtype=torch.uint8)
    index_cache_write(want, slots, want_q, want_s, preshuffle)
    cache = torch.zeros_like(want, device=DEVICE)
    indexer.index_k_cache_store(k=k.to(DEVICE), slot_mapping=slots.to(DEVICE), cache=cache,
                                preshuffle=preshuffle)
    assert torch.equal(cache.cpu(), want)
    got_k, got_s = index_cache_read(cache, torch.arange(pages, device=DEVICE), preshuffle)
    assert torch.equal(got_k.reshape(-1, 128)[slots].view(torch.uint8).cpu(), want_q.view(torch.uint8))
    assert torch.equal(got_s.reshape(-1)[slots].cpu(), want_s)


def test_triton_reads_preshuffled_pages_as_it_reads_plain_ones():
    g = torch.Generator().manual_seed(12)
    pages, page, heads = 4, 32, 4
    _, q8, s = _exact_k_rows(g, pages * page)
    slots = torch.arange(pages * page)
    q, qs = quant_groups(torch.randn(2, heads, 128, generator=g), ue8m0=True)
    w = torch.randn(2, heads, generator=g) * qs.reshape(2, heads)
    table = torch.tensor([[2, 0], [1, 3]], dtype=torch.int32)
    seq_lens = torch.tensor([50, 64], dtype=torch.int32)
    outs = []
    for preshuffle in (False, True):
        cache = torch.zeros(pages, page, 132, dtype=torch.uint8)
        index_cache_write(cache, slots, q8, s, preshuffle)
        out = torch.full((2, 2 * page), float("nan"), device=DEVICE)
        indexer.paged_mqa_logits(q=q.to(DEVICE), weights=w.to(DEVICE), cache=cache.to(DEVICE),
                                 block_table=table.to(DEVICE), seq_lens=seq_lens.to(DEVICE),
                                 out=out, preshuffle=preshuffle)
        outs.append(out.cpu())
    assert torch.equal(outs[0], outs[1])


@pytest.mark.gpu
@pytest.mark.parametrize("preshuffle", [True, False])
def test_index_cache_layout_is_the_same_through_aiter(preshuffle):
    rt = _need_aiter()
    suffix = "/preshuffle" if preshuffle else ""
    try:
        store = rt.fn("indexer_k_quant_and_cache" + suffix)
        gather = rt.fn("cp_gather_indexer_k_quant_cache" + suffix)
    except Unmapped as e:
        pytest.skip(str(e))
    extra = (True,) if preshuffle else ()
    g = torch.Generator().manual_seed(13)
    pages, page = 4, 64
    k, want_q, want_s = _exact_k_rows(g, pages * page)
    slots = torch.randperm(pages * page, generator=g)
    written = torch.zeros(pages, page, 132, dtype=torch.uint8, device="cuda")
    store(k.cuda(), written, slots.cuda(), 128, "ue8m0", *extra)
    triton_cache = torch.zeros_like(written)
    indexer.index_k_cache_store(k=k.cuda(), slot_mapping=slots.cuda(), cache=triton_cache,
                                preshuffle=preshuffle)
    assert torch.equal(written, triton_cache)
    dst_k = torch.empty(pages * page, 128, dtype=torch.uint8, device="cuda")
    dst_s = torch.empty(pages * page, 1, dtype=torch.float32, device="cuda")
    table = torch.arange(pages, dtype=torch.int32, device="cuda")[None]
    cu = torch.tensor([0, pages * page], dtype=torch.int32, device="cuda")
    gather(triton_cache, dst_k, dst_s, table, cu, *extra)
    order = torch.argsort(slots)  # slot s holds row order[s]
    assert torch.equal(dst_k.cpu(), want_q.view(torch.uint8)[order])
    assert torch.equal(dst_s.reshape(-1).cpu(), want_s[order])
