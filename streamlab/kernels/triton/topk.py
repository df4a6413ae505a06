"""Triton top-k of the NSA indexer: the k largest logits of each row, as KV-cache slots.

Every path finds the k-th largest order-preserving uint32 key of a row exactly, in a few
block-wide steps instead of 32 bit-by-bit counts over the row:
  1. bounds: the k-th largest is <= the row's max, and >= the smallest maximum over any k
     disjoint groups (quads when n >= 4k, pairs when n >= 2k, single keys when n >= k);
  2. a histogram round: bins linear in the fp32 value between the bounds (the first rounds;
     later ones, or when the value range is not finite or tiny, radix digits of the key's
     offset) place every key; the bin holding the k-th largest gives new bounds. Binning is
     monotone, so the bins above it hold only selected keys. Repeated while that bin holds more
     than CAP keys (typical logits leave ~100 of 8192 after one round at 128 bins);
  3. the (at most CAP) keys of that bin are compacted into a per-row scratch and the k-th
     largest found exactly among them (histogram rounds in registers, or pairwise ranks);
  4. placement: the selected keys' positions mapped through the block table; -1 pads rows
     shorter than k.

Two ways to spread that over the GPU:
- one program per row (`_topk_slots_kernel`): the row held in registers (rows longer than
  RESIDENT_MAX are walked tile by tile). Each block-wide step costs about a microsecond
  (a masked histogram of 8192 keys ~2.5 us, a prefix sum ~1 us on an H200), so a row takes
  ~18 us alone, and at decode there are only `batch` programs on a GPU of 132 SMs;
- chunks (the default for rows longer than a chunk): the row is cut into chunks of CHUNK keys,
  one program each, and steps 1-2 become three launches: chunk bounds, chunk histograms of
  the first round, then each chunk places its keys above the threshold's bin and compacts
  that bin's keys; the last chunk of the row to arrive finds the k-th among them and places
  them. A row whose first-round bin holds more than CAP keys (or that needs no selection,
  n <= k) is finished whole by that last program, walking the row tile by tile, so every row
  gets the exact answer either way.

The order within a row's k slots is not the reference's (descending) and differs between the
paths; each path's order is a pure function of the logits, so graph replays and layouts agree
bit for bit. Nothing is read back to the host; grids depend on shapes only.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from streamlab.kernels.triton.common import (each_work_item, grid_size, last_to_arrive, plan_grid,
                                             workspace)


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
def _k_bounds(lo_one, lo_pair, lo_quad, hi, n, k):
    """Bounds [klo, khi] of the k-th largest key of a row of n from its tile bounds (step 1);
    klo = khi = the max when n <= k, every valid key is then selected."""
    klo = tl.where(n // 2 >= k, tl.maximum(lo_one, lo_pair), lo_one)
    klo = tl.where(n // 4 >= k, tl.maximum(klo, lo_quad), klo)
    return tl.where(n <= k, hi, klo), hi


@triton.jit
def _select_row(b, logits, block_table, seq_lens, out, work, k, row_len, s_l, s_bt, s_o,
                PAGE: tl.constexpr, BLOCK: tl.constexpr, BINS: tl.constexpr,
                LOG_BINS: tl.constexpr, CAP: tl.constexpr, PAIR: tl.constexpr,
                FLOAT_ROUNDS: tl.constexpr, PICK_ROUNDS: tl.constexpr, RESIDENT: tl.constexpr,
                NPAGES: tl.constexpr, PAGES_IN_REGS: tl.constexpr, PHASES: tl.constexpr):
    """Row b's top-k slots by one program: steps 1-4 over the row in registers (RESIDENT) or
    tile by tile; `work` is the row's scratch of CAP keys."""
    row = logits + b.to(tl.int64) * s_l
    table_row = block_table + b.to(tl.int64) * s_bt
    out_row = out + b.to(tl.int64) * s_o
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
    klo, khi = _k_bounds(lo_one, lo_pair, lo_quad, hi, n, k)

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




@triton.jit
def _topk_row(pid, grid, logits, block_table, seq_lens, out, scratch, k, row_len, s_l, s_bt, s_o,
              PAGE: tl.constexpr, BLOCK: tl.constexpr, BINS: tl.constexpr,
              LOG_BINS: tl.constexpr, CAP: tl.constexpr, PAIR: tl.constexpr,
              FLOAT_ROUNDS: tl.constexpr, PICK_ROUNDS: tl.constexpr, RESIDENT: tl.constexpr,
              NPAGES: tl.constexpr, PAGES_IN_REGS: tl.constexpr, PHASES: tl.constexpr):
    b = pid[0]
    _select_row(b, logits, block_table, seq_lens, out, scratch + b.to(tl.int64) * CAP, k,
                row_len, s_l, s_bt, s_o, PAGE, BLOCK, BINS, LOG_BINS, CAP, PAIR, FLOAT_ROUNDS,
                PICK_ROUNDS, RESIDENT, NPAGES, PAGES_IN_REGS, PHASES)


