"""Triton kernels for rotary embeddings and the MLA KV-cache write.

`rope` rotates q and k of one op in one launch; `rope_cat_cache` fuses the rope of q_pe and
k_pe with the concatenation into q_cat and the (fp8) cache store; `kv_cache_store` is that store
alone. Views are used in place through their strides; nothing synchronises with the host.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from streamlab.kernels.quant import FP8
from streamlab.kernels.triton.common import (INTERPRET, each_work_item, exact_cast, grid_size,
                                             plan_grid)

TILE = 4096  # elements per program: a few KiB of bf16, enough to keep loads in flight


@triton.jit
def _rotate(x_ptrs, d, s_d, mask, cs_row, ROPE_DIM: tl.constexpr, CS_HALF: tl.constexpr,
            INTERLEAVED: tl.constexpr):
    """fp32 values at x_ptrs (dims d) with dims < ROPE_DIM rotated by the cos|sin row cs_row.

    Each element's rotation partner is read directly (a second, cache-hitting load) instead of
    being shuffled in registers, so one code path serves any tile shape and both layouts.
    """
    half: tl.constexpr = ROPE_DIM // 2
    if INTERLEAVED:
        first = d % 2 == 0
        partner = d ^ 1
        freq = d // 2
    else:
        first = d < half
        partner = tl.where(first, d + half, d - half)
        freq = d % half
    rot = d < ROPE_DIM
    x = tl.load(x_ptrs, mask=mask, other=0.0).to(tl.float32)
    y = tl.load(x_ptrs + (partner - d) * s_d, mask=mask & rot, other=0.0).to(tl.float32)
    cos = tl.load(cs_row + freq, mask=rot, other=1.0)
    sin = tl.load(cs_row + CS_HALF + freq, mask=rot, other=0.0)
    return x * cos + tl.where(first, -y, y) * sin


@triton.jit
def _rope_rows(src, s_h, s_d, dst, o_h, o_d, rows, h0, head_dim, cs_row,
               ROPE_DIM: tl.constexpr, CS_HALF: tl.constexpr, INTERLEAVED: tl.constexpr,
               BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr, INTERPRET: tl.constexpr):
    h = h0 + tl.arange(0, BLOCK_H)[:, None]
    d = tl.arange(0, BLOCK_D)[None, :]
    m = (h < rows) & (d < head_dim)
    y = _rotate(src + h * s_h + d * s_d, d, s_d, m, cs_row, ROPE_DIM, CS_HALF, INTERLEAVED)
    tl.store(dst + h * o_h + d * o_d, exact_cast(y, dst.dtype.element_ty, INTERPRET), mask=m)


@triton.jit
def _rope_block(pid, grid, q, k, q_out, k_out, positions, cos_sin, n_heads, head_dim,
                s_qt, s_qh, s_qd, s_kt, s_kd, s_ot, s_oh, s_od, s_kot, s_kod, s_cs,
                ROPE_DIM: tl.constexpr, CS_HALF: tl.constexpr, INTERLEAVED: tl.constexpr,
                BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr, INTERPRET: tl.constexpr):
    t = pid[0]
    blk = pid[1]
    cs_row = cos_sin + tl.load(positions + t) * s_cs
    if blk < grid_size(grid, 1) - 1:  # a block of q heads
        _rope_rows(q + t * s_qt, s_qh, s_qd, q_out + t * s_ot, s_oh, s_od, n_heads,
                   blk * BLOCK_H, head_dim, cs_row, ROPE_DIM, CS_HALF, INTERLEAVED, BLOCK_H,
                   BLOCK_D, INTERPRET)
    else:  # the last work item of a token rotates k, a single row
        _rope_rows(k + t * s_kt, 0, s_kd, k_out + t * s_kot, 0, s_kod, 1, 0, head_dim, cs_row,
                   ROPE_DIM, CS_HALF, INTERLEAVED, BLOCK_H, BLOCK_D, INTERPRET)


@triton.jit(do_not_specialize=["work0", "work1", "work2"])
def _rope_kernel(q, k, q_out, k_out, positions, cos_sin, n_heads, head_dim,
                 s_qt, s_qh, s_qd, s_kt, s_kd, s_ot, s_oh, s_od, s_kot, s_kod, s_cs,
                 work0, work1, work2, PERSISTENT: tl.constexpr, ROPE_DIM: tl.constexpr,
                 CS_HALF: tl.constexpr, INTERLEAVED: tl.constexpr, BLOCK_H: tl.constexpr,
                 BLOCK_D: tl.constexpr, INTERPRET: tl.constexpr):
    each_work_item(_rope_block, (q, k, q_out, k_out, positions, cos_sin, n_heads, head_dim, s_qt,
                                 s_qh, s_qd, s_kt, s_kd, s_ot, s_oh, s_od, s_kot, s_kod, s_cs,
                                 ROPE_DIM, CS_HALF, INTERLEAVED, BLOCK_H, BLOCK_D, INTERPRET),
                   work0, work1, work2, PERSISTENT)


def _heads(x: torch.Tensor, head_dim: int) -> torch.Tensor:
    """[T, h*D] -> [T, h, D] as a view (no copy); [T, h, D] unchanged."""
    return x.unflatten(-1, (-1, head_dim)) if x.dim() == 2 else x


def rope(*, q, k, positions, cos_sin, q_out, k_out, rope_dim, interleaved,
         max_programs: int | None = None):
    """Rotate the first rope_dim dims of every q head and of k. Grid (token, head block + 1):
    the extra program of each token does k, so q and k share one launch."""
    d = k.shape[-1]
    q3, o3 = _heads(q, d), _heads(q_out, d)
    tokens, heads = q3.shape[:2]
    block_d = triton.next_power_of_2(d)
    block_h = min(triton.next_power_of_2(heads), max(1, TILE // block_d))
    plan = plan_grid((tokens, triton.cdiv(heads, block_h) + 1), max_programs)
    _rope_kernel[plan.grid](
        q3, k, o3, k_out, positions, cos_sin, heads, d,
        *q3.stride(), *k.stride(), *o3.stride(), *k_out.stride(), cos_sin.stride(0), **plan.args,
        ROPE_DIM=rope_dim, CS_HALF=cos_sin.shape[1] // 2, INTERLEAVED=bool(interleaved),
        BLOCK_H=block_h, BLOCK_D=block_d, INTERPRET=INTERPRET)


@triton.jit
def _store_scaled(ptrs, v, mask, scale, INTERPRET: tl.constexpr):
    """Store v / scale cast to the destination type (saturating for fp8)."""
    tl.store(ptrs, exact_cast(tl.math.div_rn(v, scale), ptrs.dtype.element_ty, INTERPRET),
             mask=mask)


@triton.jit
def _store_cat(dst, o_h, o_d, h, hm, nope, pe, scale, NOPE: tl.constexpr,
               BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, ROPE: tl.constexpr,
               INTERPRET: tl.constexpr):
    """dst[h, :] = cast(cat(nope, pe) / scale) for rows h of a [rows, NOPE + ROPE] output."""
    dn = tl.arange(0, BLOCK_N)[None, :]
    dr = tl.arange(0, BLOCK_R)[None, :]
    _store_scaled(dst + h * o_h + dn * o_d, nope, hm & (dn < NOPE), scale, INTERPRET)
    _store_scaled(dst + h * o_h + (NOPE + dr) * o_d, pe, hm & (dr < ROPE), scale, INTERPRET)


@triton.jit
def _cache_entry(t, slot, k_nope, s_knt, s_knd, pe, kv_scale, cache, s_slot, s_cd,
                 NOPE: tl.constexpr, ROPE: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_R: tl.constexpr, INTERPRET: tl.constexpr):
    """cache[slot] = cast(cat(k_nope[t], pe) / kv_scale)."""
    dn = tl.arange(0, BLOCK_N)[None, :]
    nope = tl.load(k_nope + t * s_knt + dn * s_knd, mask=dn < NOPE).to(tl.float32)
    _store_cat(cache + slot * s_slot, 0, s_cd, 0, True, nope, pe.to(tl.float32),
               tl.load(kv_scale), NOPE, BLOCK_N, BLOCK_R, ROPE, INTERPRET)


@triton.jit
def _rope_cat_cache_block(pid, grid, q_nope, q_pe, k_nope, k_pe, positions, slot_mapping,
                          cos_sin, kv_scale, q_out, cache, n_heads,
                          s_qnt, s_qnh, s_qnd, s_qpt, s_qph, s_qpd, s_knt, s_knd, s_kpt, s_kpd,
                          s_ot, s_oh, s_od, s_slot, s_cd, s_cs,
                          NOPE: tl.constexpr, ROPE: tl.constexpr, CS_HALF: tl.constexpr,
                          BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
                          INTERPRET: tl.constexpr):
    t = pid[0]
    blk = pid[1]
    dr = tl.arange(0, BLOCK_R)[None, :]
    cs_row = cos_sin + tl.load(positions + t) * s_cs
    if blk < grid_size(grid, 1) - 1:  # a block of q heads -> q_out
        dn = tl.arange(0, BLOCK_N)[None, :]
        h = blk * BLOCK_H + tl.arange(0, BLOCK_H)[:, None]
        hm = h < n_heads
        nope = tl.load(q_nope + t * s_qnt + h * s_qnh + dn * s_qnd, mask=hm & (dn < NOPE))
        pe = _rotate(q_pe + t * s_qpt + h * s_qph + dr * s_qpd, dr, s_qpd, hm & (dr < ROPE),
                     cs_row, ROPE, CS_HALF, True)
        _store_cat(q_out + t * s_ot, s_oh, s_od, h, hm, nope.to(tl.float32), pe, 1.0,
                   NOPE, BLOCK_N, BLOCK_R, ROPE, INTERPRET)
    else:  # the last work item of a token writes its cache entry
        slot = tl.load(slot_mapping + t).to(tl.int64)
        if slot >= 0:
            pe = _rotate(k_pe + t * s_kpt + dr * s_kpd, dr, s_kpd, dr < ROPE, cs_row, ROPE,
                         CS_HALF, True)
            pe = exact_cast(pe, k_pe.dtype.element_ty, INTERPRET)  # the reference rounds rope(k_pe)
            _cache_entry(t, slot, k_nope, s_knt, s_knd, pe, kv_scale, cache, s_slot, s_cd,
                         NOPE, ROPE, BLOCK_N, BLOCK_R, INTERPRET)


@triton.jit(do_not_specialize=["work0", "work1", "work2"])
def _rope_cat_cache_kernel(q_nope, q_pe, k_nope, k_pe, positions, slot_mapping, cos_sin,
                           kv_scale, q_out, cache, n_heads,
                           s_qnt, s_qnh, s_qnd, s_qpt, s_qph, s_qpd, s_knt, s_knd, s_kpt, s_kpd,
                           s_ot, s_oh, s_od, s_slot, s_cd, s_cs, work0, work1, work2,
                           PERSISTENT: tl.constexpr, NOPE: tl.constexpr, ROPE: tl.constexpr,
                           CS_HALF: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr,
                           BLOCK_R: tl.constexpr, INTERPRET: tl.constexpr):
    each_work_item(_rope_cat_cache_block,
                   (q_nope, q_pe, k_nope, k_pe, positions, slot_mapping, cos_sin, kv_scale, q_out,
                    cache, n_heads, s_qnt, s_qnh, s_qnd, s_qpt, s_qph, s_qpd, s_knt, s_knd, s_kpt,
                    s_kpd, s_ot, s_oh, s_od, s_slot, s_cd, s_cs, NOPE, ROPE, CS_HALF, BLOCK_H,
                    BLOCK_N, BLOCK_R, INTERPRET),
                   work0, work1, work2, PERSISTENT)


@triton.jit
def _kv_cache_store_token(pid, grid, k_nope, k_pe, slot_mapping, kv_scale, cache,
                          s_knt, s_knd, s_kpt, s_kpd, s_slot, s_cd,
                          NOPE: tl.constexpr, ROPE: tl.constexpr, BLOCK_N: tl.constexpr,
                          BLOCK_R: tl.constexpr, INTERPRET: tl.constexpr):
    t = pid[0]
    slot = tl.load(slot_mapping + t).to(tl.int64)
    if slot >= 0:
        dr = tl.arange(0, BLOCK_R)[None, :]
        pe = tl.load(k_pe + t * s_kpt + dr * s_kpd, mask=dr < ROPE)
        _cache_entry(t, slot, k_nope, s_knt, s_knd, pe, kv_scale, cache, s_slot, s_cd,
                     NOPE, ROPE, BLOCK_N, BLOCK_R, INTERPRET)


@triton.jit(do_not_specialize=["work0", "work1", "work2"])
def _kv_cache_store_kernel(k_nope, k_pe, slot_mapping, kv_scale, cache,
                           s_knt, s_knd, s_kpt, s_kpd, s_slot, s_cd, work0, work1, work2,
                           PERSISTENT: tl.constexpr, NOPE: tl.constexpr, ROPE: tl.constexpr,
                           BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, INTERPRET: tl.constexpr):
    each_work_item(_kv_cache_store_token, (k_nope, k_pe, slot_mapping, kv_scale, cache, s_knt,
                                           s_knd, s_kpt, s_kpd, s_slot, s_cd, NOPE, ROPE, BLOCK_N,
                                           BLOCK_R, INTERPRET),
                   work0, work1, work2, PERSISTENT)


def _cache_meta(k_nope, k_pe, kv_cache) -> dict:
    if kv_cache.dtype not in (FP8, torch.bfloat16):
        raise ValueError(f"kv cache must be fp8 e4m3fn or bf16, got {kv_cache.dtype}")
    nope, pe = k_nope.shape[-1], k_pe.shape[-1]
    return dict(NOPE=nope, ROPE=pe, BLOCK_N=triton.next_power_of_2(nope),
                BLOCK_R=triton.next_power_of_2(pe), INTERPRET=INTERPRET)


def rope_cat_cache(*, q_nope, q_pe, k_nope, k_pe, positions, slot_mapping, cos_sin, kv_scale,
                   q_out, kv_cache, max_programs: int | None = None):
    """q_out <- cat(q_nope, rope(q_pe)); kv_cache[slot] <- cast(cat(k_nope, rope(k_pe)) / scale),
    interleaved rope, negative slots skipped: one launch instead of rope + cat + store.
    Grid (token, head block + 1): q blocks write q_out, each token's last program its entry."""
    meta = _cache_meta(k_nope, k_pe, kv_cache)
    heads = q_out.shape[1]
    block_h = min(triton.next_power_of_2(heads), max(1, TILE // meta["BLOCK_N"]))
    plan = plan_grid((k_nope.shape[0], triton.cdiv(heads, block_h) + 1), max_programs)
    _rope_cat_cache_kernel[plan.grid](
        q_nope, q_pe, k_nope, k_pe, positions, slot_mapping, cos_sin, kv_scale, q_out, kv_cache,
        heads, *q_nope.stride(), *q_pe.stride(), *k_nope.stride(), *k_pe.stride(),
        *q_out.stride(), *kv_cache.stride(), cos_sin.stride(0), **plan.args,
        CS_HALF=cos_sin.shape[1] // 2, BLOCK_H=block_h, **meta)


def kv_cache_store(*, k_nope, k_pe, slot_mapping, kv_scale, kv_cache,
                   max_programs: int | None = None):
    """kv_cache[slot] <- cast(cat(k_nope, k_pe) / scale); negative slots skipped. One program
    per token."""
    plan = plan_grid((k_nope.shape[0],), max_programs)
    _kv_cache_store_kernel[plan.grid](
        k_nope, k_pe, slot_mapping, kv_scale, kv_cache, *k_nope.stride(), *k_pe.stride(),
        *kv_cache.stride(), **plan.args, **_cache_meta(k_nope, k_pe, kv_cache))


OPS = {"rope": rope, "rope_cat_cache": rope_cat_cache, "kv_cache_store": kv_cache_store}
