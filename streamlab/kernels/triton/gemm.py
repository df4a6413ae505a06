"""Triton GEMMs of the decode layer: FP8 block-scaled linear, bf16 linear and per-head FP8 bmm.

Decode GEMMs have a handful of rows and stream a large weight, so they are bound by weight
bandwidth and need many CTAs in flight. One kernel serves all three ops: it tiles N and splits K
when the N tiles alone would leave SMs idle. Split partials go to an fp32 workspace that a second
pass sums in a fixed order: deterministic, no atomics, no host synchronisation, so both launches
capture into a CUDA/HIP graph. fp8_linear quantises its activation inside the GEMM (1x128 groups,
as `quant.quant_groups`), so it needs no separate quantisation launch.

Triton is the only path: measured on an H200 with torch 2.11, torch._scaled_mm with 1x128 x
128x128 block scales returned zeros in the last columns for (N, K) = (6144, 256) without raising,
so cuBLAS block-scaled FP8 is not offered.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from streamlab.kernels.quant import FP8_MAX, GROUP
from streamlab.kernels.triton.common import INTERPRET, dot_operand, exact_cast

_INTERPRET = tl.constexpr(INTERPRET)
_FP8_MAX = tl.constexpr(FP8_MAX)
_MAX_BLOCK_M = 64
_MAX_BLOCK_N = 64  # divides the 128-row weight block, so one weight scale covers a whole tile


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


@triton.jit
def _gemm_kernel(x, w, w_scale, dst, M, N, K, k_blocks_per_split,
                 sxb, sxm, sxk, swb, swn, swk, ssb, ssn, ssk, sdp, sdb, sdm, sdn,
                 QUANT_X: tl.constexpr, W_SCALE: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """dst[split, b, m, n] = sum over this split's K blocks of x[b, m, k] * w[b, n, k].

    Grid: (M tiles * N tiles, K splits, batch). The weight scale of K block kb is
    w_scale[b*ssb + (n // 128)*ssn + kb*ssk]: block scales for fp8_linear, one per head for bmm.
    """
    n_tiles = tl.cdiv(N, BLOCK_N)
    pid_m = tl.program_id(0) // n_tiles
    pid_n = tl.program_id(0) % n_tiles
    split = tl.program_id(1)
    bat = tl.program_id(2)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    x_ptrs = x + bat * sxb + rm[:, None] * sxm + rk[None, :] * sxk
    w_ptrs = w + bat * swb + rn[None, :] * swn + rk[:, None] * swk
    s_ptr = w_scale + bat * ssb + (pid_n * BLOCK_N // 128) * ssn
    kb_start = split * k_blocks_per_split
    kb_end = tl.minimum(kb_start + k_blocks_per_split, tl.cdiv(K, BLOCK_K))
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kb in range(kb_start, kb_end):
        k = kb * BLOCK_K + rk
        a = tl.load(x_ptrs + kb * BLOCK_K * sxk, mask=(rm[:, None] < M) & (k[None, :] < K),
                    other=0.0)
        b = tl.load(w_ptrs + kb * BLOCK_K * swk, mask=(rn[None, :] < N) & (k[:, None] < K),
                    other=0.0)
        if QUANT_X:
            a, a_scale = _quant_group(a)
            part = _mma(a, b) * a_scale[:, None]
        else:
            part = _mma(a, b)
        if W_SCALE:
            part = part * tl.load(s_ptr + kb * ssk)
        acc += part
    d_ptrs = dst + split * sdp + bat * sdb + rm[:, None] * sdm + rn[None, :] * sdn
    tl.store(d_ptrs, acc.to(dst.dtype.element_ty), mask=(rm[:, None] < M) & (rn[None, :] < N))


@triton.jit
def _sum_splits_kernel(ws, out, splits, M, N, sob, som, son, BLOCK: tl.constexpr):
    """out[b, m, :] = sum over splits of ws[split, b, m, :], in split order (deterministic)."""
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < N
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for s in range(splits):
        acc += tl.load(ws + (s * tl.num_programs(0) + row) * N + cols, mask=mask, other=0.0)
    o_ptrs = out + (row // M) * sob + (row % M) * som + cols * son
    tl.store(o_ptrs, acc.to(out.dtype.element_ty), mask=mask)


@functools.cache
def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # the interpreter: a small pretend GPU, so that tests exercise split-K


_WORKSPACES: dict = {}


def _workspace(out: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """fp32 split-K partials, one buffer per output tensor: nodes that may run at the same time on
    different streams write different outputs, so they never share a workspace. Allocated on the
    first (eager) call, reused by every later call and by graph replays."""
    key = (out.device, out.data_ptr(), shape)
    ws = _WORKSPACES.get(key)
    if ws is None:
        ws = _WORKSPACES[key] = torch.empty(shape, dtype=torch.float32, device=out.device)
    return ws


def _gemm(x, w, out, w_scale=None, scale_strides=(0, 0, 0), quant_x=False) -> None:
    """out[b] = x[b] @ w[b]^T for x [B, M, K], w [B, >=N, K], out [B, M, N] (any strides)."""
    batch, m, k = x.shape
    n = out.shape[-1]
    block_m, block_n = _tile(m, _MAX_BLOCK_M), _tile(n, _MAX_BLOCK_N)
    tiles = triton.cdiv(m, block_m) * triton.cdiv(n, block_n)
    k_blocks = triton.cdiv(k, GROUP)
    # aim for ~2 CTAs per SM: split K only as far as the output tiles leave SMs idle
    per_split = min(k_blocks, triton.cdiv(batch * tiles * k_blocks, 2 * _sm_count(x.device)))
    splits = triton.cdiv(k_blocks, per_split)
    if splits == 1:
        dst, dst_strides = out, (0, *out.stride())
    else:
        dst = _workspace(out, (splits, batch, m, n))
        dst_strides = dst.stride()
    _gemm_kernel[(tiles, splits, batch)](
        x, w, w if w_scale is None else w_scale, dst, m, n, k, per_split,
        *x.stride(), *w.stride(), *scale_strides, *dst_strides,
        QUANT_X=quant_x, W_SCALE=w_scale is not None,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=GROUP, num_warps=4)
    if splits > 1:
        block = min(1024, triton.next_power_of_2(n))
        _sum_splits_kernel[(batch * m, triton.cdiv(n, block))](
            dst, out, splits, m, n, *out.stride(), BLOCK=block, num_warps=4)


def fp8_linear(*, x, weight, weight_scale, out):
    """x bf16 [M,K] quantised per 1x128 group; weight fp8 [N,K] with 128x128 block scales; out
    [M, <=N] gets the first out.shape[-1] columns."""
    if x.shape[-1] % GROUP:
        raise ValueError(f"fp8_linear: K={x.shape[-1]} is not a multiple of the group {GROUP}")
    _gemm(x.unsqueeze(0), weight.unsqueeze(0), out.unsqueeze(0), weight_scale,
          (0, *weight_scale.stride()), quant_x=True)


def linear(*, x, weight, out):
    _gemm(x.unsqueeze(0), weight.unsqueeze(0), out.unsqueeze(0))


def bmm_fp8(*, x, weight, weight_scale, out):
    """x bf16 [T, h, K] times fp8 weight [h, N, K] (one scale per head) -> out [T, h, N]."""
    _gemm(x.transpose(0, 1), weight, out.transpose(0, 1), weight_scale,
          (weight_scale.stride(0), 0, 0))


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