@triton.jit(do_not_specialize=["work0", "work1", "work2"])
def _topk_slots_kernel(logits, block_table, seq_lens, out, scratch, k, row_len, s_l, s_bt, s_o,
                       work0, work1, work2, PERSISTENT: tl.constexpr, PAGE: tl.constexpr,
                       BLOCK: tl.constexpr, BINS: tl.constexpr, LOG_BINS: tl.constexpr,
                       CAP: tl.constexpr, PAIR: tl.constexpr, FLOAT_ROUNDS: tl.constexpr,
                       PICK_ROUNDS: tl.constexpr, RESIDENT: tl.constexpr, NPAGES: tl.constexpr,
                       PAGES_IN_REGS: tl.constexpr, PHASES: tl.constexpr):
    each_work_item(_topk_row, (logits, block_table, seq_lens, out, scratch, k, row_len, s_l, s_bt,
                               s_o, PAGE, BLOCK, BINS, LOG_BINS, CAP, PAIR, FLOAT_ROUNDS,
                               PICK_ROUNDS, RESIDENT, NPAGES, PAGES_IN_REGS, PHASES),
                   work0, work1, work2, PERSISTENT)


# -- chunked rows: three launches, a program per chunk -------------------------------------------
# Per row, `bounds` [rows, 4, chunks] (uint32 keys as int32: lo_one, lo_pair, lo_quad, max of each
# chunk) and `hist` [rows, chunks, BINS] (each chunk's first-round histogram) carry the chunks'
# partial results to the next launch.

@triton.jit
def _chunk_of_row(pid, grid, seq_lens):
    """(row, chunk, chunks a row, the row's length) of work item pid (work grid: rows x
    chunks)."""
    b = pid[0]
    return b, pid[1], grid_size(grid, 1), tl.load(seq_lens + b)


@triton.jit
def _chunk_bounds(pid, grid, logits, seq_lens, bounds, row_len, s_l, CHUNK: tl.constexpr):
    b, c, chunks, n = _chunk_of_row(pid, grid, seq_lens)
    row = logits + b.to(tl.int64) * s_l
    _, key, _, valid = _tile(row, c * CHUNK, n, row_len, CHUNK)
    lo_one, lo_pair, lo_quad, hi = _tile_bounds(key, valid, c * CHUNK, n, CHUNK)
    out = bounds + b * 4 * chunks + c
    tl.store(out, lo_one.to(tl.int32, bitcast=True))
    tl.store(out + chunks, lo_pair.to(tl.int32, bitcast=True))
    tl.store(out + 2 * chunks, lo_quad.to(tl.int32, bitcast=True))
    tl.store(out + 3 * chunks, hi.to(tl.int32, bitcast=True))


@triton.jit(do_not_specialize=["work0", "work1", "work2"])
def _chunk_bounds_kernel(logits, seq_lens, bounds, row_len, s_l, work0, work1, work2,
                         PERSISTENT: tl.constexpr, CHUNK: tl.constexpr):
    each_work_item(_chunk_bounds, (logits, seq_lens, bounds, row_len, s_l, CHUNK),
                   work0, work1, work2, PERSISTENT)


@triton.jit
def _row_round(bounds, b, chunks, n, k, BINS: tl.constexpr, LOG_BINS: tl.constexpr,
               FLOAT_ROUNDS: tl.constexpr, CHUNKS_POW2: tl.constexpr):
    """The row's bounds of the k-th largest from its chunks' and the first round's binning."""
    c = tl.arange(0, CHUNKS_POW2)
    ok = c < chunks
    base = bounds + b * 4 * chunks + c
    ones = tl.full([CHUNKS_POW2], -1, tl.int32)  # 0xFFFFFFFF: above every key
    lo_one = tl.min(tl.load(base, mask=ok, other=ones).to(tl.uint32, bitcast=True), 0)
    lo_pair = tl.min(tl.load(base + chunks, mask=ok, other=ones).to(tl.uint32, bitcast=True), 0)
    lo_quad = tl.min(tl.load(base + 2 * chunks, mask=ok, other=ones).to(tl.uint32, bitcast=True),
                     0)
    hi = tl.max(tl.load(base + 3 * chunks, mask=ok, other=0).to(tl.uint32, bitcast=True), 0)
    klo, khi = _k_bounds(lo_one, lo_pair, lo_quad, hi, n, k)
    lo_f, scale, shift, use_float = _round_params(klo, khi, 0, FLOAT_ROUNDS, BINS, LOG_BINS)
    return klo, khi, lo_f, scale, shift, use_float


