"""Triton kernels of the NSA indexer: Hadamard rotation, ue8m0 FP8 quantisation, the paged
index-K cache store, the per-head weights and the paged MQA logits (the top-k slot selection
that follows them is `topk`).

Portable Triton only (NVIDIA and AMD). No kernel reads anything back to the host, so every op
captures into a CUDA/HIP graph; grids depend on shapes only.
"""

from __future__ import annotations


import torch
import triton
import triton.language as tl

from streamlab.kernels.quant import FP8, GROUP, SHUFFLE_TILE
from streamlab.kernels.triton.common import (INTERPRET, dot_operand, each_work_item, exact_cast,
                                             plan_grid, sm_count)

INTERPRETER_SMS = 4  # stands in for the SM count on the CPU: small grids, several chunks a row


# -- shared helpers -----------------------------------------------------------------------------

@triton.jit
def _ue8m0_quant(x, INTERPRET: tl.constexpr):
    """fp8 values and power-of-two scales of the rows of x [M, 128] (`quant_groups`, ue8m0).

    The scale max(amax, 1e-4) / 448 is rounded up to a power of two on its bits (exact, unlike
    an approximate log2); dividing by a power of two is exact too.
    """
    amax = tl.max(tl.abs(x), axis=1)
    raw = tl.math.div_rn(tl.maximum(amax, 1e-4), 448.0).to(tl.uint32, bitcast=True)
    scale = ((raw + 0x7FFFFF) & 0x7F800000).to(tl.float32, bitcast=True)
    return exact_cast(tl.math.div_rn(x, scale[:, None]), tl.float8e4nv, INTERPRET), scale


