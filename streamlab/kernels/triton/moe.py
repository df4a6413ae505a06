"""MoE routing and the fused FP8 expert computation in Triton.

`fused_moe` reads only the weights of the experts some token picked, without asking the host
which ones: an align kernel groups the (token, slot) pairs by expert on the device into blocks
of BLOCK_M rows (a padded, expert-sorted pair list of fixed maximum size) and the two GEMMs run
on a fixed grid over every possible block, whose programs return at once when their block is
empty. Both GEMMs quantise their activation rows per 1x128 group as they load them (the K step
is one group), so no separate quantisation kernel runs; the down GEMM writes one row per
(token, slot) and a last kernel sums each token's rows in slot order, which is deterministic.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from streamlab.kernels.quant import FP8_MAX, GROUP
from streamlab.kernels.triton.common import INTERPRET, dot_operand, exact_cast

BLOCK_M = 16  # pairs per block: the smallest tl.dot tile; decode gives few tokens per expert
BLOCK_N_GATE_UP = 64  # gate and up columns per program (each of the two)
BLOCK_N_DOWN = 128
BLOCK_SUM = 1024


# -- routing -------------------------------------------------------------------------------
@triton.jit
def _biased_topk_kernel(logits_ptr, bias_ptr, ids_ptr, weights_ptr, stride_lt, stride_le,
                        stride_it, stride_is, stride_wt, stride_ws, experts, scale, shared_id,
                        TOPK: tl.constexpr, HAS_SHARED: tl.constexpr, BLOCK_E: tl.constexpr):
    """One token: TOPK rounds of argmax over score + bias, in descending order like torch.topk."""
    t = tl.program_id(0)
    e = tl.arange(0, BLOCK_E)
    e_ok = e < experts
    score = tl.sigmoid(tl.load(logits_ptr + t * stride_lt + e * stride_le, mask=e_ok,
                               other=0.0).to(tl.float32))
    biased = tl.where(e_ok, score + tl.load(bias_ptr + e, mask=e_ok, other=0.0), float("-inf"))
    rank = tl.full([BLOCK_E], -1, tl.int32)
    for i in tl.static_range(TOPK):
        best = tl.argmax(biased, 0)
        rank = tl.where(e == best, i, rank)
        biased = tl.where(e == best, float("-inf"), biased)
    chosen = rank >= 0
    total = tl.sum(tl.where(chosen, score, 0.0), 0)
    tl.store(ids_ptr + t * stride_it + rank * stride_is, e, mask=chosen)
    tl.store(weights_ptr + t * stride_wt + rank * stride_ws, score / total * scale, mask=chosen)
    if HAS_SHARED:
        tl.store(ids_ptr + t * stride_it + TOPK * stride_is, shared_id)
        tl.store(weights_ptr + t * stride_wt + TOPK * stride_ws, 1.0)


def biased_topk(*, logits, bias, ids, weights, topk, scale, shared_expert_id):
    """Sigmoid scores, top-k of score + bias, renormalised * scale, shared expert last."""
    tokens, experts = logits.shape
    _biased_topk_kernel[(tokens,)](
        logits, bias, ids, weights, *logits.stride(), *ids.stride(), *weights.stride(), experts,
        scale, shared_expert_id, TOPK=topk, HAS_SHARED=shared_expert_id >= 0,
        BLOCK_E=triton.next_power_of_2(experts), num_warps=4)


# -- fused experts -------------------------------------------------------------------------
@triton.jit
def _moe_align_kernel(ids_ptr, stride_it, stride_is, sorted_ptr, block_expert_ptr,
                      block_rows_ptr, pairs, experts, max_blocks, SLOTS: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_E: tl.constexpr):
    """Single program: group pair indices (token * SLOTS + slot) by expert.

    Expert e owns blocks [block_start[e], block_start[e] + ceil(count[e] / BLOCK_M)) and its
    pairs fill the first count[e] rows of them, in pair order. Writes the pair of every filled
    row, and per block its expert (-1 past the last one) and number of filled rows. Ids outside
    [0, experts) go to a trash bin (BLOCK_E > experts) and are dropped.
    """
    p = tl.arange(0, BLOCK_P)
    e = tl.load(ids_ptr + (p // SLOTS) * stride_it + (p % SLOTS) * stride_is, mask=p < pairs,
                other=-1)
    e = tl.where((e >= 0) & (e < experts), e, BLOCK_E - 1)
    bins = tl.arange(0, BLOCK_E)
    count = tl.where(bins < experts, tl.histogram(e, BLOCK_E), 0)
    blocks = tl.cdiv(count, BLOCK_M)
    block_start = tl.cumsum(blocks, 0) - blocks
    pair_start = tl.cumsum(count, 0) - count

    # sorted by (expert, pair): a pair's sorted position minus its expert's first sorted
    # position is its row inside the expert's blocks
    key = tl.sort(e * BLOCK_P + p)
    se = key // BLOCK_P
    row = tl.gather(block_start, se, 0) * BLOCK_M + p - tl.gather(pair_start, se, 0)
    tl.store(sorted_ptr + row, key % BLOCK_P, mask=se < experts)

    for j in range(0, tl.max(blocks, 0)):
        owned = j < blocks
        tl.store(block_expert_ptr + block_start + j, bins, mask=owned)
        tl.store(block_rows_ptr + block_start + j, tl.minimum(count - j * BLOCK_M, BLOCK_M),
                 mask=owned)
    used = tl.sum(blocks, 0)
    for b0 in range(0, max_blocks, BLOCK_E):  # `bins` doubles as a chunk of block indices
        b = b0 + bins
        tl.store(block_expert_ptr + b, -1, mask=(b >= used) & (b < max_blocks))


@triton.jit
def _block_pairs(sorted_ptr, block_rows_ptr, BLOCK_M: tl.constexpr):
    """(row offsets, row mask, pair per row) of this program's (non-empty) block."""
    b = tl.program_id(0)
    rows = b * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = tl.arange(0, BLOCK_M) < tl.load(block_rows_ptr + b)
    pair = tl.load(sorted_ptr + rows, mask=row_ok, other=0)
    return rows, row_ok, pair