@triton.jit
def _chunk_hist(pid, grid, logits, seq_lens, bounds, hist, k, row_len, s_l, CHUNK: tl.constexpr,
                BINS: tl.constexpr, LOG_BINS: tl.constexpr, FLOAT_ROUNDS: tl.constexpr,
                CHUNKS_POW2: tl.constexpr):
    b, c, chunks, n = _chunk_of_row(pid, grid, seq_lens)
    klo, khi, lo_f, scale, shift, use_float = _row_round(bounds, b, chunks, n, k, BINS, LOG_BINS,
                                                         FLOAT_ROUNDS, CHUNKS_POW2)
    _, key, v, valid = _tile(logits + b.to(tl.int64) * s_l, c * CHUNK, n, row_len, CHUNK)
    d, _, counted = _tile_digits(key, v, valid, klo, khi, lo_f, scale, shift, use_float, BINS)
    h = tl.histogram(d, BINS, mask=counted & (klo < khi))
    tl.store(hist + (b * chunks + c) * BINS + tl.arange(0, BINS), h)


@triton.jit(do_not_specialize=["work0", "work1", "work2"])
def _chunk_hist_kernel(logits, seq_lens, bounds, hist, k, row_len, s_l, work0, work1, work2,
                       PERSISTENT: tl.constexpr, CHUNK: tl.constexpr, BINS: tl.constexpr,
                       LOG_BINS: tl.constexpr, FLOAT_ROUNDS: tl.constexpr,
                       CHUNKS_POW2: tl.constexpr):
    each_work_item(_chunk_hist, (logits, seq_lens, bounds, hist, k, row_len, s_l, CHUNK, BINS,
                                 LOG_BINS, FLOAT_ROUNDS, CHUNKS_POW2),
                   work0, work1, work2, PERSISTENT)