@triton.jit
def _row_offsets(r, heads, s_tok, s_head):
    """Element offset of row r of a [T, D] or [T, heads, D] (possibly strided) tensor."""
    return (r // heads).to(tl.int64) * s_tok + (r % heads) * s_head


def _rows(t: torch.Tensor, width: int) -> tuple[int, int, int, int]:
    """(rows, heads, token stride, head stride) of t seen as rows of `width` contiguous-ish
    elements, for `_row_offsets`: column slices and head views are used in place, never copied."""
    if t.shape[-1] != width or t.dim() not in (2, 3):
        raise ValueError(f"expected [T, {width}] or [T, h, {width}], got {tuple(t.shape)}")
    if t.dim() == 2:
        return t.shape[0], 1, t.stride(0), 0
    return t.shape[0] * t.shape[1], t.shape[1], t.stride(0), t.stride(1)


@triton.jit
def _k_offsets(s, d, HEAD_DIM: tl.constexpr, PRESHUFFLE: tl.constexpr):
    """Byte offsets of K (slot s, dim d) inside a page (`quant.k_byte_offsets`)."""
    if PRESHUFFLE:
        return ((s // 16) * (16 * HEAD_DIM) + (d // 16) * 256 + (s % 16) * 16 + d % 16)
    return s * HEAD_DIM + d


# -- hadamard -----------------------------------------------------------------------------------

@triton.jit
def _hadamard_rows(pid, grid, x, out, n_rows, x_heads, x_st, x_sh, x_sd, o_heads, o_st, o_sh,
                   o_sd, D: tl.constexpr, LOG_D: tl.constexpr, BLOCK_M: tl.constexpr,
                   INTERPRET: tl.constexpr):
    r = pid[0] * BLOCK_M + tl.arange(0, BLOCK_M)
    d = tl.arange(0, D)
    m = (r < n_rows)[:, None]
    v = tl.load(x + _row_offsets(r, x_heads, x_st, x_sh)[:, None] + d[None, :] * x_sd, mask=m,
                other=0.0)
    # Sylvester Hadamard matrix: H[i, j] = (-1)^popcount(i & j), exact in any float type
    ij = d[:, None] & d[None, :]
    parity = ij & 1
    for b in tl.static_range(1, LOG_D):
        parity ^= (ij >> b) & 1
    h = dot_operand(tl.where(parity == 0, 1.0, -1.0), v.dtype, INTERPRET)
    y = tl.dot(dot_operand(v, v.dtype, INTERPRET), h) * (D ** -0.5)
    tl.store(out + _row_offsets(r, o_heads, o_st, o_sh)[:, None] + d[None, :] * o_sd,
             exact_cast(y, out.dtype.element_ty, INTERPRET), mask=m)


@triton.jit(do_not_specialize=["work0", "work1", "work2"])
def _hadamard_kernel(x, out, n_rows, x_heads, x_st, x_sh, x_sd, o_heads, o_st, o_sh, o_sd,
                     work0, work1, work2, PERSISTENT: tl.constexpr, D: tl.constexpr,
                     LOG_D: tl.constexpr, BLOCK_M: tl.constexpr, INTERPRET: tl.constexpr):
    each_work_item(_hadamard_rows, (x, out, n_rows, x_heads, x_st, x_sh, x_sd, o_heads, o_st,
                                    o_sh, o_sd, D, LOG_D, BLOCK_M, INTERPRET),
                   work0, work1, work2, PERSISTENT)


def hadamard(*, x, out, max_programs: int | None = None):
    """Hadamard rotation of each head (tensor-core dot with the +-1 matrix), scaled dim^-0.5."""
    d = x.shape[-1]
    if d & (d - 1) or d < 16:
        raise ValueError(f"hadamard needs a power-of-two dim >= 16, got {d}")
    n, xh, xt, xs = _rows(x, d)
    _, oh, ot, os_ = _rows(out, d)
    block = 32
    plan = plan_grid((triton.cdiv(n, block),), max_programs)
    _hadamard_kernel[plan.grid](
        x, out, n, xh, xt, xs, x.stride(-1), oh, ot, os_, out.stride(-1), **plan.args,
        D=d, LOG_D=d.bit_length() - 1, BLOCK_M=block, INTERPRET=INTERPRET)


# -- act_quant ----------------------------------------------------------------------------------

@triton.jit
def _act_quant_groups(pid, grid, x, out, scale, n_groups, groups_per_row, x_heads, x_st, x_sh,
                      o_heads, o_st, o_sh, BLOCK_M: tl.constexpr, INTERPRET: tl.constexpr):
    g = pid[0] * BLOCK_M + tl.arange(0, BLOCK_M)  # flat group index
    row, col = g // groups_per_row, (g % groups_per_row) * 128
    d = tl.arange(0, 128)[None, :]
    m = (g < n_groups)[:, None]
    v = tl.load(x + (_row_offsets(row, x_heads, x_st, x_sh) + col)[:, None] + d, mask=m,
                other=0.0).to(tl.float32)
    q, s = _ue8m0_quant(v, INTERPRET)
    tl.store(out + (_row_offsets(row, o_heads, o_st, o_sh) + col)[:, None] + d, q, mask=m)
    tl.store(scale + g, s, mask=g < n_groups)


@triton.jit(do_not_specialize=["work0", "work1", "work2"])
def _act_quant_kernel(x, out, scale, n_groups, groups_per_row, x_heads, x_st, x_sh,
                      o_heads, o_st, o_sh, work0, work1, work2, PERSISTENT: tl.constexpr,
                      BLOCK_M: tl.constexpr, INTERPRET: tl.constexpr):
    each_work_item(_act_quant_groups, (x, out, scale, n_groups, groups_per_row, x_heads, x_st,
                                       x_sh, o_heads, o_st, o_sh, BLOCK_M, INTERPRET),
                   work0, work1, work2, PERSISTENT)


def act_quant(*, x, out, scale, max_programs: int | None = None):
    """Per-128 group fp8 quantisation with ue8m0 scales; scale is read in row-major group order."""
    k = x.shape[-1]
    if k % GROUP or x.stride(-1) != 1 or out.stride(-1) != 1:
        raise ValueError("act_quant needs a unit-stride last dim that is a multiple of 128")
    n, xh, xt, xs = _rows(x, k)
    _, oh, ot, os_ = _rows(out, k)
    groups = n * (k // GROUP)
    block = 16
    plan = plan_grid((triton.cdiv(groups, block),), max_programs)
    _act_quant_kernel[plan.grid](
        x, out, scale.view(-1), groups, k // GROUP, xh, xt, xs, oh, ot, os_, **plan.args,
        BLOCK_M=block, INTERPRET=INTERPRET)


# -- index K cache store ------------------------------------------------------------------------

@triton.jit
def _index_k_store_token(pid, grid, k, slot_mapping, cache_k, cache_s, s_k, s_page,
                         PAGE: tl.constexpr, HEAD_DIM: tl.constexpr, PRESHUFFLE: tl.constexpr,
                         INTERPRET: tl.constexpr):
    t = pid[0]
    slot = tl.load(slot_mapping + t).to(tl.int64)
    if slot >= 0:
        v = tl.load(k + t * s_k + tl.arange(0, HEAD_DIM)[None, :]).to(tl.float32)
        q, s = _ue8m0_quant(v, INTERPRET)
        page, i = slot // PAGE, slot % PAGE
        base = page * s_page  # byte offset of the page
        tl.store(cache_k + base + _k_offsets(i, tl.arange(0, HEAD_DIM)[None, :], HEAD_DIM,
                                            PRESHUFFLE), q)
        tl.store(cache_s + (base + PAGE * HEAD_DIM) // 4 + i + tl.arange(0, 1), s)


@triton.jit(do_not_specialize=["work0", "work1", "work2"])
def _index_k_store_kernel(k, slot_mapping, cache_k, cache_s, s_k, s_page, work0, work1, work2,
                          PERSISTENT: tl.constexpr, PAGE: tl.constexpr, HEAD_DIM: tl.constexpr,
                          PRESHUFFLE: tl.constexpr, INTERPRET: tl.constexpr):
    each_work_item(_index_k_store_token, (k, slot_mapping, cache_k, cache_s, s_k, s_page, PAGE,
                                          HEAD_DIM, PRESHUFFLE, INTERPRET),
                   work0, work1, work2, PERSISTENT)


def index_k_cache_store(*, k, slot_mapping, cache, preshuffle, max_programs: int | None = None):
    """Quantise K rows [T, 128] (ue8m0) into the paged index cache; negative slots are skipped."""
    pages, page, row = cache.shape
    head_dim = row - 4
    if head_dim != GROUP or k.shape[-1] != head_dim or k.stride(-1) != 1 or (
            not cache.is_contiguous()):
        raise ValueError("index cache needs unit-stride K rows of 128 and a contiguous "
                         "[pages, page, 132] cache")
    if preshuffle and page % SHUFFLE_TILE:
        raise ValueError(f"preshuffled index cache needs a page size multiple of 16, got {page}")
    plan = plan_grid((k.shape[0],), max_programs)
    _index_k_store_kernel[plan.grid](
        k, slot_mapping, cache.view(FP8), cache.view(torch.float32), k.stride(0), page * row,
        **plan.args, PAGE=page, HEAD_DIM=head_dim, PRESHUFFLE=bool(preshuffle), INTERPRET=INTERPRET)


# -- index weights ------------------------------------------------------------------------------

@triton.jit
def _weights_scale_token(pid, grid, w, q_scale, out, n_heads, s_w, s_q, s_o, factor,
                         BLOCK_H: tl.constexpr):
    t = pid[0]
    h = tl.arange(0, BLOCK_H)
    m = h < n_heads
    a = tl.load(w + t * s_w + h, mask=m).to(tl.float32)
    b = tl.load(q_scale + t * s_q + h, mask=m).to(tl.float32)
    tl.store(out + t * s_o + h, a * b * factor, mask=m)


@triton.jit(do_not_specialize=["work0", "work1", "work2"])
def _weights_scale_kernel(w, q_scale, out, n_heads, s_w, s_q, s_o, factor, work0, work1, work2,
                          PERSISTENT: tl.constexpr, BLOCK_H: tl.constexpr):
    each_work_item(_weights_scale_token, (w, q_scale, out, n_heads, s_w, s_q, s_o, factor,
                                          BLOCK_H), work0, work1, work2, PERSISTENT)


def index_weights_scale(*, w, q_scale, out, factor, max_programs: int | None = None):
    """out = w * q_scale * factor: folds q's fp8 scale and the softmax factors into the weights."""
    t, h = out.shape
    if w.stride(-1) != 1 or q_scale.stride(-1) != 1 or out.stride(-1) != 1:
        raise ValueError("index_weights_scale needs unit-stride heads")
    plan = plan_grid((t,), max_programs)
    _weights_scale_kernel[plan.grid](w, q_scale, out, h, w.stride(0), q_scale.stride(0),
                                     out.stride(0), float(factor), **plan.args,
                                     BLOCK_H=triton.next_power_of_2(h))


# -- paged MQA logits ---------------------------------------------------------------------------

@triton.jit
def _paged_mqa_logits_chunk(pid, grid, q, weights, cache_k, cache_s, block_table, seq_lens, out,
                            n_heads, pages_per_seq, pages_per_prog,
                            s_qt, s_qh, s_wt, s_bt, s_ot, s_page,
                            PAGE: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_H: tl.constexpr,
                            PRESHUFFLE: tl.constexpr, INTERPRET: tl.constexpr):
    b = pid[0]
    h = tl.arange(0, BLOCK_H)
    d = tl.arange(0, HEAD_DIM)
    s = tl.arange(0, PAGE)
    hm = h < n_heads
    qv = tl.load(q + b * s_qt + h[:, None] * s_qh + d[None, :], mask=hm[:, None], other=0.0)
    qv = dot_operand(qv, qv.dtype, INTERPRET)
    w = tl.load(weights + b * s_wt + h, mask=hm, other=0.0)
    n = tl.load(seq_lens + b)
    k_offs = _k_offsets(s[:, None], d[None, :], HEAD_DIM, PRESHUFFLE)
    first = pid[1] * pages_per_prog
    for p in range(first, tl.minimum(first + pages_per_prog, pages_per_seq)):
        t = p * PAGE + s
        valid = t < n  # pages and rows past the context are not read at all
        page = tl.load(block_table + b * s_bt + p, mask=p * PAGE < n, other=0).to(tl.int64)
        kv = tl.load(cache_k + page * s_page + k_offs, mask=valid[:, None], other=0.0)
        ks = tl.load(cache_s + (page * s_page + PAGE * HEAD_DIM) // 4 + s, mask=valid, other=0.0)
        kv = dot_operand(kv, kv.dtype, INTERPRET)
        # [page, heads]: the page is the MMA's M (64 fills a Hopper warpgroup MMA), heads its N
        score = tl.dot(kv, tl.trans(qv)) * ks[:, None]
        logit = tl.sum(tl.maximum(score, 0.0) * w[None, :], axis=1)
        tl.store(out + b * s_ot + t, tl.where(valid, logit, float("-inf")))


@triton.jit(do_not_specialize=["work0", "work1", "work2"])
def _paged_mqa_logits_kernel(q, weights, cache_k, cache_s, block_table, seq_lens, out,
                             n_heads, pages_per_seq, pages_per_prog,
                             s_qt, s_qh, s_wt, s_bt, s_ot, s_page, work0, work1, work2,
                             PERSISTENT: tl.constexpr, PAGE: tl.constexpr,
                             HEAD_DIM: tl.constexpr, BLOCK_H: tl.constexpr,
                             PRESHUFFLE: tl.constexpr, INTERPRET: tl.constexpr):
    each_work_item(_paged_mqa_logits_chunk,
                   (q, weights, cache_k, cache_s, block_table, seq_lens, out, n_heads,
                    pages_per_seq, pages_per_prog, s_qt, s_qh, s_wt, s_bt, s_ot, s_page, PAGE,
                    HEAD_DIM, BLOCK_H, PRESHUFFLE, INTERPRET),
                   work0, work1, work2, PERSISTENT)


def paged_mqa_logits(*, q, weights, cache, block_table, seq_lens, out, preshuffle,
                     max_programs: int | None = None):
    """Indexer logits of every context position, -inf past each row's length.

    Grid (token, chunk of pages): chunks are sized from the shape alone so that about four
    programs per SM are in flight at any batch; each program keeps its token's fp8 q [heads, 128]
    in registers and walks its pages through the block table, one fp8 tensor-core dot per page.
    """
    t, heads, head_dim = q.shape
    _, page, row = cache.shape
    pages_per_seq = block_table.shape[1]
    if row != head_dim + 4 or page & (page - 1) or page < 16 or not cache.is_contiguous():
        raise ValueError(f"unsupported index cache {tuple(cache.shape)} for q {tuple(q.shape)}")
    if out.shape[1] != pages_per_seq * page or q.stride(-1) != 1 or out.stride(-1) != 1:
        raise ValueError("logits must be [T, pages_per_seq * page] with unit-stride rows")
    per_prog = triton.cdiv(t * pages_per_seq, 4 * sm_count(q.device, off_gpu=INTERPRETER_SMS))
    plan = plan_grid((t, triton.cdiv(pages_per_seq, per_prog)), max_programs)
    _paged_mqa_logits_kernel[plan.grid](
        q, weights, cache.view(FP8), cache.view(torch.float32), block_table, seq_lens, out,
        heads, pages_per_seq, per_prog, q.stride(0), q.stride(1), weights.stride(0),
        block_table.stride(0), out.stride(0), page * row, **plan.args,
        PAGE=page, HEAD_DIM=head_dim, BLOCK_H=max(16, triton.next_power_of_2(heads)),
        PRESHUFFLE=bool(preshuffle), INTERPRET=INTERPRET, num_warps=4)


OPS = {"hadamard": hadamard, "act_quant": act_quant, "index_k_cache_store": index_k_cache_store,
       "index_weights_scale": index_weights_scale, "paged_mqa_logits": paged_mqa_logits}
