"""Triton kernels of the NSA indexer: Hadamard rotation, ue8m0 FP8 quantisation, the paged
index-K cache store, the per-head weights, the paged MQA logits and the top-k slot selection.

Portable Triton only (NVIDIA and AMD). No kernel reads anything back to the host, so every op
captures into a CUDA/HIP graph; grids depend on shapes only.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from streamlab.kernels.quant import FP8, GROUP, SHUFFLE_TILE
from streamlab.kernels.triton.common import INTERPRET, dot_operand, exact_cast, workspace

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
def _hadamard_kernel(x, out, n_rows, x_heads, x_st, x_sh, x_sd, o_heads, o_st, o_sh, o_sd,
                     D: tl.constexpr, LOG_D: tl.constexpr, BLOCK_M: tl.constexpr,
                     INTERPRET: tl.constexpr):
    r = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
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


def hadamard(*, x, out):
    """Hadamard rotation of each head (tensor-core dot with the +-1 matrix), scaled dim^-0.5."""
    d = x.shape[-1]
    if d & (d - 1) or d < 16:
        raise ValueError(f"hadamard needs a power-of-two dim >= 16, got {d}")
    n, xh, xt, xs = _rows(x, d)
    _, oh, ot, os_ = _rows(out, d)
    block = 32
    _hadamard_kernel[(triton.cdiv(n, block),)](
        x, out, n, xh, xt, xs, x.stride(-1), oh, ot, os_, out.stride(-1),
        D=d, LOG_D=d.bit_length() - 1, BLOCK_M=block, INTERPRET=INTERPRET)


# -- act_quant ----------------------------------------------------------------------------------

@triton.jit
def _act_quant_kernel(x, out, scale, n_groups, groups_per_row, x_heads, x_st, x_sh,
                      o_heads, o_st, o_sh, BLOCK_M: tl.constexpr, INTERPRET: tl.constexpr):
    g = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # flat group index
    row, col = g // groups_per_row, (g % groups_per_row) * 128
    d = tl.arange(0, 128)[None, :]
    m = (g < n_groups)[:, None]
    v = tl.load(x + (_row_offsets(row, x_heads, x_st, x_sh) + col)[:, None] + d, mask=m,
                other=0.0).to(tl.float32)
    q, s = _ue8m0_quant(v, INTERPRET)
    tl.store(out + (_row_offsets(row, o_heads, o_st, o_sh) + col)[:, None] + d, q, mask=m)
    tl.store(scale + g, s, mask=g < n_groups)


def act_quant(*, x, out, scale):
    """Per-128 group fp8 quantisation with ue8m0 scales; scale is read in row-major group order."""
    k = x.shape[-1]
    if k % GROUP or x.stride(-1) != 1 or out.stride(-1) != 1:
        raise ValueError("act_quant needs a unit-stride last dim that is a multiple of 128")
    n, xh, xt, xs = _rows(x, k)
    _, oh, ot, os_ = _rows(out, k)
    groups = n * (k // GROUP)
    block = 16
    _act_quant_kernel[(triton.cdiv(groups, block),)](
        x, out, scale.view(-1), groups, k // GROUP, xh, xt, xs, oh, ot, os_,
        BLOCK_M=block, INTERPRET=INTERPRET)


# -- index K cache store ------------------------------------------------------------------------

@triton.jit
def _index_k_store_kernel(k, slot_mapping, cache_k, cache_s, s_k, s_page,
                          PAGE: tl.constexpr, HEAD_DIM: tl.constexpr, PRESHUFFLE: tl.constexpr,
                          INTERPRET: tl.constexpr):
    t = tl.program_id(0)
    slot = tl.load(slot_mapping + t).to(tl.int64)
    if slot >= 0:
        v = tl.load(k + t * s_k + tl.arange(0, HEAD_DIM)[None, :]).to(tl.float32)
        q, s = _ue8m0_quant(v, INTERPRET)
        page, i = slot // PAGE, slot % PAGE
        base = page * s_page  # byte offset of the page
        tl.store(cache_k + base + _k_offsets(i, tl.arange(0, HEAD_DIM)[None, :], HEAD_DIM,
                                            PRESHUFFLE), q)
        tl.store(cache_s + (base + PAGE * HEAD_DIM) // 4 + i + tl.arange(0, 1), s)


def index_k_cache_store(*, k, slot_mapping, cache, preshuffle):
    """Quantise K rows [T, 128] (ue8m0) into the paged index cache; negative slots are skipped."""
    pages, page, row = cache.shape
    head_dim = row - 4
    if head_dim != GROUP or k.shape[-1] != head_dim or k.stride(-1) != 1 or (
            not cache.is_contiguous()):
        raise ValueError("index cache needs unit-stride K rows of 128 and a contiguous "
                         "[pages, page, 132] cache")
    if preshuffle and page % SHUFFLE_TILE:
        raise ValueError(f"preshuffled index cache needs a page size multiple of 16, got {page}")
    _index_k_store_kernel[(k.shape[0],)](
        k, slot_mapping, cache.view(FP8), cache.view(torch.float32), k.stride(0), page * row,
        PAGE=page, HEAD_DIM=head_dim, PRESHUFFLE=bool(preshuffle), INTERPRET=INTERPRET)


# -- index weights ------------------------------------------------------------------------------

@triton.jit
def _weights_scale_kernel(w, q_scale, out, n_heads, s_w, s_q, s_o, factor, BLOCK_H: tl.constexpr):
    t = tl.program_id(0)
    h = tl.arange(0, BLOCK_H)
    m = h < n_heads
    a = tl.load(w + t * s_w + h, mask=m).to(tl.float32)
    b = tl.load(q_scale + t * s_q + h, mask=m).to(tl.float32)
    tl.store(out + t * s_o + h, a * b * factor, mask=m)


def index_weights_scale(*, w, q_scale, out, factor):
    """out = w * q_scale * factor: folds q's fp8 scale and the softmax factors into the weights."""
    t, h = out.shape
    if w.stride(-1) != 1 or q_scale.stride(-1) != 1 or out.stride(-1) != 1:
        raise ValueError("index_weights_scale needs unit-stride heads")
    _weights_scale_kernel[(t,)](w, q_scale, out, h, w.stride(0), q_scale.stride(0), out.stride(0),
                                float(factor), BLOCK_H=triton.next_power_of_2(h))


