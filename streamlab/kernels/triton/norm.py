"""Triton row-wise kernels of the decode layer: the norms, the SwiGLU activation, add and cat.

Each kernel sees its tensors as rows (every dim but the last, merged by `_rows` without a copy)
with explicit strides, so column-slice views such as q_a = qkv_a[:, :2048] are read in place.
All maths is fp32 with one rounding to the output dtype, as in the reference.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from streamlab.kernels.triton.common import each_work_item, plan_grid

_MAX_BLOCK = 1024  # columns per program of the element-wise kernels


def _rows(t: torch.Tensor) -> torch.Tensor:
    """t as [rows, last dim]: a view (never a copy, so outputs are written in place)."""
    return t.view(-1, t.shape[-1])


def _warps(block: int) -> int:
    return 8 if block >= 4096 else 4


@triton.jit
def _norm_row(pid, grid, x, res, w, b, out, N, eps, sxm, sxn, srm, srn, sw, sb, som, son,
              ADD_RESIDUAL: tl.constexpr, LAYERNORM: tl.constexpr, BLOCK: tl.constexpr):
    """One row per work item, the whole row in registers (N <= a few thousand).

    ADD_RESIDUAL: res <- round(res + x) and the norm reads the rounded sum. LAYERNORM: subtract
    the mean first and add the bias after (otherwise RMSNorm).
    """
    row = pid[0]
    cols = tl.arange(0, BLOCK)
    mask = cols < N
    v = tl.load(x + row * sxm + cols * sxn, mask=mask, other=0.0).to(tl.float32)
    if ADD_RESIDUAL:
        r_ptrs = res + row * srm + cols * srn
        r = (tl.load(r_ptrs, mask=mask, other=0.0).to(tl.float32) + v).to(res.dtype.element_ty)
        tl.store(r_ptrs, r, mask=mask)
        v = r.to(tl.float32)
    if LAYERNORM:
        v = tl.where(mask, v - tl.sum(v, axis=0) / N, 0.0)
    y = v * tl.math.rsqrt(tl.sum(v * v, axis=0) / N + eps)
    y = y * tl.load(w + cols * sw, mask=mask, other=0.0).to(tl.float32)
    if LAYERNORM:
        y += tl.load(b + cols * sb, mask=mask, other=0.0).to(tl.float32)
    tl.store(out + row * som + cols * son, y.to(out.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["work0", "work1", "work2"])
def _norm_kernel(x, res, w, b, out, N, eps, sxm, sxn, srm, srn, sw, sb, som, son, work0, work1,
                 work2, PERSISTENT: tl.constexpr, ADD_RESIDUAL: tl.constexpr,
                 LAYERNORM: tl.constexpr, BLOCK: tl.constexpr):
    each_work_item(_norm_row, (x, res, w, b, out, N, eps, sxm, sxn, srm, srn, sw, sb, som, son,
                               ADD_RESIDUAL, LAYERNORM, BLOCK), work0, work1, work2, PERSISTENT)


def _norm(x, weight, out, eps, residual=None, bias=None, max_programs: int | None = None) -> None:
    x, out = _rows(x), _rows(out)
    res = x if residual is None else _rows(residual)
    b = weight if bias is None else bias
    n = x.shape[1]
    block = triton.next_power_of_2(n)
    plan = plan_grid((x.shape[0],), max_programs)
    _norm_kernel[plan.grid](
        x, res, weight, b, out, n, eps, *x.stride(), *res.stride(), weight.stride(0), b.stride(0),
        *out.stride(), **plan.args, ADD_RESIDUAL=residual is not None, LAYERNORM=bias is not None,
        BLOCK=block, num_warps=_warps(block))


def rmsnorm_add(*, x, residual, weight, out, eps, max_programs: int | None = None):
    """residual <- residual + x (rounded to residual's dtype); out <- rmsnorm(residual)."""
    _norm(x, weight, out, eps, residual=residual, max_programs=max_programs)


def rmsnorm(*, x, weight, out, eps, max_programs: int | None = None):
    _norm(x, weight, out, eps, max_programs=max_programs)


def layernorm(*, x, weight, bias, out, eps, max_programs: int | None = None):
    _norm(x, weight, out, eps, bias=bias, max_programs=max_programs)


@triton.jit
def _binary_block(pid, grid, a, b, out, N, sam, san, sbm, sbn, som, son,
                  SILU_MUL: tl.constexpr, BLOCK: tl.constexpr):
    """out = silu(a) * b if SILU_MUL else a + b; work grid (rows, column blocks)."""
    row = pid[0]
    cols = pid[1] * BLOCK + tl.arange(0, BLOCK)
    mask = cols < N
    va = tl.load(a + row * sam + cols * san, mask=mask, other=0.0).to(tl.float32)
    vb = tl.load(b + row * sbm + cols * sbn, mask=mask, other=0.0).to(tl.float32)
    if SILU_MUL:
        y = va * tl.sigmoid(va) * vb
    else:
        y = va + vb
    tl.store(out + row * som + cols * son, y.to(out.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["work0", "work1", "work2"])
def _binary_kernel(a, b, out, N, sam, san, sbm, sbn, som, son, work0, work1, work2,
                   PERSISTENT: tl.constexpr, SILU_MUL: tl.constexpr, BLOCK: tl.constexpr):
    each_work_item(_binary_block, (a, b, out, N, sam, san, sbm, sbn, som, son, SILU_MUL, BLOCK),
                   work0, work1, work2, PERSISTENT)


def _binary(a, b, out, silu_mul: bool, max_programs: int | None) -> None:
    a, b, out = _rows(a), _rows(b), _rows(out)
    n = out.shape[1]
    block = min(_MAX_BLOCK, triton.next_power_of_2(n))
    plan = plan_grid((out.shape[0], triton.cdiv(n, block)), max_programs)
    _binary_kernel[plan.grid](
        a, b, out, n, *a.stride(), *b.stride(), *out.stride(), **plan.args, SILU_MUL=silu_mul,
        BLOCK=block, num_warps=4)


def silu_mul(*, x, out, max_programs: int | None = None):
    """out = silu(x[:, :I]) * x[:, I:] (the halves are strided views, read in place)."""
    half = x.shape[-1] // 2
    _binary(x[..., :half], x[..., half:], out, silu_mul=True, max_programs=max_programs)


def add(*, a, b, out, max_programs: int | None = None):
    """out = a + b; out may alias a (each element is read before it is written, by one thread)."""
    _binary(a, b, out, silu_mul=False, max_programs=max_programs)


@triton.jit
def _cat_row(pid, grid, a, b, out, NA, NB, sam, san, sbm, sbn, som, son,
             BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr):
    """One row per work item: out[row] = a[row] | b[row]."""
    row = pid[0]
    ca = tl.arange(0, BLOCK_A)
    cb = tl.arange(0, BLOCK_B)
    va = tl.load(a + row * sam + ca * san, mask=ca < NA)
    vb = tl.load(b + row * sbm + cb * sbn, mask=cb < NB)
    tl.store(out + row * som + ca * son, va.to(out.dtype.element_ty), mask=ca < NA)
    tl.store(out + row * som + (NA + cb) * son, vb.to(out.dtype.element_ty), mask=cb < NB)


@triton.jit(do_not_specialize=["work0", "work1", "work2"])
def _cat_kernel(a, b, out, NA, NB, sam, san, sbm, sbn, som, son, work0, work1, work2,
                PERSISTENT: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr):
    each_work_item(_cat_row, (a, b, out, NA, NB, sam, san, sbm, sbn, som, son, BLOCK_A, BLOCK_B),
                   work0, work1, work2, PERSISTENT)


def cat(*, a, b, out, max_programs: int | None = None):
    """out = cat(a, b, -1), e.g. a [T, h, 512] and b [T, h, 64] -> out [T, h, 576]."""
    a, b, out = _rows(a), _rows(b), _rows(out)
    na, nb = a.shape[1], b.shape[1]
    plan = plan_grid((out.shape[0],), max_programs)
    _cat_kernel[plan.grid](
        a, b, out, na, nb, *a.stride(), *b.stride(), *out.stride(), **plan.args,
        BLOCK_A=triton.next_power_of_2(na), BLOCK_B=triton.next_power_of_2(nb), num_warps=4)


OPS = {"rmsnorm_add": rmsnorm_add, "rmsnorm": rmsnorm, "layernorm": layernorm,
       "silu_mul": silu_mul, "add": add, "cat": cat}
