"""Triton GEMMs of the decode layer: FP8 block-scaled linear, bf16 linear and per-head FP8 bmm.

Decode GEMMs have a handful of rows and stream a large weight, so they are bound by weight
bandwidth: what counts is how many weight bytes are in flight. One kernel serves all three ops.
Each program owns a BLOCK_N x BLOCK_M output tile and a range of K; one main-loop iteration
loads GROUPS 128-wide K groups of the weight (so BLOCK_N * 128 * GROUPS bytes, pipelined
num_stages deep), and the grid splits K so that there are a few programs per SM. fp8_linear
quantises its activation inside the GEMM (1x128 groups, as `quant.quant_groups`) and scales every
group's product by its activation and weight scales (one per row, one per 128-row block: a tile
may span several), so it needs no separate quantisation launch.

Split K needs no second launch: each program of a tile writes its fp32 partial to a workspace
and the last one to arrive (a counter per tile, `common.last_to_arrive`) sums the partials in
split order and writes the output. Deterministic, no host synchronisation, one kernel per GEMM
in a CUDA/HIP graph.

Configurations come from a small table measured on H100/H200 (132 SMs; bench/tune_gemm_moe.py
sweeps them) keyed by shape; other shapes and devices get a heuristic from shape and SM count.

Triton is the only path: measured on an H200 with torch 2.11, torch._scaled_mm with 1x128 x
128x128 block scales returned zeros in the last columns for (N, K) = (6144, 256) without raising,
so cuBLAS block-scaled FP8 is not offered.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from streamlab.kernels.quant import FP8_MAX, GROUP
from streamlab.kernels.triton.common import (INTERPRET, dot_operand, exact_cast, last_to_arrive,
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
def _mma(a, b):
    """a @ b with fp32 accumulation; b takes a's type (fp8 x fp8, bf16 x bf16, or an exact fp8 ->
    bf16 upcast for bmm_fp8); the interpreter gets fp32 operands."""
    return tl.dot(dot_operand(a, a.dtype, _INTERPRET), dot_operand(b, a.dtype, _INTERPRET))


@triton.jit(do_not_specialize=["M"])
def _gemm_kernel(x, w, w_scale, out, part, counters, M, N, K, iters_per_split,
                 sxb, sxm, sxk, swb, swn, swk, ssb, ssn, ssk, sob, som, son,
                 QUANT_X: tl.constexpr, W_SCALE: tl.constexpr, SPLIT: tl.constexpr,
                 EVEN_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 GROUPS: tl.constexpr):
    """out[b, m, n] = sum over k of x[b, m, k] * w[b, n, k] (times the scales).

    Grid: (M tiles * N tiles, K splits, batch). Split s covers main-loop iterations
    [s * iters_per_split, (s + 1) * iters_per_split), each GROUPS groups of 128 along K. The
    weight scale of group g is w_scale[b*ssb + (n // 128)*ssn + g*ssk] (W_SCALE=1) or one per
    batch entry, applied at the end (W_SCALE=2). With SPLIT, partials go to `part` [splits,
    batch, M, N] and the tile's last program to arrive at its counter writes out.
    """
    n_tiles = tl.cdiv(N, BLOCK_N)
    pid_m = tl.program_id(0) // n_tiles
    pid_n = tl.program_id(0) % n_tiles
    split = tl.program_id(1)
    bat = tl.program_id(2)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, 128)
    m_ok = rm < M
    n_ok = rn < N
    x_rows = x + bat * sxb + rm[:, None] * sxm
    w_rows = w + bat * swb + rn[:, None] * swn  # [BLOCK_N, 128] tiles, K contiguous
    s_rows = w_scale + bat * ssb + (rn // 128) * ssn
    it_start = split * iters_per_split
    it_end = tl.minimum(it_start + iters_per_split, tl.cdiv(K, 128 * GROUPS))
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for it in range(it_start, it_end):
        for g in tl.static_range(GROUPS):
            k0 = (it * GROUPS + g) * 128
            k = k0 + rk
            if EVEN_K:
                a = tl.load(x_rows + k[None, :] * sxk, mask=m_ok[:, None], other=0.0)
                b = tl.load(w_rows + k[None, :] * swk, mask=n_ok[:, None], other=0.0)
            else:
                a = tl.load(x_rows + k[None, :] * sxk, mask=m_ok[:, None] & (k[None, :] < K),
                            other=0.0)
                b = tl.load(w_rows + k[None, :] * swk, mask=n_ok[:, None] & (k[None, :] < K),
                            other=0.0)
            if QUANT_X:
                a, a_scale = _quant_group(a)
                prod = _mma(a, tl.trans(b)) * a_scale[:, None]
            else:
                prod = _mma(a, tl.trans(b))
            if W_SCALE == 1:
                prod = prod * tl.load(s_rows + (k0 // 128) * ssk, mask=n_ok, other=0.0)[None, :]
            acc += prod
    if W_SCALE == 2:
        acc = acc * tl.load(w_scale + bat * ssb)
    mask = m_ok[:, None] & n_ok[None, :]
    o_ptrs = out + bat * sob + rm[:, None] * som + rn[None, :] * son
    if SPLIT:
        splits = tl.num_programs(1)
        batch = tl.num_programs(2)
        p_tile = part + (bat * M + rm[:, None]) * N + rn[None, :]
        p_step = batch * M * N
        tl.store(p_tile + split * p_step, acc, mask=mask)
        tile = bat * tl.num_programs(0) + tl.program_id(0)
        if last_to_arrive(counters + tile, splits):
            total = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for s in range(0, splits):  # fixed order: bitwise the same whoever arrives last
                total += tl.load(p_tile + s * p_step, mask=mask, other=0.0, cache_modifier=".cg")
            tl.store(o_ptrs, total.to(out.dtype.element_ty), mask=mask)
    else:
        tl.store(o_ptrs, acc.to(out.dtype.element_ty), mask=mask)


class GemmConfig(NamedTuple):
    """block_n: output columns per program; groups: 128-wide K groups per main-loop iteration;
    splits: K splits (an upper bound: trimmed so that no split is empty); warps, stages."""
    block_n: int
    groups: int
    splits: int
    warps: int = 4
    stages: int = 3


# Measured with bench/tune_gemm_moe.py (CUDA-graph replays, weights rotated through more than
# the L2) on devices with 132 SMs. Key: (op, N, K, batch, BLOCK_M), op "fp8" (fp8_linear),
# "bf16" (linear) or "bmm" (bmm_fp8); BLOCK_M 16 serves M <= 16, 64 serves 33..64.
_TUNED_SMS = 132
_TUNED: dict[tuple[str, int, int, int, int], GemmConfig] = {}


@functools.cache
def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # the interpreter: a small pretend GPU, so that tests exercise split-K


def _heuristic(m: int, n: int, k: int, batch: int, sms: int) -> GemmConfig:
    """Weight bandwidth wants bytes in flight: 64-column tiles, 2-4 groups (256-512 bytes of K)
    per iteration, and about 2 programs per SM, splitting K as far as the tiles leave SMs idle."""
    block_n = min(64, _tile(n, 64))
    groups = 4 if k % 512 == 0 else 2 if k % 256 == 0 else 1
    tiles = batch * triton.cdiv(m, _tile(m, _MAX_BLOCK_M)) * triton.cdiv(n, block_n)
    iters = triton.cdiv(k, 128 * groups)
    splits = max(1, min(iters, triton.cdiv(2 * sms, tiles)))
    return GemmConfig(block_n, groups, splits, 4, 3)


def gemm_config(op: str, m: int, n: int, k: int, batch: int, device: torch.device) -> GemmConfig:
    sms = _sm_count(device)
    tuned = _TUNED.get((op, n, k, batch, _tile(m, _MAX_BLOCK_M))) if sms == _TUNED_SMS else None
    return tuned or _heuristic(m, n, k, batch, sms)


def _gemm(x, w, out, w_scale=None, scale_strides=(0, 0, 0), quant_x=False, batch_scale=False,
          op="bf16", config: GemmConfig | None = None) -> None:
    """out[b] = x[b] @ w[b]^T for x [B, M, K], w [B, >=N, K], out [B, M, N] (any strides)."""
    batch, m, k = x.shape
    n = out.shape[-1]
    cfg = config or gemm_config(op, m, n, k, batch, x.device)
    block_m, block_n = _tile(m, _MAX_BLOCK_M), min(cfg.block_n, _tile(n, 256))
    tiles = triton.cdiv(m, block_m) * triton.cdiv(n, block_n)
    iters = triton.cdiv(k, 128 * cfg.groups)
    per_split = triton.cdiv(iters, max(1, min(cfg.splits, iters)))
    splits = triton.cdiv(iters, per_split)
    if splits > 1:
        key = ("gemm", out.data_ptr(), tuple(out.shape))
        part = workspace(key, (splits, batch, m, n), torch.float32, x.device)
        counters = workspace(key, (batch * tiles,), torch.int32, x.device, zeroed=True)
    else:
        part = counters = out
    mode = _NO_SCALE if w_scale is None else _BATCH_SCALE if batch_scale else _BLOCK_SCALE
    _gemm_kernel[(tiles, splits, batch)](
        x, w, w if w_scale is None else w_scale, out, part, counters, m, n, k, per_split,
        *x.stride(), *w.stride(), *scale_strides, *out.stride(),
        QUANT_X=quant_x, W_SCALE=mode, SPLIT=splits > 1, EVEN_K=k % (128 * cfg.groups) == 0,
        BLOCK_M=block_m, BLOCK_N=block_n, GROUPS=cfg.groups, num_warps=cfg.warps,
        num_stages=cfg.stages)


def fp8_linear(*, x, weight, weight_scale, out):
    """x bf16 [M,K] quantised per 1x128 group; weight fp8 [N,K] with 128x128 block scales; out
    [M, <=N] gets the first out.shape[-1] columns."""
    if x.shape[-1] % GROUP:
        raise ValueError(f"fp8_linear: K={x.shape[-1]} is not a multiple of the group {GROUP}")
    _gemm(x.unsqueeze(0), weight.unsqueeze(0), out.unsqueeze(0), weight_scale,
          (0, *weight_scale.stride()), quant_x=True, op="fp8")


def linear(*, x, weight, out):
    _gemm(x.unsqueeze(0), weight.unsqueeze(0), out.unsqueeze(0), op="bf16")


def bmm_fp8(*, x, weight, weight_scale, out):
    """x bf16 [T, h, K] times fp8 weight [h, N, K] (one scale per head) -> out [T, h, N]."""
    _gemm(x.transpose(0, 1), weight, out.transpose(0, 1), weight_scale,
          (weight_scale.stride(0), 0, 0), batch_scale=True, op="bmm")


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