# -- paged MQA logits ---------------------------------------------------------------------------

@triton.jit
def _paged_mqa_logits_kernel(q, weights, cache_k, cache_s, block_table, seq_lens, out,
                             n_heads, pages_per_seq, pages_per_prog,
                             s_qt, s_qh, s_wt, s_bt, s_ot, s_page,
                             PAGE: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_H: tl.constexpr,
                             PRESHUFFLE: tl.constexpr, INTERPRET: tl.constexpr):
    b = tl.program_id(0)
    h = tl.arange(0, BLOCK_H)
    d = tl.arange(0, HEAD_DIM)
    s = tl.arange(0, PAGE)
    hm = h < n_heads
    qv = tl.load(q + b * s_qt + h[:, None] * s_qh + d[None, :], mask=hm[:, None], other=0.0)
    qv = dot_operand(qv, qv.dtype, INTERPRET)
    w = tl.load(weights + b * s_wt + h, mask=hm, other=0.0)
    n = tl.load(seq_lens + b)
    k_offs = _k_offsets(s[:, None], d[None, :], HEAD_DIM, PRESHUFFLE)
    first = tl.program_id(1) * pages_per_prog
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


@functools.lru_cache(maxsize=None)
def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return INTERPRETER_SMS


def paged_mqa_logits(*, q, weights, cache, block_table, seq_lens, out, preshuffle):
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
    per_prog = triton.cdiv(t * pages_per_seq, 4 * _num_sms(q.device))
    grid = (t, triton.cdiv(pages_per_seq, per_prog))
    _paged_mqa_logits_kernel[grid](
        q, weights, cache.view(FP8), cache.view(torch.float32), block_table, seq_lens, out,
        heads, pages_per_seq, per_prog, q.stride(0), q.stride(1), weights.stride(0),
        block_table.stride(0), out.stride(0), page * row,
        PAGE=page, HEAD_DIM=head_dim, BLOCK_H=max(16, triton.next_power_of_2(heads)),
        PRESHUFFLE=bool(preshuffle), INTERPRET=INTERPRET, num_warps=4)


