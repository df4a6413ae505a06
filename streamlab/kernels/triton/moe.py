"""MoE routing and the fused FP8 expert computation in Triton.

`fused_moe` reads only the weights of the experts some token picked, without asking the host
which ones: an align kernel groups the (token, slot) pairs by expert on the device into blocks
of BLOCK_M rows (a padded, expert-sorted pair list of fixed maximum size) and the two GEMMs run
on a fixed grid over every possible block, whose programs return at once when their block is
empty. Both GEMMs quantise their activation rows per 1x128 group as they load them (the K step
is one group), so no separate quantisation kernel runs. Three launches in all:

- align;
- gate_up, which at small T also splits the hidden dim (6144) so that the ~33 active experts
  of T=4 still give a few programs per SM; the last split of each tile to arrive sums the
  partials in split order and applies silu(gate) * up (common.last_to_arrive);
- down, which writes one row per (token, slot); the last of its programs per column tile to
  arrive sums each token's rows in slot order into `out`.

Both reductions run in a fixed order, so results are bitwise the same on every call and graph
replay. Configurations come from a table measured on an H200 keyed by token count (`_TUNED`),
else a heuristic from the SM count.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from streamlab.kernels.quant import FP8_MAX, GROUP
from streamlab.kernels.triton.common import (INTERPRET, by_col, by_row, each_work_item,
                                             exact_cast, grid_size, last_to_arrive, plan_grid,
                                             sm_count, sum_partials, sum_unroll, tile_dot,
                                             workspace)

BLOCK_M = 16  # pairs per block: the smallest tl.dot tile; decode gives few tokens per expert


# -- routing -------------------------------------------------------------------------------
@triton.jit
def _biased_topk_token(pid, grid, logits_ptr, bias_ptr, ids_ptr, weights_ptr, stride_lt,
                       stride_le, stride_it, stride_is, stride_wt, stride_ws, experts, scale,
                       shared_id, TOPK: tl.constexpr, HAS_SHARED: tl.constexpr,
                       BLOCK_E: tl.constexpr):
    """One token: TOPK rounds of argmax over score + bias, in descending order like torch.topk."""
    t = pid[0]
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


@triton.jit(do_not_specialize=["work0", "work1", "work2"])
def _biased_topk_kernel(logits_ptr, bias_ptr, ids_ptr, weights_ptr, stride_lt, stride_le,
                        stride_it, stride_is, stride_wt, stride_ws, experts, scale, shared_id,
                        work0, work1, work2, PERSISTENT: tl.constexpr, TOPK: tl.constexpr,
                        HAS_SHARED: tl.constexpr, BLOCK_E: tl.constexpr):
    each_work_item(_biased_topk_token,
                   (logits_ptr, bias_ptr, ids_ptr, weights_ptr, stride_lt, stride_le, stride_it,
                    stride_is, stride_wt, stride_ws, experts, scale, shared_id, TOPK, HAS_SHARED,
                    BLOCK_E), work0, work1, work2, PERSISTENT)


def biased_topk(*, logits, bias, ids, weights, topk, scale, shared_expert_id,
                max_programs: int | None = None):
    """Sigmoid scores, top-k of score + bias, renormalised * scale, shared expert last."""
    tokens, experts = logits.shape
    plan = plan_grid((tokens,), max_programs)
    _biased_topk_kernel[plan.grid](
        logits, bias, ids, weights, *logits.stride(), *ids.stride(), *weights.stride(), experts,
        scale, shared_expert_id, **plan.args, TOPK=topk, HAS_SHARED=shared_expert_id >= 0,
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
def _block_pairs(b, sorted_ptr, block_rows_ptr, BLOCK_M: tl.constexpr):
    """(row offsets, row mask, pair per row) of (non-empty) block b."""
    rows = b * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = tl.arange(0, BLOCK_M) < tl.load(block_rows_ptr + b)
    pair = tl.load(sorted_ptr + rows, mask=row_ok, other=0)
    return rows, row_ok, pair


@triton.jit
def _quant_fp8(x, FP8_MAX: tl.constexpr, INTERPRET: tl.constexpr):
    """Rows of one 1x128 group -> (fp8 values, fp32 scale per row), as quant_groups."""
    x = x.to(tl.float32)
    scale = tl.maximum(tl.max(tl.abs(x), 1), 1e-4) / FP8_MAX
    return exact_cast(x / scale[:, None], tl.float8e4nv, INTERPRET), scale


@triton.jit
def _load_w(w_rows, kb, stride_wk, n_ok, GROUP: tl.constexpr):
    """Weight tile [BLOCK_N, GROUP] of K group kb."""
    k = kb * GROUP + tl.arange(0, GROUP)
    return tl.load(w_rows + k[None, :] * stride_wk, mask=n_ok[:, None], other=0.0)


@triton.jit
def _gate_up_tile(pid, grid, x_ptr, sorted_ptr, block_expert_ptr, block_rows_ptr, w_ptr, ws_ptr,
                  act_ptr, part_ptr, count_ptr, stride_xt, stride_xh, stride_we, stride_wn,
                  stride_wk, stride_se, stride_sn, stride_sk, hidden, inter, iters_per_split,
                  SLOTS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                  SPLIT: tl.constexpr, SWAP: tl.constexpr, SUM_UNROLL: tl.constexpr,
                  GROUP: tl.constexpr, FP8_MAX: tl.constexpr, INTERPRET: tl.constexpr):
    """act[row, n] = silu(gate) * up in fp32 with [gate | up] = quant(x[token]) @ w13[e]^T, for
    BLOCK_N gate columns and the matching up columns (so the activation fuses in).

    Work grid (block, column tile, K split); split s covers K groups [s, s + 1) * iters_per_split
    and an empty block (expert -1) does nothing. Each group's product is scaled in fp32 (as
    DeepGEMM promotes), so the fp8 MMA only ever accumulates one group. The next group's
    activations and scales load before this one's product (Triton's pipeliner keeps num_stages
    weight tiles in flight). SWAP computes the tiles transposed (common.tile_dot). With SPLIT,
    gate and up partials go to `part` [splits, rows, 2 * inter] and the last split of a (block,
    column tile) to arrive sums them in split order and applies the activation."""
    expert = tl.load(block_expert_ptr + pid[0]).to(tl.int64)
    if expert >= 0:
        rows, row_ok, pair = _block_pairs(pid[0], sorted_ptr, block_rows_ptr, BLOCK_M)
        n = pid[1] * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = n < inter
        k = tl.arange(0, GROUP)
        x_rows = x_ptr + (pair // SLOTS)[:, None] * stride_xt
        w_gate = w_ptr + expert * stride_we + n[:, None] * stride_wn
        w_up = w_gate + inter * stride_wn
        s_gate = ws_ptr + expert * stride_se + (n // GROUP) * stride_sn
        s_up = ws_ptr + expert * stride_se + ((inter + n) // GROUP) * stride_sn
        kb_start = pid[2] * iters_per_split
        kb_end = tl.minimum(kb_start + iters_per_split, hidden // GROUP)
        kb_last = kb_end - 1
        # padding rows load 1.0, not 0.0: an exact division of 0 takes the slow path (each row's
        # products depend on that row alone, and padding rows are never stored)
        x_next = tl.load(x_rows + (kb_start * GROUP + k)[None, :] * stride_xh, mask=row_ok[:, None],
                         other=1.0)
        sg_next = tl.load(s_gate + kb_start * stride_sk, mask=n_ok, other=0.0)
        su_next = tl.load(s_up + kb_start * stride_sk, mask=n_ok, other=0.0)
        if SWAP:
            gate = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)
            up = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)
        else:
            gate = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
            up = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        for kb in range(kb_start, kb_end):
            nxt = tl.minimum(kb + 1, kb_last)  # the last one loads itself again
            xv, sg, su = x_next, sg_next, su_next
            x_next = tl.load(x_rows + (nxt * GROUP + k)[None, :] * stride_xh, mask=row_ok[:, None],
                             other=1.0)
            sg_next = tl.load(s_gate + nxt * stride_sk, mask=n_ok, other=0.0)
            su_next = tl.load(s_up + nxt * stride_sk, mask=n_ok, other=0.0)
            wg = _load_w(w_gate, kb, stride_wk, n_ok, GROUP)
            wu = _load_w(w_up, kb, stride_wk, n_ok, GROUP)
            a, xs = _quant_fp8(xv, FP8_MAX, INTERPRET)
            gate += tile_dot(a, wg, SWAP, INTERPRET) * by_row(xs, SWAP) * by_col(sg, SWAP)
            up += tile_dot(a, wu, SWAP, INTERPRET) * by_row(xs, SWAP) * by_col(su, SWAP)
        mask = by_row(row_ok, SWAP) & by_col(n_ok, SWAP)
        act_ptrs = act_ptr + by_row(rows.to(tl.int64) * inter, SWAP) + by_col(n, SWAP)
        if SPLIT:
            splits = grid_size(grid, 2)
            p_gate = part_ptr + by_row(rows.to(tl.int64) * (2 * inter), SWAP) + by_col(n, SWAP)
            p_step = grid_size(grid, 0).to(tl.int64) * BLOCK_M * (2 * inter)
            tl.store(p_gate + pid[2] * p_step, gate, mask=mask)
            tl.store(p_gate + pid[2] * p_step + inter, up, mask=mask)
            tile = pid[0] * grid_size(grid, 1) + pid[1]
            if last_to_arrive(count_ptr + tile, splits):
                # fixed order: bitwise the same whichever split arrives last
                if SWAP:
                    gate = sum_partials(p_gate, p_step, splits, mask, BLOCK_N, BLOCK_M, SUM_UNROLL)
                    up = sum_partials(p_gate + inter, p_step, splits, mask, BLOCK_N, BLOCK_M,
                                      SUM_UNROLL)
                else:
                    gate = sum_partials(p_gate, p_step, splits, mask, BLOCK_M, BLOCK_N, SUM_UNROLL)
                    up = sum_partials(p_gate + inter, p_step, splits, mask, BLOCK_M, BLOCK_N,
                                      SUM_UNROLL)
                tl.store(act_ptrs, gate * tl.sigmoid(gate) * up, mask=mask)
        else:
            tl.store(act_ptrs, gate * tl.sigmoid(gate) * up, mask=mask)


@triton.jit(do_not_specialize=["iters_per_split", "work0", "work1", "work2"])
def _gate_up_kernel(x_ptr, sorted_ptr, block_expert_ptr, block_rows_ptr, w_ptr, ws_ptr, act_ptr,
                    part_ptr, count_ptr, stride_xt, stride_xh, stride_we, stride_wn, stride_wk,
                    stride_se, stride_sn, stride_sk, hidden, inter, iters_per_split, work0, work1,
                    work2, PERSISTENT: tl.constexpr, SLOTS: tl.constexpr, BLOCK_M: tl.constexpr,
                    BLOCK_N: tl.constexpr, SPLIT: tl.constexpr, SWAP: tl.constexpr,
                    SUM_UNROLL: tl.constexpr, GROUP: tl.constexpr, FP8_MAX: tl.constexpr,
                    INTERPRET: tl.constexpr):
    each_work_item(_gate_up_tile,
                   (x_ptr, sorted_ptr, block_expert_ptr, block_rows_ptr, w_ptr, ws_ptr, act_ptr,
                    part_ptr, count_ptr, stride_xt, stride_xh, stride_we, stride_wn, stride_wk,
                    stride_se, stride_sn, stride_sk, hidden, inter, iters_per_split, SLOTS,
                    BLOCK_M, BLOCK_N, SPLIT, SWAP, SUM_UNROLL, GROUP, FP8_MAX, INTERPRET),
                   work0, work1, work2, PERSISTENT)


@triton.jit
def _down_tile(pid, grid, act_ptr, sorted_ptr, block_expert_ptr, block_rows_ptr, w_ptr, ws_ptr,
               weights_ptr, y_ptr, ids_ptr, out_ptr, count_ptr, stride_we, stride_wn, stride_wk,
               stride_se, stride_sn, stride_sk, stride_rt, stride_rs, stride_it, stride_is,
               stride_ot, stride_oh, tokens, experts, hidden, inter, SLOTS: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SWAP: tl.constexpr,
               BLOCK_T: tl.constexpr, GROUP: tl.constexpr, FP8_MAX: tl.constexpr,
               INTERPRET: tl.constexpr):
    """y[pair, n] = routing weight * (quant(act[row]) @ w2[e]^T)[n] for BLOCK_N columns, then
    the slot sum: every work item (empty blocks too) arrives at its column tile's counter, and the
    last one writes out[t, tile] = sum over t's slots, in slot order, of the rows of real
    experts (deterministic)."""
    expert = tl.load(block_expert_ptr + pid[0]).to(tl.int64)
    n = pid[1] * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < hidden
    if expert >= 0:
        rows, row_ok, pair = _block_pairs(pid[0], sorted_ptr, block_rows_ptr, BLOCK_M)
        k = tl.arange(0, GROUP)
        a_rows = act_ptr + rows[:, None].to(tl.int64) * inter
        w_rows = w_ptr + expert * stride_we + n[:, None] * stride_wn
        s_rows = ws_ptr + expert * stride_se + (n // GROUP) * stride_sn
        kb_last = inter // GROUP - 1
        a_next = tl.load(a_rows + k[None, :], mask=row_ok[:, None], other=1.0)  # as gate_up
        s_next = tl.load(s_rows, mask=n_ok, other=0.0)
        if SWAP:
            acc = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)
        else:
            acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        for kb in range(0, inter // GROUP):
            nxt = tl.minimum(kb + 1, kb_last)
            av, sv = a_next, s_next
            a_next = tl.load(a_rows + (nxt * GROUP + k)[None, :], mask=row_ok[:, None],
                             other=1.0)
            s_next = tl.load(s_rows + nxt * stride_sk, mask=n_ok, other=0.0)
            wv = _load_w(w_rows, kb, stride_wk, n_ok, GROUP)
            a, a_scale = _quant_fp8(av, FP8_MAX, INTERPRET)
            acc += tile_dot(a, wv, SWAP, INTERPRET) * by_row(a_scale, SWAP) * by_col(sv, SWAP)
        route = tl.load(weights_ptr + (pair // SLOTS) * stride_rt + (pair % SLOTS) * stride_rs,
                        mask=row_ok, other=0.0)
        tl.store(y_ptr + by_row(pair.to(tl.int64) * hidden, SWAP) + by_col(n, SWAP),
                 acc * by_row(route, SWAP), mask=by_row(row_ok, SWAP) & by_col(n_ok, SWAP))
    if last_to_arrive(count_ptr + pid[1], grid_size(grid, 0)):
        for t0 in range(0, tokens, BLOCK_T):
            t = t0 + tl.arange(0, BLOCK_T)
            t_ok = t < tokens
            total = tl.zeros([BLOCK_T, BLOCK_N], tl.float32)
            for s in tl.static_range(SLOTS):
                e = tl.load(ids_ptr + t * stride_it + s * stride_is, mask=t_ok, other=-1)
                ok = t_ok & (e >= 0) & (e < experts)
                total += tl.load(y_ptr + (t * SLOTS + s).to(tl.int64)[:, None] * hidden
                                 + n[None, :], mask=ok[:, None] & n_ok[None, :], other=0.0,
                                 cache_modifier=".cg")
            tl.store(out_ptr + t[:, None] * stride_ot + n[None, :] * stride_oh,
                     total.to(out_ptr.dtype.element_ty), mask=t_ok[:, None] & n_ok[None, :])


@triton.jit(do_not_specialize=["tokens", "work0", "work1", "work2"])
def _down_kernel(act_ptr, sorted_ptr, block_expert_ptr, block_rows_ptr, w_ptr, ws_ptr,
                 weights_ptr, y_ptr, ids_ptr, out_ptr, count_ptr, stride_we, stride_wn,
                 stride_wk, stride_se, stride_sn, stride_sk, stride_rt, stride_rs, stride_it,
                 stride_is, stride_ot, stride_oh, tokens, experts, hidden, inter, work0, work1,
                 work2, PERSISTENT: tl.constexpr, SLOTS: tl.constexpr, BLOCK_M: tl.constexpr,
                 BLOCK_N: tl.constexpr, SWAP: tl.constexpr, BLOCK_T: tl.constexpr,
                 GROUP: tl.constexpr, FP8_MAX: tl.constexpr, INTERPRET: tl.constexpr):
    each_work_item(_down_tile,
                   (act_ptr, sorted_ptr, block_expert_ptr, block_rows_ptr, w_ptr, ws_ptr,
                    weights_ptr, y_ptr, ids_ptr, out_ptr, count_ptr, stride_we, stride_wn,
                    stride_wk, stride_se, stride_sn, stride_sk, stride_rt, stride_rs, stride_it,
                    stride_is, stride_ot, stride_oh, tokens, experts, hidden, inter, SLOTS, BLOCK_M,
                    BLOCK_N, SWAP, BLOCK_T, GROUP, FP8_MAX, INTERPRET),
                   work0, work1, work2, PERSISTENT)


class MoeConfig(NamedTuple):
    """gate_up: gate (and up) columns per program, hidden-dim splits (an upper bound: trimmed so
    that none is empty), warps, stages (Triton's pipelining of the weight loads), swap (compute
    the tiles transposed, weight rows on the MMA's M side); down: the same without splits."""
    gu_block_n: int = 64
    gu_splits: int = 1
    gu_warps: int = 4
    gu_stages: int = 3
    gu_swap: bool = False
    down_block_n: int = 128
    down_warps: int = 4
    down_stages: int = 2
    down_swap: bool = False


# Measured with bench/tune_gemm_moe.py on an H200 (132 SMs), GLM-5 tp=8 experts (256 routed +
# the shared one, hidden 6144, inter 256, 9 slots); key (tokens, hidden, inter): a call takes
# the entry of the nearest tokens above (else the largest).
_TUNED_SMS = 132
_TUNED: dict[tuple[int, int, int], MoeConfig] = {
    (1, 6144, 256): MoeConfig(64, 8, 4, 3, True, 256, 8, 3, True),
    (4, 6144, 256): MoeConfig(128, 4, 8, 3, True, 256, 8, 3, True),
    (16, 6144, 256): MoeConfig(128, 1, 8, 3, True, 256, 4, 3, True),
    (64, 6144, 256): MoeConfig(128, 1, 8, 3, True, 128, 4, 3, True),
}


def moe_config(tokens: int, slots: int, experts: int, hidden: int, inter: int,
               device: torch.device) -> MoeConfig:
    sms = sm_count(device, off_gpu=4)
    tuned = sorted(t for t, h, i in _TUNED if (h, i) == (hidden, inter))
    if sms == _TUNED_SMS and tuned:
        t = next((t for t in tuned if t >= tokens), tuned[-1])
        return _TUNED[(t, hidden, inter)]
    # about as many blocks as experts with pairs: split the hidden dim of gate_up until there
    # are ~2 programs per SM; transposed tiles, as the table
    blocks = min(experts, tokens * slots)
    gu_block_n = min(128, triton.next_power_of_2(inter))
    iters = hidden // GROUP
    splits = max(1, min(iters, triton.cdiv(2 * sms, blocks * triton.cdiv(inter, gu_block_n))))
    return MoeConfig(gu_block_n, splits, 8, 3, True, 256, 4, 3, True)


def _workspace(device: torch.device, key: tuple, pairs: int, max_blocks: int, inter: int,
               hidden: int, splits: int, n_tiles: int, down_tiles: int):
    """(sorted pairs, block expert, block rows, act, y, gate_up partials, gate_up counters,
    down counters); allocated on the eager warm-up call, reused when captured. Keyed by the
    output, so that concurrent MoE nodes never share one."""
    rows = max_blocks * BLOCK_M
    i32, f32 = torch.int32, torch.float32
    return (workspace(key + ("sorted",), (rows,), i32, device),
            workspace(key + ("block_expert",), (max_blocks,), i32, device),
            workspace(key + ("block_rows",), (max_blocks,), i32, device),
            workspace(key + ("act",), (rows, inter), f32, device),
            workspace(key + ("y",), (pairs, hidden), f32, device),
            workspace(key + ("gate_up_part",), (splits, rows, 2 * inter), f32, device)
            if splits > 1 else None,
            workspace(key + ("gate_up_count",), (max_blocks * n_tiles,), i32, device, zeroed=True),
            workspace(key + ("down_count",), (down_tiles,), i32, device, zeroed=True))


def fused_moe(*, x, ids, weights, w13, w13_scale, w2, w2_scale, out,
              max_programs: int | None = None):
    """out [T, H] = sum over slots of weight * down(silu(gate) * up), FP8 1x128 activations."""
    run_fused_moe(x, ids, weights, w13, w13_scale, w2, w2_scale, out, max_programs=max_programs)


def run_fused_moe(x, ids, weights, w13, w13_scale, w2, w2_scale, out,
                  config: MoeConfig | None = None, max_programs: int | None = None):
    """fused_moe with `config` in place of the table's (bench/tune_gemm_moe.py sweeps them), on
    at most `max_programs` programs at once (align is a single program anyway)."""
    tokens, hidden = x.shape
    slots = ids.shape[1]
    experts, hidden_w, inter = w2.shape
    if hidden % GROUP or inter % GROUP or hidden_w != hidden or w13.shape[1] != 2 * inter:
        raise ValueError(f"fused_moe shapes: x {tuple(x.shape)}, w13 {tuple(w13.shape)}, "
                         f"w2 {tuple(w2.shape)} (hidden and inter must be multiples of {GROUP})")
    cfg = config or moe_config(tokens, slots, experts, hidden, inter, x.device)
    pairs = tokens * slots
    # each expert with pairs wastes under one block of padding, and at most `pairs` have any
    max_blocks = triton.cdiv(pairs, BLOCK_M) + min(experts, pairs)
    iters = hidden // GROUP
    per_split = triton.cdiv(iters, max(1, min(cfg.gu_splits, iters)))
    splits = triton.cdiv(iters, per_split)
    n_tiles = triton.cdiv(inter, cfg.gu_block_n)
    down_tiles = triton.cdiv(hidden, cfg.down_block_n)
    (sorted_pairs, block_expert, block_rows, act, y, part, gu_count,
     down_count) = _workspace(x.device, ("moe", out.data_ptr(), tuple(out.shape)), pairs,
                              max_blocks, inter, hidden, splits, n_tiles, down_tiles)
    _moe_align_kernel[(1,)](
        ids, *ids.stride(), sorted_pairs, block_expert, block_rows, pairs, experts, max_blocks,
        SLOTS=slots, BLOCK_M=BLOCK_M, BLOCK_P=triton.next_power_of_2(pairs),
        BLOCK_E=triton.next_power_of_2(experts + 1), num_warps=8)
    quant = dict(SLOTS=slots, BLOCK_M=BLOCK_M, GROUP=GROUP, FP8_MAX=FP8_MAX, INTERPRET=INTERPRET)
    plan = plan_grid((max_blocks, n_tiles, splits), max_programs)
    _gate_up_kernel[plan.grid](
        x, sorted_pairs, block_expert, block_rows, w13, w13_scale, act,
        act if part is None else part, gu_count, *x.stride(), *w13.stride(),
        *w13_scale.stride(), hidden, inter, per_split, **plan.args, BLOCK_N=cfg.gu_block_n,
        SPLIT=splits > 1, SWAP=cfg.gu_swap,
        SUM_UNROLL=sum_unroll(splits, BLOCK_M * cfg.gu_block_n, cfg.gu_warps), **quant,
        num_warps=cfg.gu_warps, num_stages=cfg.gu_stages)
    plan = plan_grid((max_blocks, down_tiles), max_programs)
    _down_kernel[plan.grid](
        act, sorted_pairs, block_expert, block_rows, w2, w2_scale, weights, y, ids, out,
        down_count, *w2.stride(), *w2_scale.stride(), *weights.stride(), *ids.stride(),
        *out.stride(), tokens, experts, hidden, inter, **plan.args, BLOCK_N=cfg.down_block_n,
        SWAP=cfg.down_swap, BLOCK_T=min(16, triton.next_power_of_2(tokens)),
        **quant, num_warps=cfg.down_warps, num_stages=cfg.down_stages)


OPS = {"biased_topk": biased_topk, "fused_moe": fused_moe}
