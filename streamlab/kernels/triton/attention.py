"""Sparse MLA decode in Triton: flash-decoding over the indexer's top-k cache slots.

A decode step has few tokens but thousands of selected slots each, so one program per token
would leave most of the GPU idle. The slots of a token are split across programs (up to one
wave: at most one program per SM in all); each program attends all heads of its token over its
share of slots (every gathered KV row is read once and used by all heads) and leaves a partial
(max, sum, normalised output) in an fp32 workspace. A second kernel merges each token's
partials in split order (fixed, so the result is bitwise deterministic), one program per
(token, head, block of value dims): the merge is spread over the GPU. (Merging in the last
program of each token to arrive, in one launch, measured slower: one program cannot pull a
token's partials fast enough.) With one split the first kernel writes the output itself and
the second is not launched.

The products run on fp16 operands: fp8 e4m3 -> fp16 is one exact conversion per pair of values
(-> bf16 costs three), and fp16 keeps more bits of q and of the probabilities. q is scaled by a
power of two when its magnitude would not fit (undone exactly in the score scale). D_V and D_QK
are compile-time so that the row gathers vectorise. Programs with many blocks of slots issue the
next block's row loads, and the slot ids after it, before computing on the current block.

The number of splits depends only on the shapes and the device, so the workspace is fixed and
the launches capture into a graph.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from streamlab.kernels.triton.common import (INTERPRET, dot_operand, each_work_item, plan_grid,
                                             sm_count, workspace)

LOG2E = 1.4426950408889634
# Slots per inner step. Small in the interpreter so CPU tests at topk 64 cover several splits
# and several steps per split.
BLOCK_N = 16 if INTERPRET else 64
NUM_WARPS = 8
PROGRAMS_PER_SM = 1  # splits: up to one wave of programs in all
MAX_SPLITS = 32
INTERPRETER_PROGRAMS = 8  # stands in for the SM count when running on the CPU
COMBINE_D = 64  # value dims per merging program
PREFETCH_FROM_STEPS = 4  # more blocks than this per program: prefetch by hand (one stage)
# Measured on an H200 (bench/tune_indexer_attention.py): one block per program (batch <= 4,
# 32 splits) and four (batch 16): Triton's 2-stage pipeline; sixteen (batch 64): the prefetch.


@triton.jit
def _slot_ids(slots_ptr, t, n0, end, stride_st, stride_sk, BLOCK_N: tl.constexpr):
    n = n0 + tl.arange(0, BLOCK_N)
    return tl.load(slots_ptr + t * stride_st + n * stride_sk, mask=n < end, other=-1)


@triton.jit
def _gather_rows(kv_ptr, slot, stride_kvn, stride_kvd, D_V: tl.constexpr, D_QK: tl.constexpr,
                 BLOCK_V: tl.constexpr, BLOCK_R: tl.constexpr):
    """Value dims and rope dims of the cache rows `slot` (zeros for -1)."""
    dv = tl.arange(0, BLOCK_V)
    dr = D_V + tl.arange(0, BLOCK_R)  # the rope dims after the value dims
    valid = slot >= 0
    rows = kv_ptr + slot.to(tl.int64)[:, None] * stride_kvn
    kv_v = tl.load(rows + dv[None, :] * stride_kvd, mask=valid[:, None] & (dv < D_V)[None, :],
                   other=0.0)
    kv_r = tl.load(rows + dr[None, :] * stride_kvd, mask=valid[:, None] & (dr < D_QK)[None, :],
                   other=0.0)
    return kv_v, kv_r


@triton.jit
def _mla_split(pid, grid, q_ptr, kv_ptr, slots_ptr, kv_scale_ptr, out_ptr, ws_m, ws_l, ws_o,
               stride_qt, stride_qh, stride_qd, stride_kvn, stride_kvd, stride_st, stride_sk,
               stride_ot, stride_oh, stride_od, heads, topk, chunk, num_splits, qk_scale,
               D_V: tl.constexpr, D_QK: tl.constexpr, BLOCK_H: tl.constexpr,
               BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_R: tl.constexpr,
               SPLIT: tl.constexpr, PREFETCH: tl.constexpr, INTERPRET: tl.constexpr):
    """One (token, split) of the work grid: online softmax of all heads over slots
    [split*chunk, +chunk).

    Scores are kept in log2 units (qk_scale folds softmax_scale * log2(e)); kv_scale is a single
    factor, so it is applied to the scores and to the output rather than to each row.
    """
    t = pid[0]
    split = pid[1]
    h = tl.arange(0, BLOCK_H)
    dv = tl.arange(0, BLOCK_V)
    dr = D_V + tl.arange(0, BLOCK_R)
    h_ok = h < heads
    v_ok = dv < D_V
    q_rows = q_ptr + t * stride_qt + h[:, None] * stride_qh
    q_v = tl.load(q_rows + dv[None, :] * stride_qd, mask=h_ok[:, None] & v_ok[None, :],
                  other=0.0).to(tl.float32)
    q_r = tl.load(q_rows + dr[None, :] * stride_qd, mask=h_ok[:, None] & (dr < D_QK)[None, :],
                  other=0.0).to(tl.float32)
    kv_scale = tl.load(kv_scale_ptr)
    # fp16 operands: q scaled down by 2^shift (exact) so that |q| < 2^15, undone in the scale
    amax = tl.maximum(tl.max(tl.max(tl.abs(q_v), 1), 0), tl.max(tl.max(tl.abs(q_r), 1), 0))
    shift = tl.maximum(((amax.to(tl.uint32, bitcast=True) >> 23) & 0xFF).to(tl.int32) - 141, 0)
    q_v = dot_operand(q_v * ((127 - shift) << 23).to(tl.float32, bitcast=True), tl.float16,
                      INTERPRET)
    q_r = dot_operand(q_r * ((127 - shift) << 23).to(tl.float32, bitcast=True), tl.float16,
                      INTERPRET)
    scale = qk_scale * kv_scale * ((127 + shift) << 23).to(tl.float32, bitcast=True)

    m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_V], tl.float32)
    start = split * chunk
    end = tl.minimum(start + chunk, topk)
    slot = _slot_ids(slots_ptr, t, start, end, stride_st, stride_sk, BLOCK_N)
    if PREFETCH:
        slot_next = _slot_ids(slots_ptr, t, start + BLOCK_N, end, stride_st, stride_sk, BLOCK_N)
        kv_v, kv_r = _gather_rows(kv_ptr, slot, stride_kvn, stride_kvd, D_V, D_QK, BLOCK_V,
                                  BLOCK_R)
    for n0 in range(start, end, BLOCK_N):
        if PREFETCH:  # the next block's rows and the slot ids after it are in flight meanwhile
            kv_v_next, kv_r_next = _gather_rows(kv_ptr, slot_next, stride_kvn, stride_kvd, D_V,
                                                D_QK, BLOCK_V, BLOCK_R)
            slot_after = _slot_ids(slots_ptr, t, n0 + 2 * BLOCK_N, end, stride_st, stride_sk,
                                   BLOCK_N)
        else:
            slot = _slot_ids(slots_ptr, t, n0, end, stride_st, stride_sk, BLOCK_N)
            kv_v, kv_r = _gather_rows(kv_ptr, slot, stride_kvn, stride_kvd, D_V, D_QK, BLOCK_V,
                                      BLOCK_R)
        valid = slot >= 0
        kv_v = dot_operand(kv_v, tl.float16, INTERPRET)  # fp8 e4m3 -> fp16 is exact
        kv_r = dot_operand(kv_r, tl.float16, INTERPRET)
        s = tl.dot(q_v, tl.trans(kv_v)) + tl.dot(q_r, tl.trans(kv_r))
        s = tl.where(valid[None, :], s * scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # no valid slot yet: no NaN
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(dot_operand(p, tl.float16, INTERPRET), kv_v)
        m_i = m_new
        if PREFETCH:
            slot = slot_next
            slot_next = slot_after
            kv_v = kv_v_next
            kv_r = kv_r_next

    # l_i >= 1 if any slot is valid (the largest score contributes exp2(0)); with none, acc is
    # 0 and so is the output
    o = acc * (kv_scale / tl.maximum(l_i, 1.0))[:, None]
    ok = h_ok[:, None] & v_ok[None, :]
    if SPLIT:
        part = (t * num_splits + split) * heads + h
        tl.store(ws_m + part, m_i, mask=h_ok)
        tl.store(ws_l + part, l_i, mask=h_ok)
        tl.store(ws_o + part[:, None].to(tl.int64) * D_V + dv[None, :], o, mask=ok)
    else:
        tl.store(out_ptr + t * stride_ot + h[:, None] * stride_oh + dv[None, :] * stride_od,
                 o.to(out_ptr.dtype.element_ty), mask=ok)


@triton.jit(do_not_specialize=["work0", "work1", "work2"])
def _mla_split_kernel(q_ptr, kv_ptr, slots_ptr, kv_scale_ptr, out_ptr, ws_m, ws_l, ws_o,
                      stride_qt, stride_qh, stride_qd, stride_kvn, stride_kvd, stride_st,
                      stride_sk, stride_ot, stride_oh, stride_od, heads, topk, chunk, num_splits,
                      qk_scale, work0, work1, work2, PERSISTENT: tl.constexpr, D_V: tl.constexpr,
                      D_QK: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr,
                      BLOCK_V: tl.constexpr, BLOCK_R: tl.constexpr, SPLIT: tl.constexpr,
                      PREFETCH: tl.constexpr, INTERPRET: tl.constexpr):
    each_work_item(_mla_split,
                   (q_ptr, kv_ptr, slots_ptr, kv_scale_ptr, out_ptr, ws_m, ws_l, ws_o, stride_qt,
                    stride_qh, stride_qd, stride_kvn, stride_kvd, stride_st, stride_sk, stride_ot,
                    stride_oh, stride_od, heads, topk, chunk, num_splits, qk_scale, D_V, D_QK,
                    BLOCK_H, BLOCK_N, BLOCK_V, BLOCK_R, SPLIT, PREFETCH, INTERPRET),
                   work0, work1, work2, PERSISTENT)


@triton.jit
def _mla_combine(pid, grid, ws_m, ws_l, ws_o, out_ptr, stride_ot, stride_oh, stride_od, heads,
                 num_splits, D_V: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    """One (token, head, block of value dims): rescale the split partials to their common max,
    weight them by their sums and add them in split order. A token with no valid slot at all
    gets zeros."""
    t = pid[0]
    h = pid[1]
    d = pid[2] * BLOCK_D + tl.arange(0, BLOCK_D)
    s = tl.arange(0, BLOCK_S)
    s_ok = s < num_splits
    part = (t * num_splits + s) * heads + h
    m = tl.load(ws_m + part, mask=s_ok, other=float("-inf"))
    w = tl.load(ws_l + part, mask=s_ok, other=0.0)
    o = tl.load(ws_o + part[:, None].to(tl.int64) * D_V + d[None, :],
                mask=s_ok[:, None] & (d < D_V)[None, :], other=0.0)
    m_max = tl.max(m, 0)
    w = tl.exp2(m - tl.where(m_max == float("-inf"), 0.0, m_max)) * w  # shares of the sum
    # the split holding the max contributes >= 1 when any slot is valid; with none, w is 0
    w = w / tl.maximum(tl.sum(w, 0), 1.0)
    res = tl.sum(w[:, None] * o, 0)
    tl.store(out_ptr + t * stride_ot + h * stride_oh + d * stride_od,
             res.to(out_ptr.dtype.element_ty), mask=d < D_V)


@triton.jit(do_not_specialize=["work0", "work1", "work2"])
def _mla_combine_kernel(ws_m, ws_l, ws_o, out_ptr, stride_ot, stride_oh, stride_od, heads,
                        num_splits, work0, work1, work2, PERSISTENT: tl.constexpr,
                        D_V: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    each_work_item(_mla_combine, (ws_m, ws_l, ws_o, out_ptr, stride_ot, stride_oh, stride_od,
                                  heads, num_splits, D_V, BLOCK_S, BLOCK_D),
                   work0, work1, work2, PERSISTENT)


def num_splits(tokens: int, topk: int, device: torch.device, *, block_n: int = BLOCK_N,
               programs_per_sm: float = PROGRAMS_PER_SM, max_splits: int = MAX_SPLITS) -> tuple:
    """(splits, slots per split) of each token: at most `programs_per_sm` programs per SM in all
    (one wave: a second, partial one costs as much as the first), at most `max_splits`, never a
    split with less than one step."""
    steps = triton.cdiv(topk, block_n)
    target = max(1, int(programs_per_sm * sm_count(device, off_gpu=INTERPRETER_PROGRAMS)))
    wanted = max(1, min(steps, max_splits, target // tokens))
    chunk = triton.cdiv(steps, wanted) * block_n
    return triton.cdiv(topk, chunk), chunk


def _mla_launch(q, kv_cache, topk_slots, kv_scale, out, softmax_scale, *, block_n=BLOCK_N,
                num_warps=NUM_WARPS, num_stages=None, programs_per_sm=PROGRAMS_PER_SM,
                max_splits=MAX_SPLITS, prefetch=None, combine_d=COMBINE_D,
                max_programs: int | None = None):
    tokens, heads, d_qk = q.shape
    d_v = out.shape[-1]
    topk = topk_slots.shape[1]
    if kv_cache.shape[-1] != d_qk or d_v > d_qk:
        raise ValueError(f"q dim {d_qk}, cache dim {kv_cache.shape[-1]}, value dim {d_v}")
    splits, chunk = num_splits(tokens, topk, q.device, block_n=block_n,
                               programs_per_sm=programs_per_sm, max_splits=max_splits)
    if prefetch is None:  # prefetching pays off once a program has several blocks
        prefetch = chunk // block_n > PREFETCH_FROM_STEPS
    if num_stages is None:
        num_stages = 1 if prefetch else 2
    if splits > 1:  # keyed by the output: nodes on concurrent streams never share them
        key = ("mla_decode", out.data_ptr(), tuple(out.shape))
        n = tokens * splits * heads
        m_ws = workspace(key + ("max",), (n,), torch.float32, q.device)
        l_ws = workspace(key + ("sum",), (n,), torch.float32, q.device)
        o_ws = workspace(key + ("out",), (n * d_v,), torch.float32, q.device)
    else:
        m_ws = l_ws = o_ws = out  # not touched
    block_v = triton.next_power_of_2(d_v)
    # tl.dot needs every tile dim >= 16: heads and rope dims are padded up with masks
    block_h = max(16, triton.next_power_of_2(heads))
    block_r = max(16, triton.next_power_of_2(d_qk - d_v))
    plan = plan_grid((tokens, splits), max_programs)
    _mla_split_kernel[plan.grid](
        q, kv_cache, topk_slots, kv_scale, out, m_ws, l_ws, o_ws,
        *q.stride(), *kv_cache.stride(), *topk_slots.stride(), *out.stride(), heads, topk, chunk,
        splits, softmax_scale * LOG2E, **plan.args, D_V=d_v, D_QK=d_qk, BLOCK_H=block_h, BLOCK_N=block_n,
        BLOCK_V=block_v, BLOCK_R=block_r, SPLIT=splits > 1, PREFETCH=prefetch,
        INTERPRET=INTERPRET, num_warps=num_warps, num_stages=num_stages)
    if splits > 1:
        block_d = min(block_v, combine_d)
        plan = plan_grid((tokens, heads, triton.cdiv(d_v, block_d)), max_programs)
        _mla_combine_kernel[plan.grid](
            m_ws, l_ws, o_ws, out, *out.stride(), heads, splits, **plan.args, D_V=d_v,
            BLOCK_S=triton.next_power_of_2(splits), BLOCK_D=block_d, num_warps=4)


def sparse_mla_decode(*, q, kv_cache, topk_slots, kv_scale, out, softmax_scale,
                      max_programs: int | None = None):
    """q [T, h, 576] over kv_cache rows topk_slots [T, K] (-1 = none) -> out [T, h, 512]."""
    _mla_launch(q, kv_cache, topk_slots, kv_scale, out, softmax_scale, max_programs=max_programs)


OPS = {"sparse_mla_decode": sparse_mla_decode}
