"""Sparse MLA decode in Triton: flash-decoding over the indexer's top-k cache slots.

A decode step has few tokens but thousands of selected slots each, so one program per token
would leave most of the GPU idle. The slots of a token are split across programs; each program
attends all heads of its token over its share of slots (every gathered KV row is read once and
used by all heads), leaving a partial (max, sum, unnormalised output) in an fp32 workspace, and a
second kernel merges the partials. The number of splits depends only on the shapes and the
device, so the workspace is fixed and the pair of launches captures into a graph.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from streamlab.kernels.triton.common import INTERPRET, dot_operand

LOG2E = 1.4426950408889634
# Slots per inner step. Small in the interpreter so CPU tests at topk 64 cover several splits
# and several steps per split.
BLOCK_N = 16 if INTERPRET else 64
NUM_WARPS = 8
NUM_STAGES = 2  # a stage holds BLOCK_N gathered rows: keeps shared memory within MI355X's LDS
INTERPRETER_PROGRAMS = 8  # stands in for the SM count when running on the CPU


@triton.jit
def _mla_split_kernel(q_ptr, kv_ptr, slots_ptr, kv_scale_ptr, m_ptr, l_ptr, acc_ptr,
                      stride_qt, stride_qh, stride_qd, stride_kvn, stride_kvd, stride_st,
                      stride_sk, heads, topk, d_v, d_qk, chunk, num_splits, qk_scale,
                      BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr,
                      BLOCK_V: tl.constexpr, BLOCK_R: tl.constexpr, INTERPRET: tl.constexpr):
    """One (token, split): online softmax of all heads over slots [split*chunk, +chunk).

    Scores are kept in log2 units (qk_scale folds softmax_scale * log2(e)); kv_scale is a single
    factor, so it is applied to the scores and to the partial output rather than to each row.
    """
    t = tl.program_id(0)
    split = tl.program_id(1)
    h = tl.arange(0, BLOCK_H)
    dv = tl.arange(0, BLOCK_V)
    dr = d_v + tl.arange(0, BLOCK_R)  # the rope dims after the value dims
    h_ok = h < heads
    v_ok = dv < d_v
    r_ok = dr < d_qk
    q_rows = q_ptr + t * stride_qt + h[:, None] * stride_qh
    q_v = tl.load(q_rows + dv[None, :] * stride_qd, mask=h_ok[:, None] & v_ok[None, :], other=0.0)
    q_r = tl.load(q_rows + dr[None, :] * stride_qd, mask=h_ok[:, None] & r_ok[None, :], other=0.0)
    q_v = dot_operand(q_v, tl.bfloat16, INTERPRET)
    q_r = dot_operand(q_r, tl.bfloat16, INTERPRET)
    kv_scale = tl.load(kv_scale_ptr)
    scale = qk_scale * kv_scale

    m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_V], tl.float32)
    start = split * chunk
    end = tl.minimum(start + chunk, topk)
    for n0 in range(start, end, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        slot = tl.load(slots_ptr + t * stride_st + n * stride_sk, mask=n < end, other=-1)
        valid = slot >= 0
        rows = kv_ptr + slot.to(tl.int64)[:, None] * stride_kvn
        kv_v = tl.load(rows + dv[None, :] * stride_kvd, mask=valid[:, None] & v_ok[None, :],
                       other=0.0)
        kv_r = tl.load(rows + dr[None, :] * stride_kvd, mask=valid[:, None] & r_ok[None, :],
                       other=0.0)
        kv_v = dot_operand(kv_v, tl.bfloat16, INTERPRET)  # fp8 e4m3 -> bf16 is exact
        kv_r = dot_operand(kv_r, tl.bfloat16, INTERPRET)
        s = tl.dot(q_v, tl.trans(kv_v)) + tl.dot(q_r, tl.trans(kv_r))
        s = tl.where(valid[None, :], s * scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # no valid slot yet: no NaN
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(dot_operand(p, tl.bfloat16, INTERPRET), kv_v)
        m_i = m_new

    part = (t * num_splits + split) * heads + h
    tl.store(m_ptr + part, m_i, mask=h_ok)
    tl.store(l_ptr + part, l_i, mask=h_ok)
    tl.store(acc_ptr + part[:, None] * d_v + dv[None, :], acc * kv_scale,
             mask=h_ok[:, None] & v_ok[None, :])


@triton.jit
def _mla_combine_kernel(m_ptr, l_ptr, acc_ptr, out_ptr, stride_ot, stride_oh, stride_od, heads,
                        d_v, num_splits, BLOCK_S: tl.constexpr,
                        BLOCK_V: tl.constexpr):
    """One (token, head): rescale the split partials to their common max and normalise."""
    t = tl.program_id(0)
    h = tl.program_id(1)
    sp = tl.arange(0, BLOCK_S)
    dv = tl.arange(0, BLOCK_V)
    v_ok = dv < d_v
    parts = (t * num_splits + sp) * heads + h
    m = tl.load(m_ptr + parts, mask=sp < num_splits, other=float("-inf"))
    m_max = tl.max(m, 0)
    m_max = tl.where(m_max == float("-inf"), 0.0, m_max)
    w = tl.exp2(m - m_max)
    total = tl.sum(w * tl.load(l_ptr + parts, mask=sp < num_splits, other=0.0), 0)
    acc = tl.zeros([BLOCK_V], tl.float32)
    for s in range(num_splits):
        part = (t * num_splits + s) * heads + h
        w_s = tl.exp2(tl.load(m_ptr + part) - m_max)
        acc += w_s * tl.load(acc_ptr + part * d_v + dv, mask=v_ok, other=0.0)
    # total >= 1 if any slot is valid (the largest score contributes exp2(0)); with none,
    # acc is 0 and so is the output
    out = acc / tl.maximum(total, 1.0)
    tl.store(out_ptr + t * stride_ot + h * stride_oh + dv * stride_od,
             out.to(out_ptr.dtype.element_ty), mask=v_ok)


def _programs(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return INTERPRETER_PROGRAMS


_WORKSPACES: dict[tuple, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}


def _workspace(device: torch.device, tokens: int, splits: int, heads: int, d_v: int):
    """(max, sum, output) partials; allocated on the eager warm-up call, reused when captured."""
    key = (device, tokens, splits, heads, d_v)
    if key not in _WORKSPACES:
        n = tokens * splits * heads
        _WORKSPACES[key] = (torch.empty(n, device=device), torch.empty(n, device=device),
                            torch.empty(n * d_v, device=device))
    return _WORKSPACES[key]


def sparse_mla_decode(*, q, kv_cache, topk_slots, kv_scale, out, softmax_scale):
    """q [T, h, 576] over kv_cache rows topk_slots [T, K] (-1 = none) -> out [T, h, 512]."""
    tokens, heads, d_qk = q.shape
    d_v = out.shape[-1]
    topk = topk_slots.shape[1]
    if kv_cache.shape[-1] != d_qk or d_v > d_qk:
        raise ValueError(f"q dim {d_qk}, cache dim {kv_cache.shape[-1]}, value dim {d_v}")
    # Enough splits for about two programs per SM, never a split with less than one step.
    steps = triton.cdiv(topk, BLOCK_N)
    wanted = max(1, min(steps, triton.cdiv(2 * _programs(q.device), tokens)))
    chunk = triton.cdiv(steps, wanted) * BLOCK_N
    splits = triton.cdiv(topk, chunk)
    m_ws, l_ws, acc_ws = _workspace(q.device, tokens, splits, heads, d_v)
    block_v = triton.next_power_of_2(d_v)
    # tl.dot needs every tile dim >= 16: heads and rope dims are padded up with masks
    block_h = max(16, triton.next_power_of_2(heads))
    block_r = max(16, triton.next_power_of_2(d_qk - d_v))
    _mla_split_kernel[(tokens, splits)](
        q, kv_cache, topk_slots, kv_scale, m_ws, l_ws, acc_ws,
        *q.stride(), *kv_cache.stride(), *topk_slots.stride(), heads, topk, d_v, d_qk, chunk,
        splits, softmax_scale * LOG2E, BLOCK_H=block_h, BLOCK_N=BLOCK_N, BLOCK_V=block_v,
        BLOCK_R=block_r, INTERPRET=INTERPRET, num_warps=NUM_WARPS, num_stages=NUM_STAGES)
    _mla_combine_kernel[(tokens, heads)](
        m_ws, l_ws, acc_ws, out, *out.stride(), heads, d_v, splits,
        BLOCK_S=triton.next_power_of_2(splits), BLOCK_V=block_v, num_warps=4)


OPS = {"sparse_mla_decode": sparse_mla_decode}