@triton.jit
def _chunk_select(pid, grid, logits, block_table, seq_lens, out, bounds, hist, cand_keys,
                  cand_pos, counters, k, row_len, s_l, s_bt, s_o, PAGE: tl.constexpr,
                  CHUNK: tl.constexpr, BINS: tl.constexpr, LOG_BINS: tl.constexpr,
                  CAP: tl.constexpr, PAIR: tl.constexpr, PICK_BINS: tl.constexpr,
                  LOG_PICK_BINS: tl.constexpr, FLOAT_ROUNDS: tl.constexpr,
                  PICK_ROUNDS: tl.constexpr, CHUNKS_POW2: tl.constexpr):
    b, c, chunks, n = _chunk_of_row(pid, grid, seq_lens)
    klo, khi, lo_f, scale, shift, use_float = _row_round(bounds, b, chunks, n, k, BINS, LOG_BINS,
                                                         FLOAT_ROUNDS, CHUNKS_POW2)
    # the row's histogram, and the part of it in the chunks before this one
    bins = tl.arange(0, BINS)
    total = tl.zeros([BINS], tl.int32)
    before = tl.zeros([BINS], tl.int32)
    for i in range(chunks):
        h = tl.load(hist + (b * chunks + i) * BINS + bins)
        total += h
        before += tl.where(i < c, h, 0)
    bstar, n_above, m = _split_bins(total, k)
    resolved = (klo < khi) & (m <= CAP)
    table_row = block_table + b.to(tl.int64) * s_bt
    out_row = out + b.to(tl.int64) * s_o
    keys_row = cand_keys + b.to(tl.int64) * CAP
    pos_row = cand_pos + b.to(tl.int64) * CAP
    if resolved:
        # this chunk's keys in bins above the threshold's go out; the bin's own are compacted
        offs, key, v, valid = _tile(logits + b.to(tl.int64) * s_l, c * CHUNK, n, row_len, CHUNK)
        d, inr, counted = _tile_digits(key, v, valid, klo, khi, lo_f, scale, shift, use_float,
                                       BINS)
        above = counted & (d > bstar)
        cand = inr & (d == bstar)
        packed = above.to(tl.int32) + (cand.to(tl.int32) << 16)  # chunks hold < 2^16 keys
        csum = tl.cumsum(packed, 0)
        dst = tl.sum(tl.where(bins > bstar, before, 0), 0) + (csum & 0xFFFF) - 1
        page = tl.load(table_row + offs // PAGE, mask=above, other=0)
        tl.store(out_row + dst, page * PAGE + offs % PAGE, mask=above)
        cdst = tl.sum(tl.where(bins == bstar, before, 0), 0) + (csum >> 16) - 1
        tl.store(keys_row + cdst, key.to(tl.int32, bitcast=True), mask=cand)
        tl.store(pos_row + cdst, offs, mask=cand)
    if last_to_arrive(counters + b, chunks):
        if resolved:
            if PICK_ROUNDS:
                thr, gt = _kth_by_rounds(keys_row, m, k - n_above, CAP, PICK_BINS,
                                         LOG_PICK_BINS, FLOAT_ROUNDS)
            else:
                thr, gt = _kth_of_candidates(keys_row, m, k - n_above, CAP, PAIR)
            j = tl.arange(0, CAP)
            ok = j < m
            ck = tl.load(keys_row + j, mask=ok, other=0, cache_modifier=".cg").to(tl.uint32,
                                                                                 bitcast=True)
            cp = tl.load(pos_row + j, mask=ok, other=0, cache_modifier=".cg")
            _tile_place(cp, ck, ok, thr, n < 0, n_above + gt, k, n_above, 0, table_row, out_row,
                        table_row, PAGE, False)
        else:
            _select_row(b, logits, block_table, seq_lens, out, keys_row, k, row_len, s_l, s_bt,
                        s_o, PAGE, CHUNK, PICK_BINS, LOG_PICK_BINS, CAP, PAIR, FLOAT_ROUNDS,
                        PICK_ROUNDS, False, 1, False, 4)


@triton.jit(do_not_specialize=["work0", "work1", "work2"])
def _chunk_select_kernel(logits, block_table, seq_lens, out, bounds, hist, cand_keys, cand_pos,
                         counters, k, row_len, s_l, s_bt, s_o, work0, work1, work2,
                         PERSISTENT: tl.constexpr, PAGE: tl.constexpr, CHUNK: tl.constexpr,
                         BINS: tl.constexpr, LOG_BINS: tl.constexpr, CAP: tl.constexpr,
                         PAIR: tl.constexpr, PICK_BINS: tl.constexpr,
                         LOG_PICK_BINS: tl.constexpr, FLOAT_ROUNDS: tl.constexpr,
                         PICK_ROUNDS: tl.constexpr, CHUNKS_POW2: tl.constexpr):
    each_work_item(_chunk_select,
                   (logits, block_table, seq_lens, out, bounds, hist, cand_keys, cand_pos,
                    counters, k, row_len, s_l, s_bt, s_o, PAGE, CHUNK, BINS, LOG_BINS, CAP, PAIR,
                    PICK_BINS, LOG_PICK_BINS, FLOAT_ROUNDS, PICK_ROUNDS, CHUNKS_POW2),
                   work0, work1, work2, PERSISTENT)


# TOPK_WARPS_NOTE: alone, 8 and 16 warps take the same 18 us on an 8192-key row (H100), but
# inside the layer's graph 8 warps take 38 us and 16 take 21: the resident kernel is straight-line
# code (128 KB of SASS at 8 warps, 84 KB at 16, as 32 or 16 keys a thread are unrolled) fetched
# cold after the rest of the layer's kernels have run, so its instruction fetch, not its work,
# sets its time in the graph. 32 warps measured 25 us (H100, bench/results/h100-2026-11-21).
RESIDENT_MAX = 16384  # longest row one program keeps in registers (32 fp32 a thread at 16 warps)
TILE = 8192  # tile of longer rows, reloaded at each phase
TOPK_BINS = 128  # 64 is a little faster per row, but more rows need a second round
TOPK_CAP = 256
TOPK_PAIR = 32
TOPK_PICK_ROUNDS = True  # candidates: histogram rounds in registers, else pairwise ranks
TOPK_CHUNK = 1024  # keys a program of a chunked row; rows no longer than this take one program
TOPK_CHUNK_BINS = 256  # first-round bins of a chunked row: fewer candidates for its last program
TOPK_CHUNK_WARPS = 4


def _topk_launch(logits, block_table, seq_lens, out, *, chunk=TOPK_CHUNK,
                 chunk_bins=TOPK_CHUNK_BINS, chunk_warps=TOPK_CHUNK_WARPS,
                 resident_max=RESIDENT_MAX, tile=TILE, bins=TOPK_BINS, cap=TOPK_CAP,
                 pair=TOPK_PAIR, float_rounds=2, pick_rounds=TOPK_PICK_ROUNDS,
                 pages_in_regs=True, num_warps=None, phases=4, max_programs: int | None = None):
    """`topk_slots` with its tuning exposed (tests and bench/tune_indexer_attention.py): keys a
    chunk (0: one program a row), first-round bins and warps of the chunk kernels; for one
    program a row: bins per round, candidate capacity (0: rounds over the row until one key is
    left; also turns chunks off), pairwise block, value-linear rounds before key digits, how
    candidates are resolved, block table in registers, warps; `phases` < 4 stops a one-program
    row early (diagnostic timing only: wrong output); at most `max_programs` programs at once."""
    page = logits.shape[1] // block_table.shape[1]
    if logits.stride(-1) != 1 or out.stride(-1) != 1 or out.dtype != torch.int32:
        raise ValueError("topk_slots needs unit-stride rows and int32 slots")
    for name, v, least in (("bins", bins, 64), ("chunk_bins", chunk_bins, 64),
                           ("chunk", chunk, 16)):
        if v and (v & (v - 1) or v < least):
            raise ValueError(f"bad top-k tuning: {name} {v} is not a power of two >= {least}")
    if cap & (cap - 1) or (cap and pair > cap):
        raise ValueError(f"bad top-k tuning: cap {cap}, pair {pair}")
    rows, row_len = logits.shape
    # candidate keys of each row, keyed by the output: nodes on concurrent streams never share
    # it (cap 0: rounds over the row until one key is left, no scratch)
    key = ("topk_slots", out.data_ptr(), tuple(out.shape))
    scratch = (workspace(key + ("candidates",), (rows, cap), torch.int32, logits.device) if cap
               else out)
    common = (logits, block_table, seq_lens, out)
    if chunk and cap and row_len > chunk and phases == 4:
        chunks = triton.cdiv(row_len, chunk)
        bounds = workspace(key + ("bounds",), (rows, 4, chunks), torch.int32, logits.device)
        hist = workspace(key + ("hist",), (rows, chunks, chunk_bins), torch.int32, logits.device)
        positions = workspace(key + ("positions",), (rows, cap), torch.int32, logits.device)
        counters = workspace(key + ("count",), (rows,), torch.int32, logits.device, zeroed=True)
        round_bins = dict(BINS=chunk_bins, LOG_BINS=chunk_bins.bit_length() - 1,
                          FLOAT_ROUNDS=float_rounds, CHUNKS_POW2=triton.next_power_of_2(chunks))
        plan = plan_grid((rows, chunks), max_programs)  # the three launches share it
        _chunk_bounds_kernel[plan.grid](logits, seq_lens, bounds, row_len, logits.stride(0),
                                        **plan.args, CHUNK=chunk, num_warps=chunk_warps)
        _chunk_hist_kernel[plan.grid](logits, seq_lens, bounds, hist, out.shape[1], row_len,
                                      logits.stride(0), **plan.args, CHUNK=chunk, **round_bins,
                                      num_warps=chunk_warps)
        _chunk_select_kernel[plan.grid](
            *common, bounds, hist, scratch, positions, counters, out.shape[1], row_len,
            logits.stride(0), block_table.stride(0), out.stride(0), **plan.args, PAGE=page,
            CHUNK=chunk,
            CAP=cap, PAIR=pair, PICK_BINS=bins, LOG_PICK_BINS=bins.bit_length() - 1,
            PICK_ROUNDS=pick_rounds, **round_bins, num_warps=chunk_warps)
        return
    resident = row_len <= resident_max
    block = max(16, triton.next_power_of_2(row_len)) if resident else tile
    if num_warps is None:  # 16 at 8192: see TOPK_WARPS_NOTE
        num_warps = max(1, min(16, block // 512))
    plan = plan_grid((rows,), max_programs)
    _topk_slots_kernel[plan.grid](
        *common, scratch, out.shape[1], row_len, logits.stride(0), block_table.stride(0),
        out.stride(0), **plan.args, PAGE=page, BLOCK=block, BINS=bins, LOG_BINS=bins.bit_length() - 1,
        CAP=cap, PAIR=pair, FLOAT_ROUNDS=float_rounds, PICK_ROUNDS=pick_rounds,
        RESIDENT=resident, NPAGES=triton.next_power_of_2(triton.cdiv(block, page)),
        PAGES_IN_REGS=bool(pages_in_regs and resident), PHASES=phases, num_warps=num_warps)


def topk_slots(*, logits, block_table, seq_lens, out, max_programs: int | None = None):
    """Top-k positions of each row mapped to KV slots, -1 past the row's length, in an order of
    the kernel's own (see the module docstring). Only rows' valid prefixes count; rows of any
    length work."""
    _topk_launch(logits, block_table, seq_lens, out, max_programs=max_programs)


OPS = {"topk_slots": topk_slots}
