"""Reference backend: the maths of every op in torch (fp32 accumulate), on any device.

Every op takes its input and output tensors by role as keyword arguments and writes its outputs
in place (so the same call can be captured in a graph). Rounding points match what the GPU
kernels do: bf16 activations between kernels, fp8 with 1x128 scales into FP8 GEMMs, fp32
inside a kernel. These functions are the definition the other backends are tested against.

Every op also takes the SM / CU budget the Triton kernels honour (`max_programs`, see
kernels/triton/common.py) and ignores it: torch chooses its own launches, and a budget never
changes what an op computes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from streamlab.kernels.quant import (dequant_blocks, dequant_groups, index_cache_read,
                                     index_cache_write, quant_groups, to_fp8)


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x = x.float()
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight.float()


def rmsnorm_add(*, x, residual, weight, out, eps, max_programs: int | None = None):
    """residual <- residual + x (bf16); out <- rmsnorm(residual)."""
    residual.copy_(residual.float() + x.float())
    out.copy_(_rms(residual, weight, eps))


def rmsnorm(*, x, weight, out, eps, max_programs: int | None = None):
    out.copy_(_rms(x, weight, eps))


def layernorm(*, x, weight, bias, out, eps, max_programs: int | None = None):
    out.copy_(F.layer_norm(x.float(), x.shape[-1:], weight.float(), bias.float(), eps))


def fp8_linear(*, x, weight, weight_scale, out, max_programs: int | None = None):
    """x bf16 [M,K] quantised per 1x128 group; weight fp8 [N,K] with 128x128 block scales."""
    xq, xs = quant_groups(x)
    y = dequant_groups(xq, xs) @ dequant_blocks(weight, weight_scale).t()
    out.copy_(y[:, : out.shape[-1]])


def linear(*, x, weight, out, max_programs: int | None = None):
    out.copy_(x.float() @ weight.float().t())


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool) -> torch.Tensor:
    """Rotary embedding of x [T, heads, r] with cos/sin [T, 1, r/2]."""
    if interleaved:
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), -1).flatten(-2)
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), -1)


def _cos_sin(cos_sin: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    cs = cos_sin[positions].float().unsqueeze(1)
    half = cs.shape[-1] // 2
    return cs[..., :half], cs[..., half:]


def rope(*, q, k, positions, cos_sin, q_out, k_out, rope_dim, interleaved, max_programs: int | None = None):
    """Rotate the first `rope_dim` dims of every head of q [T, h*D] or [T, h, D] and of k [T, D]."""
    cos, sin = _cos_sin(cos_sin, positions)
    d = k.shape[-1]
    for src, dst in ((q, q_out), (k, k_out)):
        x = src.float().reshape(src.shape[0], -1, d)
        x = torch.cat((_rotate(x[..., :rope_dim], cos, sin, interleaved), x[..., rope_dim:]), -1)
        dst.copy_(x.reshape(dst.shape))


def _hadamard_matrix(n: int, device) -> torch.Tensor:
    h = torch.ones(1, 1, device=device)
    while h.shape[0] < n:
        h = torch.cat((torch.cat((h, h), 1), torch.cat((h, -h), 1)), 0)
    return h


def hadamard(*, x, out, max_programs: int | None = None):
    """Hadamard rotation of the last dim (size a power of two), scaled by dim^-0.5."""
    d = x.shape[-1]
    out.copy_((x.float() @ _hadamard_matrix(d, x.device)) * d ** -0.5)


def act_quant(*, x, out, scale, max_programs: int | None = None):
    """Per-128 group fp8 quantisation with power-of-two (ue8m0) scales."""
    q, s = quant_groups(x, ue8m0=True)
    out.copy_(q)
    scale.copy_(s.reshape(scale.shape))


def index_k_cache_store(*, k, slot_mapping, cache, preshuffle, max_programs: int | None = None):
    q, s = quant_groups(k, ue8m0=True)
    index_cache_write(cache, slot_mapping, q, s.reshape(-1), preshuffle)


def index_weights_scale(*, w, q_scale, out, factor, max_programs: int | None = None):
    out.copy_(w.float() * q_scale.float() * factor)


def paged_mqa_logits(*, q, weights, cache, block_table, seq_lens, out, preshuffle,
                     max_programs: int | None = None):
    """logit[b, t] = sum_h weights[b,h] * relu(q[b,h] . k_t * kscale_t); -inf past the context."""
    page = cache.shape[1]
    out.fill_(float("-inf"))
    for b in range(q.shape[0]):
        n = int(seq_lens[b])
        pages = block_table[b, : -(-n // page)].long()
        k, ks = index_cache_read(cache, pages, preshuffle)
        k = k.float().reshape(-1, k.shape[-1])[:n] * ks.reshape(-1)[:n, None]
        s = torch.relu(q[b].float() @ k.t())  # [heads, n]
        out[b, :n] = (weights[b].float()[:, None] * s).sum(0)


def topk_slots(*, logits, block_table, seq_lens, out, max_programs: int | None = None):
    """Top-k positions per row (descending), mapped through the block table to KV slots; -1 pads."""
    page = logits.shape[1] // block_table.shape[1]
    k = out.shape[1]
    out.fill_(-1)
    for b in range(logits.shape[0]):
        n = int(seq_lens[b])
        top = torch.topk(logits[b, :n], min(k, n)).indices
        out[b, : top.numel()] = (block_table[b, top // page].long() * page + top % page).to(out.dtype)


def bmm_fp8(*, x, weight, weight_scale, out, max_programs: int | None = None):
    """x bf16 [T, h, K] times fp8 weight [h, N, K] (one scale per head) -> out [T, h, N]."""
    w = weight.float() * weight_scale.float()[:, None, None]
    out.copy_(torch.einsum("thk,hnk->thn", x.float(), w))


def kv_cache_store(*, k_nope, k_pe, slot_mapping, kv_scale, kv_cache, max_programs: int | None = None):
    entry = torch.cat((k_nope.float(), k_pe.float()), -1) / kv_scale.float()
    keep = slot_mapping >= 0
    kv_cache[slot_mapping[keep]] = (to_fp8(entry) if kv_cache.dtype != torch.bfloat16 else entry.to(
        kv_cache.dtype))[keep]


def rope_cat_cache(*, q_nope, q_pe, k_nope, k_pe, positions, slot_mapping, cos_sin, kv_scale,
                   q_out, kv_cache, max_programs: int | None = None):
    """q_out <- cat(q_nope, rope(q_pe)); kv_cache[slot] <- cast(cat(k_nope, rope(k_pe)) / scale)."""
    cos, sin = _cos_sin(cos_sin, positions)
    q_rot = _rotate(q_pe.float(), cos, sin, True)
    k_rot = _rotate(k_pe.float().unsqueeze(1), cos, sin, True).squeeze(1)
    q_out.copy_(torch.cat((q_nope.float(), q_rot), -1))
    kv_cache_store(k_nope=k_nope, k_pe=k_rot.to(k_pe.dtype), slot_mapping=slot_mapping,
                   kv_scale=kv_scale, kv_cache=kv_cache)


def cat(*, a, b, out, max_programs: int | None = None):
    out.copy_(torch.cat((a, b), -1))


def sparse_mla_decode(*, q, kv_cache, topk_slots, kv_scale, out, softmax_scale,
                      max_programs: int | None = None):
    """Attention of q [T, h, 576] over the selected cache slots; values are the first 512 dims."""
    slots = topk_slots.long()
    valid = slots >= 0
    kv = kv_cache[slots.clamp_min(0)].float() * kv_scale.float()  # [T, K, 576]
    s = torch.einsum("thd,tkd->thk", q.float(), kv) * softmax_scale
    s = s.masked_fill(~valid[:, None, :], float("-inf"))
    p = torch.softmax(s, -1)
    out.copy_(torch.einsum("thk,tkd->thd", p, kv[..., : out.shape[-1]]))


def biased_topk(*, logits, bias, ids, weights, topk, scale, shared_expert_id,
                max_programs: int | None = None):
    """Sigmoid scores, top-k of score + bias, weights renormalised and scaled; optional shared
    expert appended as the last slot with weight 1."""
    scores = torch.sigmoid(logits.float())
    top = torch.topk(scores + bias.float(), topk, -1).indices
    w = scores.gather(1, top)
    w = w / w.sum(-1, keepdim=True) * scale
    if shared_expert_id >= 0:
        top = torch.cat((top, torch.full_like(top[:, :1], shared_expert_id)), 1)
        w = torch.cat((w, torch.ones_like(w[:, :1])), 1)
    ids.copy_(top)
    weights.copy_(w)


def fused_moe(*, x, ids, weights, w13, w13_scale, w2, w2_scale, out, max_programs: int | None = None):
    """Sum over a token's experts of weight * down(silu(gate) * up), FP8 1x128 activations into
    both GEMMs, only the experts some token selected are touched."""
    xq = dequant_groups(*quant_groups(x))
    acc = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    inter = w2.shape[-1]
    for e in torch.unique(ids).tolist():
        tok, slot = torch.nonzero(ids == e, as_tuple=True)
        gu = xq[tok] @ dequant_blocks(w13[e], w13_scale[e]).t()
        act = F.silu(gu[:, :inter]) * gu[:, inter:]
        y = dequant_groups(*quant_groups(act)) @ dequant_blocks(w2[e], w2_scale[e]).t()
        acc.index_add_(0, tok, y * weights[tok, slot].float()[:, None])
    out.copy_(acc)


def silu_mul(*, x, out, max_programs: int | None = None):
    half = x.shape[-1] // 2
    out.copy_(F.silu(x[:, :half].float()) * x[:, half:].float())


def add(*, a, b, out, max_programs: int | None = None):
    out.copy_(a.float() + b.float())


def allreduce(*, x, out):
    """One rank on its own: the sum over a group of one is the rank's own partial."""
    out.copy_(x)


OPS = {name: fn for name, fn in globals().items()
       if callable(fn) and not name.startswith("_") and fn.__module__ == __name__}