@triton.jit
def _quant_fp8(x, FP8_MAX: tl.constexpr, INTERPRET: tl.constexpr):
    """Rows of one 1x128 group -> (fp8 dot operand, fp32 scale per row), as quant_groups."""
    x = x.to(tl.float32)
    scale = tl.maximum(tl.max(tl.abs(x), 1), 1e-4) / FP8_MAX
    q = exact_cast(x / scale[:, None], tl.float8e4nv, INTERPRET)
    return dot_operand(q, tl.float8e4nv, INTERPRET), scale


@triton.jit
def _fp8_step(a, a_scale, w_ptrs, w_scale_ptrs, n_ok, INTERPRET: tl.constexpr):
    """One group-wide K step of a block-scaled FP8 GEMM: (a @ w^T) * row scale * column scale.

    The product is scaled in fp32 every step (as DeepGEMM promotes), so the fp8 MMA only ever
    accumulates one group."""
    w = dot_operand(tl.load(w_ptrs, mask=n_ok[:, None], other=0.0), tl.float8e4nv, INTERPRET)
    w_scale = tl.load(w_scale_ptrs, mask=n_ok, other=0.0)
    return tl.dot(a, tl.trans(w)) * a_scale[:, None] * w_scale[None, :]


@triton.jit
def _gate_up_kernel(x_ptr, sorted_ptr, block_expert_ptr, block_rows_ptr, w_ptr, ws_ptr, act_ptr,
                    stride_xt, stride_xh, stride_we, stride_wn, stride_wk, stride_se, stride_sn,
                    stride_sk, hidden, inter, SLOTS: tl.constexpr, BLOCK_M: tl.constexpr,
                    BLOCK_N: tl.constexpr, GROUP: tl.constexpr, FP8_MAX: tl.constexpr,
                    INTERPRET: tl.constexpr):
    """act[row, n] = silu(gate) * up in fp32 with [gate | up] = quant(x[token]) @ w13[e]^T, for
    BLOCK_N gate columns and the matching up columns (so the activation fuses in)."""
    expert = tl.load(block_expert_ptr + tl.program_id(0)).to(tl.int64)
    if expert < 0:
        return
    rows, row_ok, pair = _block_pairs(sorted_ptr, block_rows_ptr, BLOCK_M)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < inter
    k = tl.arange(0, GROUP)
    x_rows = x_ptr + (pair // SLOTS)[:, None] * stride_xt
    w_gate = w_ptr + expert * stride_we + n[:, None] * stride_wn
    w_up = w_gate + inter * stride_wn
    s_gate = ws_ptr + expert * stride_se + (n // GROUP) * stride_sn
    s_up = ws_ptr + expert * stride_se + ((inter + n) // GROUP) * stride_sn
    gate = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    up = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, hidden, GROUP):
        a, xs = _quant_fp8(tl.load(x_rows + (k0 + k)[None, :] * stride_xh,
                                   mask=row_ok[:, None], other=0.0), FP8_MAX, INTERPRET)
        kk = (k0 + k)[None, :] * stride_wk
        kb = (k0 // GROUP) * stride_sk
        gate += _fp8_step(a, xs, w_gate + kk, s_gate + kb, n_ok, INTERPRET)
        up += _fp8_step(a, xs, w_up + kk, s_up + kb, n_ok, INTERPRET)
    act = gate * tl.sigmoid(gate) * up
    tl.store(act_ptr + rows[:, None].to(tl.int64) * inter + n[None, :], act,
             mask=row_ok[:, None] & n_ok[None, :])


@triton.jit
def _down_kernel(act_ptr, sorted_ptr, block_expert_ptr, block_rows_ptr, w_ptr, ws_ptr,
                 weights_ptr, y_ptr, stride_we, stride_wn, stride_wk, stride_se, stride_sn,
                 stride_sk, stride_rt, stride_rs, hidden, inter, SLOTS: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP: tl.constexpr,
                 FP8_MAX: tl.constexpr, INTERPRET: tl.constexpr):
    """y[pair, n] = routing weight * (quant(act[row]) @ w2[e]^T)[n] for BLOCK_N columns."""
    expert = tl.load(block_expert_ptr + tl.program_id(0)).to(tl.int64)
    if expert < 0:
        return
    rows, row_ok, pair = _block_pairs(sorted_ptr, block_rows_ptr, BLOCK_M)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < hidden
    k = tl.arange(0, GROUP)
    a_rows = act_ptr + rows[:, None].to(tl.int64) * inter
    w_rows = w_ptr + expert * stride_we + n[:, None] * stride_wn
    s_rows = ws_ptr + expert * stride_se + (n // GROUP) * stride_sn
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, inter, GROUP):
        a, a_scale = _quant_fp8(tl.load(a_rows + (k0 + k)[None, :], mask=row_ok[:, None],
                                        other=0.0), FP8_MAX, INTERPRET)
        acc += _fp8_step(a, a_scale, w_rows + (k0 + k)[None, :] * stride_wk,
                         s_rows + (k0 // GROUP) * stride_sk, n_ok, INTERPRET)
    route = tl.load(weights_ptr + (pair // SLOTS) * stride_rt + (pair % SLOTS) * stride_rs,
                    mask=row_ok, other=0.0)
    tl.store(y_ptr + pair[:, None].to(tl.int64) * hidden + n[None, :], acc * route[:, None],
             mask=row_ok[:, None] & n_ok[None, :])


@triton.jit
def _slot_sum_kernel(y_ptr, ids_ptr, stride_it, stride_is, out_ptr, stride_ot, stride_oh, hidden,
                     experts, SLOTS: tl.constexpr, BLOCK: tl.constexpr):
    """out[t] = sum over slots, in slot order, of the rows y[t * SLOTS + slot] of real experts."""
    t = tl.program_id(0)
    n = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], tl.float32)
    for s in tl.static_range(SLOTS):
        e = tl.load(ids_ptr + t * stride_it + s * stride_is)
        # an unused slot masks all its columns (a column limit, not a scalar & vector mask,
        # which the interpreter mistypes)
        limit = tl.where((e >= 0) & (e < experts), hidden, 0)
        acc += tl.load(y_ptr + (t * SLOTS + s).to(tl.int64) * hidden + n, mask=n < limit,
                       other=0.0)
    tl.store(out_ptr + t * stride_ot + n * stride_oh, acc.to(out_ptr.dtype.element_ty),
             mask=n < hidden)


_WORKSPACES: dict[tuple, tuple[torch.Tensor, ...]] = {}


def _workspace(device: torch.device, pairs: int, max_blocks: int, inter: int, hidden: int):
    """(sorted pairs, block expert, block rows, act, y); allocated on the eager warm-up call,
    reused when captured."""
    key = (device, pairs, max_blocks, inter, hidden)
    if key not in _WORKSPACES:
        rows = max_blocks * BLOCK_M
        i32 = dict(dtype=torch.int32, device=device)
        _WORKSPACES[key] = (torch.empty(rows, **i32), torch.empty(max_blocks, **i32),
                            torch.empty(max_blocks, **i32),
                            torch.empty(rows, inter, device=device),
                            torch.empty(pairs, hidden, device=device))
    return _WORKSPACES[key]


def fused_moe(*, x, ids, weights, w13, w13_scale, w2, w2_scale, out):
    """out [T, H] = sum over slots of weight * down(silu(gate) * up), FP8 1x128 activations."""
    tokens, hidden = x.shape
    slots = ids.shape[1]
    experts, hidden_w, inter = w2.shape
    if hidden % GROUP or inter % GROUP or hidden_w != hidden or w13.shape[1] != 2 * inter:
        raise ValueError(f"fused_moe shapes: x {tuple(x.shape)}, w13 {tuple(w13.shape)}, "
                         f"w2 {tuple(w2.shape)} (hidden and inter must be multiples of {GROUP})")
    pairs = tokens * slots
    # each expert with pairs wastes under one block of padding, and at most `pairs` have any
    max_blocks = triton.cdiv(pairs, BLOCK_M) + min(experts, pairs)
    sorted_pairs, block_expert, block_rows, act, y = _workspace(x.device, pairs, max_blocks,
                                                                inter, hidden)
    _moe_align_kernel[(1,)](
        ids, *ids.stride(), sorted_pairs, block_expert, block_rows, pairs, experts, max_blocks,
        SLOTS=slots, BLOCK_M=BLOCK_M, BLOCK_P=triton.next_power_of_2(pairs),
        BLOCK_E=triton.next_power_of_2(experts + 1), num_warps=8)
    quant = dict(SLOTS=slots, BLOCK_M=BLOCK_M, GROUP=GROUP, FP8_MAX=FP8_MAX, INTERPRET=INTERPRET)
    _gate_up_kernel[(max_blocks, triton.cdiv(inter, BLOCK_N_GATE_UP))](
        x, sorted_pairs, block_expert, block_rows, w13, w13_scale, act, *x.stride(),
        *w13.stride(), *w13_scale.stride(), hidden, inter, BLOCK_N=BLOCK_N_GATE_UP, **quant,
        num_warps=4, num_stages=3)
    _down_kernel[(max_blocks, triton.cdiv(hidden, BLOCK_N_DOWN))](
        act, sorted_pairs, block_expert, block_rows, w2, w2_scale, weights, y, *w2.stride(),
        *w2_scale.stride(), *weights.stride(), hidden, inter, BLOCK_N=BLOCK_N_DOWN, **quant,
        num_warps=4, num_stages=2)
    _slot_sum_kernel[(tokens, triton.cdiv(hidden, BLOCK_SUM))](
        y, ids, *ids.stride(), out, *out.stride(), hidden, experts, SLOTS=slots, BLOCK=BLOCK_SUM,
        num_warps=4)


OPS = {"biased_topk": biased_topk, "fused_moe": fused_moe}
