"""Triton GEMMs of the decode layer: FP8 block-scaled linear, bf16 linear and per-head FP8 bmm.

Decode GEMMs have a handful of rows and stream a large weight, so they are bound by weight
bandwidth and by fixed costs per launch and per program. One kernel serves all three ops. Each
program owns a BLOCK_M x BLOCK_N output tile and a range of K: one main-loop iteration loads a
BLOCK_N x BLOCK_K weight tile (BLOCK_K = 128 for fp8_linear, whose every 128-group has its own
scales; up to 512 for the unscaled ops), Triton pipelines num_stages of them, and the grid
splits K so that there are about one or two programs per SM. With `swap` the tile is computed
transposed, weight rows on the MMA's M side (common.tile_dot): at M <= 16 that is what Hopper's
wgmma wants, and the measured table takes it for most fp8 shapes. fp8_linear quantises its
activation inside the GEMM (1x128 groups, as `quant.quant_groups`, exact division) and scales
every group's product by its activation and weight scales (one per row, one per 128-row block:
a tile may span several), so it needs no separate quantisation launch.

Split K needs no second launch: each program of a tile writes its fp32 partial to a workspace
and the last one to arrive (a counter per tile, `common.last_to_arrive`) sums the partials in
split order and writes the output. Deterministic, no host synchronisation, one kernel per GEMM
in a CUDA/HIP graph.

Configurations come from a small table measured on an H200 (132 SMs; bench/tune_gemm_moe.py
sweeps them) keyed by shape; other shapes and devices get a heuristic from shape and SM count.
No autotuning at run time: the choice is a pure function of shape and device.

Triton is the only path: measured on an H200 with torch 2.11, torch._scaled_mm with 1x128 x
128x128 block scales returned zeros in the last columns for (N, K) = (6144, 256) without raising,
so cuBLAS block-scaled FP8 is not offered.
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

_INTERPRET = tl.constexpr(INTERPRET)
_FP8_MAX = tl.constexpr(FP8_MAX)
_MAX_BLOCK_M = 64

# weight scale modes
_NO_SCALE, _BLOCK_SCALE, _BATCH_SCALE = 0, 1, 2


def _tile(size: int, cap: int) -> int:
    """Power-of-two tile side for `size`, at least 16 (the smallest tl.dot side) and <= cap."""
    return min(cap, max(16, triton.next_power_of_2(size)))


@triton.jit
def _quant_group(a):
    """fp8 values and fp32 scales [rows] of a [rows, 128] tile, exactly as quant.quant_groups."""
    a = a.to(tl.float32)
    scale = tl.math.div_rn(tl.maximum(tl.max(tl.abs(a), axis=1), 1e-4), _FP8_MAX)
    return exact_cast(tl.math.div_rn(a, scale[:, None]), tl.float8e4nv, _INTERPRET), scale


@triton.jit
def _gemm_tile(pid, grid, x, w, w_scale, out, part, counters, M, N, K, iters_per_split,
               sxb, sxm, sxk, swb, swn, swk, ssb, ssn, ssk, sob, som, son,
               QUANT_X: tl.constexpr, W_SCALE: tl.constexpr, SPLIT: tl.constexpr,
               EVEN_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
               BLOCK_K: tl.constexpr, SWAP: tl.constexpr, SUM_UNROLL: tl.constexpr):
    """out[b, m, n] = sum over k of x[b, m, k] * w[b, n, k] (times the scales).

    Work grid: (M tiles * N tiles, K splits, batch). Split s covers main-loop iterations
    [s * iters_per_split, (s + 1) * iters_per_split) of BLOCK_K along K. The weight scale of
    K block kb (BLOCK_K = 128) is w_scale[b*ssb + (n // 128)*ssn + kb*ssk] (W_SCALE=1), or one
    per batch entry, applied at the end (W_SCALE=2). The next iteration's activations and
    scales load before this one's product (Triton's pipeliner keeps num_stages weight tiles in
    flight). SWAP computes the tile transposed (common.tile_dot). With SPLIT, partials go to
    `part` [splits, batch, M, N] and the tile's last split to arrive at its counter writes out.
    """
    n_tiles = tl.cdiv(N, BLOCK_N)
    pid_m = pid[0] // n_tiles
    pid_n = pid[0] % n_tiles
    split = pid[1]
    bat = pid[2]
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    m_ok = rm < M
    n_ok = rn < N
    x_rows = x + bat * sxb + rm[:, None] * sxm
    w_rows = w + bat * swb + rn[:, None] * swn  # [BLOCK_N, BLOCK_K] tiles, K contiguous
    s_rows = w_scale + bat * ssb + (rn // 128) * ssn
    it_start = split * iters_per_split
    it_end = tl.minimum(it_start + iters_per_split, tl.cdiv(K, BLOCK_K))
    it_last = it_end - 1
    # rows past M pad the MMA: quantised, they are 1.0 rather than 0.0, whose exact division
    # (div_rn) would take the slow path; each row's products depend on that row alone
    if QUANT_X:
        pad = 1.0
    else:
        pad = 0.0
    k = it_start * BLOCK_K + rk
    if EVEN_K:
        a_next = tl.load(x_rows + k[None, :] * sxk, mask=m_ok[:, None], other=pad)
    else:
        a_next = tl.load(x_rows + k[None, :] * sxk, mask=m_ok[:, None] & (k[None, :] < K),
                         other=pad)
    if W_SCALE == 1:
        s_next = tl.load(s_rows + it_start * ssk, mask=n_ok, other=0.0)
    if SWAP:
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for it in range(it_start, it_end):
        k = it * BLOCK_K + rk
        k_next = tl.minimum(it + 1, it_last) * BLOCK_K + rk  # the last one loads itself again
        a = a_next
        if EVEN_K:
            a_next = tl.load(x_rows + k_next[None, :] * sxk, mask=m_ok[:, None], other=pad)
            b = tl.load(w_rows + k[None, :] * swk, mask=n_ok[:, None], other=0.0)
        else:
            a_next = tl.load(x_rows + k_next[None, :] * sxk,
                             mask=m_ok[:, None] & (k_next[None, :] < K), other=pad)
            b = tl.load(w_rows + k[None, :] * swk, mask=n_ok[:, None] & (k[None, :] < K),
                        other=0.0)
        if QUANT_X:
            a, a_scale = _quant_group(a)
            prod = tile_dot(a, b, SWAP, _INTERPRET) * by_row(a_scale, SWAP)
        else:
            prod = tile_dot(a, b, SWAP, _INTERPRET)
        if W_SCALE == 1:
            w_scale_now = s_next
            s_next = tl.load(s_rows + tl.minimum(it + 1, it_last) * ssk, mask=n_ok, other=0.0)
            prod = prod * by_col(w_scale_now, SWAP)
        acc += prod
    if W_SCALE == 2:
        acc = acc * tl.load(w_scale + bat * ssb)
    mask = by_row(m_ok, SWAP) & by_col(n_ok, SWAP)
    o_ptrs = out + bat * sob + by_row(rm * som, SWAP) + by_col(rn * son, SWAP)
    if SPLIT:
        splits = grid_size(grid, 1)
        p_tile = part + by_row((bat * M + rm) * N, SWAP) + by_col(rn, SWAP)
        p_step = grid_size(grid, 2) * M * N
        tl.store(p_tile + split * p_step, acc, mask=mask)
        tile = bat * grid_size(grid, 0) + pid[0]
        if last_to_arrive(counters + tile, splits):
            # fixed order: bitwise the same whichever program arrives last
            if SWAP:
                total = sum_partials(p_tile, p_step, splits, mask, BLOCK_N, BLOCK_M, SUM_UNROLL)
            else:
                total = sum_partials(p_tile, p_step, splits, mask, BLOCK_M, BLOCK_N, SUM_UNROLL)
            tl.store(o_ptrs, total.to(out.dtype.element_ty), mask=mask)
    else:
        tl.store(o_ptrs, acc.to(out.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["M", "iters_per_split", "work0", "work1", "work2"])
def _gemm_kernel(x, w, w_scale, out, part, counters, M, N, K, iters_per_split,
                 sxb, sxm, sxk, swb, swn, swk, ssb, ssn, ssk, sob, som, son, work0, work1, work2,
                 PERSISTENT: tl.constexpr, QUANT_X: tl.constexpr, W_SCALE: tl.constexpr,
                 SPLIT: tl.constexpr, EVEN_K: tl.constexpr, BLOCK_M: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SWAP: tl.constexpr,
                 SUM_UNROLL: tl.constexpr):
    each_work_item(_gemm_tile, (x, w, w_scale, out, part, counters, M, N, K, iters_per_split,
                                sxb, sxm, sxk, swb, swn, swk, ssb, ssn, ssk, sob, som, son,
                                QUANT_X, W_SCALE, SPLIT, EVEN_K, BLOCK_M, BLOCK_N, BLOCK_K, SWAP,
                                SUM_UNROLL),
                   work0, work1, work2, PERSISTENT)


class GemmConfig(NamedTuple):
    """block_n: output columns per program; groups: 128-wide K groups per main-loop iteration
    (fp8_linear scales every group's product, so it takes one); splits: K splits (an upper
    bound: trimmed so that no split is empty); warps; stages (Triton's pipelining of the weight
    loads); swap: compute the tile transposed, weight rows on the MMA's M side."""
    block_n: int
    groups: int
    splits: int
    warps: int = 4
    stages: int = 3
    swap: bool = False


# Measured with bench/tune_gemm_moe.py (CUDA-graph replays, weights rotated through more than
# the L2) on an H200 (132 SMs), GLM-5 tp=8 shapes. Key: (op, N, K, batch, BLOCK_M) with op "fp8"
# (fp8_linear), "bf16" (linear) or "bmm" (bmm_fp8); BLOCK_M 16 serves M <= 16 (tuned at M=4),
# 64 serves 33..64 (tuned at M=64, transposed tiles not tried there), 32 takes the 64 entry.
# idx_wq_b takes its second best at M=4 (10.0 us against 9.8): the best, 16 splits of one
# group each, ran 11.9 us at M=16.
_TUNED_SMS = 132
_C = GemmConfig
_TUNED: dict[tuple[str, int, int, int, int], GemmConfig] = {
    ("fp8", 2688, 6144, 1, 16): _C(256, 1, 12, 8, 3, True),  # qkv_a_proj
    ("fp8", 6144, 2048, 1, 16): _C(128, 1, 8, 8, 3, True),  # o_proj
    ("fp8", 4096, 2048, 1, 16): _C(256, 1, 8, 8, 3, True),  # idx_wq_b
    ("fp8", 2048, 2048, 1, 16): _C(64, 1, 16, 8, 3, True),  # q_b_proj
    ("fp8", 128, 6144, 1, 16): _C(32, 1, 48, 8, 3),  # idx_wk
    ("fp8", 512, 6144, 1, 16): _C(128, 1, 24, 8, 3, True),  # shared_gate_up (unfused shared)
    ("fp8", 6144, 256, 1, 16): _C(128, 1, 2, 8, 3, True),  # shared_down
    ("bf16", 256, 6144, 1, 16): _C(16, 2, 8, 4, 3),  # router_gate
    ("bf16", 32, 6144, 1, 16): _C(16, 2, 24, 8, 3),  # idx_weights_proj
    ("bmm", 512, 192, 8, 16): _C(32, 1, 1, 4, 3),  # bmm_w_kc
    ("bmm", 256, 512, 8, 16): _C(16, 2, 1, 4, 3),  # bmm_w_vc
    ("fp8", 2688, 6144, 1, 64): _C(256, 1, 12, 8, 3),
    ("fp8", 6144, 2048, 1, 64): _C(256, 1, 6, 8, 3),
    ("fp8", 4096, 2048, 1, 64): _C(128, 1, 4, 8, 3),
    ("fp8", 2048, 2048, 1, 64): _C(64, 1, 4, 8, 3),
    ("fp8", 128, 6144, 1, 64): _C(32, 1, 24, 8, 3),
    ("fp8", 512, 6144, 1, 64): _C(64, 1, 16, 8, 2),
    ("fp8", 6144, 256, 1, 64): _C(32, 1, 1, 8, 3),
    ("bf16", 256, 6144, 1, 64): _C(16, 2, 8, 4, 3),
    ("bf16", 32, 6144, 1, 64): _C(16, 2, 24, 8, 3),
    ("bmm", 512, 192, 8, 64): _C(32, 2, 1, 4, 3),
    ("bmm", 256, 512, 8, 64): _C(16, 4, 1, 8, 3),
}


def _heuristic(op: str, m: int, n: int, k: int, batch: int, sms: int) -> GemmConfig:
    """What the table shows at decode: fp8 tiles of 128 columns with 8 warps (transposed up to
    16 rows), narrow tiles of two 128-groups per iteration for the small unscaled ops, and K
    split until there are about 2 programs per SM."""
    block_m = _tile(m, _MAX_BLOCK_M)
    if op == "fp8":
        block_n, groups, warps, swap = _tile(n, 128), 1, 8, block_m <= 16
    else:
        block_n, groups, warps, swap = _tile(n, 32), 2, 4, False
    tiles = batch * triton.cdiv(m, block_m) * triton.cdiv(n, block_n)
    iters = triton.cdiv(k, 128 * groups)
    splits = max(1, min(iters, triton.cdiv(2 * sms, tiles)))
    return GemmConfig(block_n, groups, splits, warps, 3, swap)


def gemm_config(op: str, m: int, n: int, k: int, batch: int, device: torch.device) -> GemmConfig:
    """The table's entry for the shape (the one for the nearest BLOCK_M above, else below) on a
    device with the SM count it was tuned on, else the heuristic."""
    sms = sm_count(device, off_gpu=4)
    if sms == _TUNED_SMS:
        block_m = _tile(m, _MAX_BLOCK_M)
        for bm in sorted((16, 32, 64), key=lambda b: (b < block_m, abs(b - block_m))):
            cfg = _TUNED.get((op, n, k, batch, bm))
            if cfg is not None:
                return cfg
    return _heuristic(op, m, n, k, batch, sms)


def _gemm(x, w, out, w_scale=None, scale_strides=(0, 0, 0), quant_x=False, batch_scale=False,
          op="bf16", config: GemmConfig | None = None, max_programs: int | None = None) -> None:
    """out[b] = x[b] @ w[b]^T for x [B, M, K], w [B, >=N, K], out [B, M, N] (any strides), on
    at most `max_programs` programs at once."""
    batch, m, k = x.shape
    n = out.shape[-1]
    cfg = config or gemm_config(op, m, n, k, batch, x.device)
    block_m, block_n = _tile(m, _MAX_BLOCK_M), min(cfg.block_n, _tile(n, 256))
    block_k = 128 * (1 if quant_x or (w_scale is not None and not batch_scale) else cfg.groups)
    tiles = triton.cdiv(m, block_m) * triton.cdiv(n, block_n)
    iters = triton.cdiv(k, block_k)
    per_split = triton.cdiv(iters, max(1, min(cfg.splits, iters)))
    splits = triton.cdiv(iters, per_split)
    if splits > 1:
        key = ("gemm", out.data_ptr(), tuple(out.shape))
        part = workspace(key + ("part",), (splits, batch, m, n), torch.float32, x.device)
        counters = workspace(key + ("count",), (batch * tiles,), torch.int32, x.device,
                             zeroed=True)
    else:
        part = counters = out
    mode = _NO_SCALE if w_scale is None else _BATCH_SCALE if batch_scale else _BLOCK_SCALE
    plan = plan_grid((tiles, splits, batch), max_programs)
    _gemm_kernel[plan.grid](
        x, w, w if w_scale is None else w_scale, out, part, counters, m, n, k, per_split,
        *x.stride(), *w.stride(), *scale_strides, *out.stride(), **plan.args,
        QUANT_X=quant_x, W_SCALE=mode, SPLIT=splits > 1, EVEN_K=k % block_k == 0,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, SWAP=cfg.swap,
        SUM_UNROLL=sum_unroll(splits, block_m * block_n, cfg.warps), num_warps=cfg.warps,
        num_stages=cfg.stages)


def run_gemm(op: str, x, weight, out, weight_scale=None, config: GemmConfig | None = None,
             max_programs: int | None = None):
    """The op ("fp8": fp8_linear, "bf16": linear, "bmm": bmm_fp8), with `config` in place of the
    table's (bench/tune_gemm_moe.py sweeps them through this), on at most `max_programs`
    programs at once."""
    budget = {"op": op, "config": config, "max_programs": max_programs}
    if op == "fp8":
        if x.shape[-1] % GROUP:
            raise ValueError(f"fp8_linear: K={x.shape[-1]} is not a multiple of the group {GROUP}")
        _gemm(x.unsqueeze(0), weight.unsqueeze(0), out.unsqueeze(0), weight_scale,
              (0, *weight_scale.stride()), quant_x=True, **budget)
    elif op == "bf16":
        _gemm(x.unsqueeze(0), weight.unsqueeze(0), out.unsqueeze(0), **budget)
    elif op == "bmm":
        _gemm(x.transpose(0, 1), weight, out.transpose(0, 1), weight_scale,
              (weight_scale.stride(0), 0, 0), batch_scale=True, **budget)
    else:
        raise ValueError(f"unknown GEMM op {op!r}")


def fp8_linear(*, x, weight, weight_scale, out, max_programs: int | None = None):
    """x bf16 [M,K] quantised per 1x128 group; weight fp8 [N,K] with 128x128 block scales; out
    [M, <=N] gets the first out.shape[-1] columns."""
    run_gemm("fp8", x, weight, out, weight_scale, max_programs=max_programs)


def linear(*, x, weight, out, max_programs: int | None = None):
    run_gemm("bf16", x, weight, out, max_programs=max_programs)


def bmm_fp8(*, x, weight, weight_scale, out, max_programs: int | None = None):
    """x bf16 [T, h, K] times fp8 weight [h, N, K] (one scale per head) -> out [T, h, N]."""
    run_gemm("bmm", x, weight, out, weight_scale, max_programs=max_programs)


# -- standalone activation quantisation ------------------------------------------------------

@triton.jit
def _act_quant_kernel(x, xq, xs, M, sxm, sxk, sqm, sqk, ssm, ssk, BLOCK_M: tl.constexpr):
    """One 1x128 group per row and program: fp8 values into xq, scales into xs (any layout)."""
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    k = tl.program_id(1) * 128 + tl.arange(0, 128)
    mask = rm[:, None] < M
    q, s = _quant_group(tl.load(x + rm[:, None] * sxm + k[None, :] * sxk, mask=mask, other=0.0))
    tl.store(xq + rm[:, None] * sqm + k[None, :] * sqk, q, mask=mask)
    tl.store(xs + rm * ssm + tl.program_id(1) * ssk, s, mask=rm < M)


def quant_groups_into(x: torch.Tensor, xq: torch.Tensor, xs: torch.Tensor) -> None:
    """xq, xs <- quant.quant_groups(x) for x [M, K]: fp8 values and fp32 scales [M, K/128], any
    strides."""
    m, k = x.shape
    block_m = _tile(m, _MAX_BLOCK_M)
    _act_quant_kernel[(triton.cdiv(m, block_m), k // GROUP)](
        x, xq, xs, m, *x.stride(), *xq.stride(), *xs.stride(), BLOCK_M=block_m, num_warps=4)


OPS = {"fp8_linear": fp8_linear, "linear": linear, "bmm_fp8": bmm_fp8}