# -- top-k slots --------------------------------------------------------------------------------
#
# One program per row, the row's logits held in registers (a tile of up to 16384 per program;
# longer rows are walked tile by tile, reloading at each phase). The k-th largest order-preserving
# uint32 key is found in a few block-wide steps instead of 32 bit-by-bit counts over the row:
#   1. bounds: the k-th largest is <= the row's max, and >= the smallest maximum over any k
#      disjoint groups (quads when n >= 4k, pairs when n >= 2k, single keys when n >= k);
#   2. a histogram round over the row: bins linear in the fp32 value between the bounds (the
#      first rounds; later ones, or when the value range is not finite or tiny, radix digits of
#      the key's offset) place every key; the bin holding the k-th largest gives new bounds.
#      Binning is monotone, so the bins above it hold only selected keys. Repeated while that
#      bin holds more than CAP keys (typical logits leave ~100 of 8192 after one round at 128
#      bins; a heavy-tailed row may need a second);
#   3. the (at most CAP) keys of that bin are compacted into a per-row scratch and the k-th
#      largest found exactly among them, by the same histogram rounds in registers (or by
#      pairwise ranks);
#   4. placement: keys above it in position order, then keys equal to it in position order up
#      to k, mapped through the block table (read into registers at the start); -1 pads rows
#      shorter than k.
# Everything is deterministic; nothing is read back to the host. Each block-wide step costs
# about a microsecond on an H200 (a masked histogram of 8192 keys ~2.5 us, a prefix sum ~1 us:
# bench/tune_indexer_attention.py --only probe), which is what bounds this design at ~18 us.

@triton.jit
def _key(v):
    """Order-preserving uint32 key of fp32 v (a < b iff key(a) < key(b); -0 < +0)."""
    bits = v.to(tl.uint32, bitcast=True)
    return bits ^ tl.where((bits >> 31) != 0, 0xFFFFFFFF, 0x80000000)


@triton.jit
def _value(key):
    """fp32 value of a key (inverse of `_key`)."""
    bits = key ^ tl.where((key >> 31) != 0, 0x80000000, 0xFFFFFFFF)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _tile(row, start, n, row_len, BLOCK: tl.constexpr):
    """Positions, keys (0, below every real key, past n), values and validity of one tile. The
    load is masked by the row's padded length (a multiple of the page, so loads vectorise)."""
    offs = start + tl.arange(0, BLOCK)
    v = tl.load(row + offs, mask=offs < row_len, other=0.0)
    valid = offs < n
    key = tl.where(valid, _key(v), tl.zeros_like(v.to(tl.uint32, bitcast=True)))
    return offs, key, v, valid


@triton.jit
def _bounds_combine(a0, a1, a2, a3, b0, b1, b2, b3):
    return tl.minimum(a0, b0), tl.minimum(a1, b1), tl.minimum(a2, b2), tl.maximum(a3, b3)


@triton.jit
def _tile_bounds(key, valid, start, n, BLOCK: tl.constexpr):
    """(min key, min over whole pairs of the pair max, min over whole quads of the quad max, max
    key) over the valid keys of a tile; groups are aligned runs of positions."""
    quad_max = tl.max(tl.reshape(key, [BLOCK // 4, 4]), 1)
    pair_max = tl.max(tl.reshape(key, [BLOCK // 2, 2]), 1)
    pair_max = tl.where(start + 2 * tl.arange(0, BLOCK // 2) + 1 < n, pair_max, 0xFFFFFFFF)
    lo_pair = tl.min(tl.reshape(pair_max, [BLOCK // 4, 2]), 1)
    lo_quad = tl.where(start + 4 * tl.arange(0, BLOCK // 4) + 3 < n, quad_max, 0xFFFFFFFF)
    lo_one = tl.min(tl.reshape(tl.where(valid, key, 0xFFFFFFFF), [BLOCK // 4, 4]), 1)
    return tl.reduce((lo_one, lo_pair, lo_quad, quad_max), 0, _bounds_combine)


@triton.jit
def _tile_digits(key, v, valid, klo, khi, lo_f, scale, shift, use_float, BINS: tl.constexpr):
    """Bin of every key of a tile: [0, BINS-2] for keys in [klo, khi] (monotone), BINS-1 for keys
    above khi; also (in range, counted) masks."""
    inr = valid & (key >= klo) & (key <= khi)
    if use_float:
        d = tl.minimum(tl.where(inr, (v - lo_f) * scale, 0.0).to(tl.int32), BINS - 2)
    else:
        d = ((key - klo) >> shift).to(tl.int32)
    above = valid & (key > khi)
    return tl.where(inr, d, BINS - 1), inr, inr | above


@triton.jit
def _add3(a0, a1, a2, b0, b1, b2):
    return a0 + b0, a1 + b1, a2 + b2


@triton.jit
def _split_bins(hist, k):
    """The bin holding the k-th largest key (bins ascend with the key): its index, the number of
    keys in the bins above it, and in it."""
    suffix = tl.cumsum(hist, 0, reverse=True)  # keys in this bin or above
    ge = suffix >= k
    at = ge & (suffix - hist < k)
    n_ge, n_above, m = tl.reduce((ge.to(tl.int32), tl.where(ge, 0, hist), tl.where(at, hist, 0)),
                                 0, _add3)
    return n_ge - 1, n_above, m


@triton.jit
def _minmax(a0, a1, b0, b1):
    return tl.minimum(a0, b0), tl.maximum(a1, b1)


@triton.jit
def _tile_bin_range(key, v, valid, klo, khi, lo_f, scale, shift, use_float, bstar,
                    BINS: tl.constexpr):
    d, inr, _ = _tile_digits(key, v, valid, klo, khi, lo_f, scale, shift, use_float, BINS)
    cand = inr & (d == bstar)
    return tl.reduce((tl.where(cand, key, 0xFFFFFFFF), tl.where(cand, key, 0)), 0, _minmax)


@triton.jit
def _tile_compact(key, v, valid, klo, khi, lo_f, scale, shift, use_float, bstar, work, base,
                  BINS: tl.constexpr):
    """Store the keys of bin `bstar` at work[base:]; returns how many."""
    d, inr, _ = _tile_digits(key, v, valid, klo, khi, lo_f, scale, shift, use_float, BINS)
    cand = (inr & (d == bstar)).to(tl.int32)
    dst = base + tl.cumsum(cand, 0) - 1
    tl.store(work + dst, key.to(tl.int32, bitcast=True), mask=cand != 0)
    return tl.sum(cand, 0)


@triton.jit
def _kth_of_candidates(work, m, need, CAP: tl.constexpr, PAIR: tl.constexpr):
    """The need-th largest of the m <= CAP keys in work, and how many of them are above it
    (pairwise ranks)."""
    i = tl.arange(0, CAP)
    ci = tl.load(work + i, mask=i < m, other=0, cache_modifier=".cg").to(tl.uint32, bitcast=True)
    n_ge = tl.zeros([CAP], tl.int32)  # candidates >= candidate i
    for j0 in tl.static_range(0, CAP, PAIR):
        if j0 < m:
            j = j0 + tl.arange(0, PAIR)
            cj = tl.load(work + j, mask=j < m, other=0, cache_modifier=".cg").to(tl.uint32,
                                                                               bitcast=True)
            ge = (cj[None, :] >= ci[:, None]) & (j < m)[None, :]
            n_ge += tl.sum(ge.to(tl.int32), 1)
    thr = tl.max(tl.where((i < m) & (n_ge >= need), ci, 0), 0)
    return thr, tl.sum(((i < m) & (ci > thr)).to(tl.int32), 0)


@triton.jit
def _round_params(klo, khi, rnd, FLOAT_ROUNDS: tl.constexpr, BINS: tl.constexpr,
                  LOG_BINS: tl.constexpr):
    """Binning of the keys in [klo, khi] for round `rnd`: linear in the fp32 value for the first
    FLOAT_ROUNDS rounds when that range is finite and not tiny, else radix digits of the key's
    offset from klo (each such round shrinks the key span at least BINS/2 times)."""
    lo_f = _value(klo)
    span_f = _value(khi) - lo_f
    use_float = (rnd < FLOAT_ROUNDS) & (span_f > 1e-30) & (span_f < 1e38)
    scale = (BINS - 1) / tl.where(use_float, span_f, 1.0)
    bits = (khi - klo).to(tl.float32).to(tl.uint32, bitcast=True)
    bit_len = ((bits >> 23) & 0xFF).to(tl.int32) - 126  # >= the bit length of the span
    shift = tl.maximum(bit_len - (LOG_BINS - 1), 0).to(tl.uint32)  # digits < BINS / 2
    return lo_f, scale, shift, use_float


@triton.jit
def _kth_by_rounds(work, m, need, CAP: tl.constexpr, BINS: tl.constexpr,
                   LOG_BINS: tl.constexpr, FLOAT_ROUNDS: tl.constexpr):
    """The need-th largest of the m <= CAP keys in work (1 <= need <= m), and how many of them
    are above it: histogram rounds over the candidates held in registers until one key is
    left."""
    j = tl.arange(0, CAP)
    valid = j < m
    key = tl.load(work + j, mask=valid, other=0, cache_modifier=".cg").to(tl.uint32,
                                                                         bitcast=True)
    v = _value(key)
    klo, khi = tl.reduce((tl.where(valid, key, 0xFFFFFFFF), key), 0, _minmax)
    n_above = tl.zeros((), tl.int32)
    rnd = tl.zeros((), tl.int32)
    while klo < khi:
        lo_f, scale, shift, use_float = _round_params(klo, khi, rnd, FLOAT_ROUNDS, BINS,
                                                      LOG_BINS)
        d, inr, counted = _tile_digits(key, v, valid, klo, khi, lo_f, scale, shift, use_float,
                                       BINS)
        bstar, n_above, _ = _split_bins(tl.histogram(d, BINS, mask=counted), need)
        cand = inr & (d == bstar)
        klo, khi = tl.reduce((tl.where(cand, key, 0xFFFFFFFF), tl.where(cand, key, 0)), 0,
                             _minmax)
        rnd += 1
    return klo, n_above


@triton.jit
def _tile_place(offs, key, valid, thr, take_all, n_gt, k, base_above, base_tied, table_row,
                out_row, pages, PAGE: tl.constexpr, PAGES_IN_REGS: tl.constexpr):
    """Write the slots of a tile's selected positions: keys above thr fill [0, n_gt) and keys
    equal to it fill [n_gt, k), each in position order. Returns the tile's counts of both. The
    row's block-table entries come from `pages` (held in registers) or from memory."""
    above = tl.where(take_all, valid, valid & (key > thr))
    tied = tl.where(take_all, offs < 0, valid & (key == thr))
    packed = above.to(tl.int32) + (tied.to(tl.int32) << 16)  # tiles hold < 2^16 positions
    csum = tl.cumsum(packed, 0)
    dst_tied = n_gt + base_tied + (csum >> 16) - 1
    dst = tl.where(above, base_above + (csum & 0xFFFF) - 1, dst_tied)
    keep = above | (tied & (dst_tied < k))
    if PAGES_IN_REGS:
        page = tl.gather(pages, offs // PAGE, 0)
    else:
        page = tl.load(table_row + offs // PAGE, mask=keep, other=0)
    tl.store(out_row + dst, page * PAGE + offs % PAGE, mask=keep)
    total = tl.sum(packed, 0)
    return total & 0xFFFF, total >> 16


@triton.jit
def _topk_slots_kernel(logits, block_table, seq_lens, out, scratch, k, row_len, s_l, s_bt, s_o,
                       PAGE: tl.constexpr, BLOCK: tl.constexpr, BINS: tl.constexpr,
                       LOG_BINS: tl.constexpr, CAP: tl.constexpr, PAIR: tl.constexpr,
                       FLOAT_ROUNDS: tl.constexpr, PICK_ROUNDS: tl.constexpr,
                       RESIDENT: tl.constexpr, NPAGES: tl.constexpr, PAGES_IN_REGS: tl.constexpr,
                       PHASES: tl.constexpr):
    b = tl.program_id(0)
    row = logits + b.to(tl.int64) * s_l
    table_row = block_table + b.to(tl.int64) * s_bt
    out_row = out + b.to(tl.int64) * s_o
    work = scratch + b.to(tl.int64) * CAP
    n = tl.load(seq_lens + b)
    n_tiles = tl.cdiv(n, BLOCK)
    take_all = n <= k

    # 1. bounds of the k-th largest key
    if RESIDENT:
        offs0, key0, v0, valid0 = _tile(row, 0, n, row_len, BLOCK)
        if PAGES_IN_REGS:  # the row's block-table entries, read while the selection runs
            p = tl.arange(0, NPAGES)
            pages = tl.load(table_row + p, mask=p * PAGE < row_len, other=0)
        lo_one, lo_pair, lo_quad, hi = _tile_bounds(key0, valid0, 0, n, BLOCK)
    else:
        lo_one = tl.full((), 0xFFFFFFFF, tl.uint32)
        lo_pair = lo_one
        lo_quad = lo_one
        hi = tl.zeros((), tl.uint32)
        for t in range(n_tiles):
            offs, key, v, valid = _tile(row, t * BLOCK, n, row_len, BLOCK)
            a, p, q, h = _tile_bounds(key, valid, t * BLOCK, n, BLOCK)
            lo_one = tl.minimum(lo_one, a)
            lo_pair = tl.minimum(lo_pair, p)
            lo_quad = tl.minimum(lo_quad, q)
            hi = tl.maximum(hi, h)
    klo = tl.where(n // 2 >= k, tl.maximum(lo_one, lo_pair), lo_one)
    klo = tl.where(n // 4 >= k, tl.maximum(klo, lo_quad), klo)
    khi = hi
    klo = tl.where(take_all, khi, klo)

    # 2. histogram rounds over the row until the bin of the k-th largest holds at most CAP keys
    # (typically one round), or a single key
    n_above = tl.zeros((), tl.int32)  # keys above the bin: all selected
    m = tl.zeros((), tl.int32)  # keys in the bin
    bstar = tl.zeros((), tl.int32)
    lo_f = tl.zeros((), tl.float32)
    scale = tl.zeros((), tl.float32)
    shift = tl.zeros((), tl.uint32)
    use_float = n < 0
    compact = n < 0
    rnd = tl.zeros((), tl.int32)
    go = klo < khi
    if PHASES < 2:  # (diagnostic: time the phases before)
        go = n < 0
    while go:
        lo_f, scale, shift, use_float = _round_params(klo, khi, rnd, FLOAT_ROUNDS, BINS,
                                                      LOG_BINS)
        if RESIDENT:
            d, _, counted = _tile_digits(key0, v0, valid0, klo, khi, lo_f, scale, shift,
                                         use_float, BINS)
            hist = tl.histogram(d, BINS, mask=counted)
        else:
            hist = tl.zeros([BINS], tl.int32)
            for t in range(n_tiles):
                offs, key, v, valid = _tile(row, t * BLOCK, n, row_len, BLOCK)
                d, _, counted = _tile_digits(key, v, valid, klo, khi, lo_f, scale, shift,
                                             use_float, BINS)
                hist += tl.histogram(d, BINS, mask=counted)
        bstar, n_above, m = _split_bins(hist, k)
        compact = m <= CAP
        go = m > CAP
        if go:
            if RESIDENT:
                klo, khi = _tile_bin_range(key0, v0, valid0, klo, khi, lo_f, scale, shift,
                                           use_float, bstar, BINS)
            else:
                nlo = tl.full((), 0xFFFFFFFF, tl.uint32)
                nhi = tl.zeros((), tl.uint32)
                for t in range(n_tiles):
                    offs, key, v, valid = _tile(row, t * BLOCK, n, row_len, BLOCK)
                    a, h = _tile_bin_range(key, v, valid, klo, khi, lo_f, scale, shift,
                                           use_float, bstar, BINS)
                    nlo = tl.minimum(nlo, a)
                    nhi = tl.maximum(nhi, h)
                klo = nlo
                khi = nhi
            go = klo < khi
        rnd += 1

    # 3. the k-th largest: the single key left, or found among the bin's keys compacted into
    # the row's scratch
    thr = klo
    n_gt = n_above  # keys above thr
    if PHASES < 3:
        compact = n < 0
    if CAP == 0:  # rounds over the row ran until one key was left
        compact = n < 0
    elif compact:
        if RESIDENT:
            _tile_compact(key0, v0, valid0, klo, khi, lo_f, scale, shift, use_float, bstar, work,
                          0, BINS)
        else:
            base = tl.zeros((), tl.int32)
            for t in range(n_tiles):
                offs, key, v, valid = _tile(row, t * BLOCK, n, row_len, BLOCK)
                base += _tile_compact(key, v, valid, klo, khi, lo_f, scale, shift, use_float,
                                      bstar, work, base, BINS)
        tl.debug_barrier()  # the scratch written by every thread is read by every thread
        if PICK_ROUNDS:
            thr, gt = _kth_by_rounds(work, m, k - n_above, CAP, BINS, LOG_BINS, FLOAT_ROUNDS)
        else:
            thr, gt = _kth_of_candidates(work, m, k - n_above, CAP, PAIR)
        n_gt = n_above + gt

    # 4. placement, then -1 past min(n, k)
    if PHASES < 4:  # (diagnostic: keep the phases before alive)
        tl.store(out_row + tl.arange(0, 1), (thr + n_gt.to(tl.uint32)).to(tl.int32,
                                                                        bitcast=True)[None])
    elif RESIDENT:
        if not PAGES_IN_REGS:
            pages = table_row
        _tile_place(offs0, key0, valid0, thr, take_all, n_gt, k, 0, 0, table_row, out_row,
                    pages, PAGE, PAGES_IN_REGS)
    else:
        base_above = tl.zeros((), tl.int32)
        base_tied = tl.zeros((), tl.int32)
        for t in range(n_tiles):
            offs, key, v, valid = _tile(row, t * BLOCK, n, row_len, BLOCK)
            a, e = _tile_place(offs, key, valid, thr, take_all, n_gt, k, base_above, base_tied,
                               table_row, out_row, table_row, PAGE, False)
            base_above += a
            base_tied += e
    for start in range(0, k, BLOCK):
        j = start + tl.arange(0, BLOCK)
        tl.store(out_row + j, tl.full((BLOCK,), -1, tl.int32),
                 mask=(j >= tl.minimum(n, k)) & (j < k) & (PHASES >= 4))


# TOPK_WARPS_NOTE: alone, 8 and 16 warps take the same 18 us on an 8192-key row (H100), but
# inside the layer's graph 8 warps take 38 us and 16 take 21: the resident kernel is straight-line
# code (128 KB of SASS at 8 warps, 84 KB at 16, as 32 or 16 keys a thread are unrolled) fetched
# cold after the rest of the layer's kernels have run, so its instruction fetch, not its work,
# sets its time in the graph. 32 warps measured 25 us (H100, bench/results/h100-2026-11-21).
RESIDENT_MAX = 16384  # longest row kept in registers (32 fp32 a thread at 16 warps)
TILE = 8192  # tile of longer rows, reloaded at each phase
TOPK_BINS = 128  # 64 is a little faster per row, but more rows need a second round
TOPK_CAP = 256
TOPK_PAIR = 32
TOPK_PICK_ROUNDS = True  # candidates: histogram rounds in registers, else pairwise ranks


def _topk_launch(logits, block_table, seq_lens, out, *, resident_max=RESIDENT_MAX, tile=TILE,
                 bins=TOPK_BINS, cap=TOPK_CAP, pair=TOPK_PAIR, float_rounds=2,
                 pick_rounds=TOPK_PICK_ROUNDS, pages_in_regs=True, num_warps=None, phases=4):
    """`topk_slots` with its tuning exposed (tests and bench/tune_indexer_attention.py): bins per
    round, candidate capacity (0: rounds over the row until one key is left), pairwise block,
    value-linear rounds before key digits, how candidates are resolved, block table in
    registers, warps; `phases` < 4 stops early (diagnostic timing only: wrong output)."""
    page = logits.shape[1] // block_table.shape[1]
    if logits.stride(-1) != 1 or out.stride(-1) != 1 or out.dtype != torch.int32:
        raise ValueError("topk_slots needs unit-stride rows and int32 slots")
    if bins & (bins - 1) or bins < 64 or cap & (cap - 1) or (cap and pair > cap):
        raise ValueError(f"bad top-k tuning: bins {bins}, cap {cap}, pair {pair}")
    row_len = logits.shape[1]
    resident = row_len <= resident_max
    block = max(16, triton.next_power_of_2(row_len)) if resident else tile
    if num_warps is None:  # 16 at 8192: see TOPK_WARPS_NOTE
        num_warps = max(1, min(16, block // 512))
    rows = logits.shape[0]
    # candidate keys of each row, keyed by the output: nodes on concurrent streams never share
    # it (cap 0: rounds over the row until one key is left, no scratch)
    scratch = workspace(("topk_slots", out.data_ptr(), tuple(out.shape), "candidates"),
                        (rows, cap), torch.int32, logits.device) if cap else out
    _topk_slots_kernel[(rows,)](
        logits, block_table, seq_lens, out, scratch, out.shape[1],
        row_len, logits.stride(0), block_table.stride(0), out.stride(0), PAGE=page, BLOCK=block,
        BINS=bins, LOG_BINS=bins.bit_length() - 1, CAP=cap, PAIR=pair, FLOAT_ROUNDS=float_rounds,
        PICK_ROUNDS=pick_rounds, RESIDENT=resident,
        NPAGES=triton.next_power_of_2(triton.cdiv(block, page)),
        PAGES_IN_REGS=bool(pages_in_regs and resident), PHASES=phases, num_warps=num_warps)


def topk_slots(*, logits, block_table, seq_lens, out):
    """Top-k positions of each row mapped to KV slots, -1 past the row's length (any order: keys
    above the k-th largest in position order, then ties with it in position order).

    One program per row (see the comment above `_key`): bounds, a histogram round over the row
    held in registers, an exact selection among the few keys left in the threshold's bin, and a
    prefix-sum placement. Only rows' valid prefixes count; rows of any length work (longer than
    RESIDENT_MAX they are reloaded tile by tile at each phase).
    """
    _topk_launch(logits, block_table, seq_lens, out)


OPS = {"hadamard": hadamard, "act_quant": act_quant, "index_k_cache_store": index_k_cache_store,
       "index_weights_scale": index_weights_scale, "paged_mqa_logits": paged_mqa_logits,
       "topk_slots": topk_slots}
