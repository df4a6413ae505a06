"""Sweep and before/after timings of idx_topk (`topk_slots`) and mla_decode (`sparse_mla_decode`)
at GLM-5 tp=8 decode shapes: context 8192, page 64, top-2048, 8 MLA heads, fp8 KV [slots, 576].

    PYTHONPATH=$PWD python3 bench/tune_indexer_attention.py [--batches 1,4,16,64] [--no-sweep]
        [--only topk|mla|probe] [--budget SECONDS]

Every timing is the median over graph replays of a CUDA graph holding REPS calls of the op (so
launch gaps inside a graph are included, as in the layer), divided by REPS. Inputs are random
(normal, log-normal, relu-like and tied logits, full and ragged rows, 128k rows; fp8 KV codes
never zero); every configuration is checked against `streamlab.kernels.reference` on the same
device, and its graph replay against its eager run bit for bit. "before" is the implementation
of the parent commit (its source is embedded below and imported from a temporary file). The
sweep also times the top-k kernel stopped after each phase (diagnostic) and `--only probe` the
cost of single block-wide primitives (a sum, a histogram, a prefix sum, ...) at 8192 keys.
The compact table is printed last. Without a GPU it is a smoke run in the interpreter.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import os
import statistics
import sys
import tempfile
import time
import traceback

import torch

if not torch.cuda.is_available():  # a CPU smoke run: kernels in the Triton interpreter
    os.environ.setdefault("TRITON_INTERPRET", "1")

import triton  # noqa: E402 - after TRITON_INTERPRET
import triton.language as tl  # noqa: E402

from streamlab.kernels import reference as ref  # noqa: E402
from streamlab.kernels.quant import FP8  # noqa: E402
from streamlab.kernels.triton import attention, indexer  # noqa: E402
from streamlab.kernels.triton.indexer import _split_bins, _tile_bounds  # noqa: E402

REPS = 20
REPLAYS = 7
CTX, PAGE, TOPK, HEADS, D_QK, D_V = 8192, 64, 2048, 8, 576, 512
SOFTMAX_SCALE = 256 ** -0.5  # GLM-5 qk_head_dim = 192 + 64
T0 = time.perf_counter()
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: a smoke run in the interpreter


def log(*a):
    print(f"[{time.perf_counter() - T0:6.1f}s]", *a, flush=True)


# -- the parent commit's kernels ---------------------------------------------------------------

OLD_TOPK = r'''import torch
import triton
import triton.language as tl


# -- top-k slots --------------------------------------------------------------------------------

@triton.jit
def _keys(row, offs, n, row_len):
    """Order-preserving uint32 keys of fp32 logits at offs; 0, below every real key, past n.
    The load is masked by the row's padded length (a multiple of the page, so loads vectorise);
    positions past the context are zeroed afterwards."""
    bits = tl.load(row + offs, mask=offs < row_len, other=0.0).to(tl.uint32, bitcast=True)
    key = bits ^ tl.where((bits >> 31) != 0, 0xFFFFFFFF, 0x80000000)
    return tl.where(offs < n, key, tl.zeros_like(key))


@triton.jit
def _count_at_least(row, n, row_len, cand, BLOCK: tl.constexpr):
    cnt = tl.zeros((), tl.int32)
    for start in range(0, n, BLOCK):
        keys = _keys(row, start + tl.arange(0, BLOCK), n, row_len)
        cnt += tl.sum((keys >= cand).to(tl.int32))
    return cnt


@triton.jit
def _topk_slots_kernel(logits, block_table, seq_lens, out, k, row_len, s_l, s_bt, s_o,
                       PAGE: tl.constexpr, BLOCK: tl.constexpr):
    b = tl.program_id(0)
    row = logits + b * s_l
    n = tl.load(seq_lens + b)
    # threshold = the k-th largest key, built bit by bit (0 when fewer than k are valid)
    thr = tl.zeros((), tl.uint32)
    for i in range(32):
        cand = thr | (tl.full((), 1, tl.uint32) << (31 - i))
        thr = tl.where(_count_at_least(row, n, row_len, cand, BLOCK) >= k, cand, thr)
    n_above = _count_at_least(row, n, row_len, thr + 1, BLOCK)
    # keys above the threshold fill [0, n_above); ties fill the rest in position order
    seen_above = tl.zeros((), tl.int32)
    seen_tied = tl.zeros((), tl.int32)
    for start in range(0, n, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        key = _keys(row, offs, n, row_len)
        above = key > thr
        tied = (key == thr) & (offs < n)
        dst_above = seen_above + tl.cumsum(above.to(tl.int32), 0) - 1
        dst_tied = n_above + seen_tied + tl.cumsum(tied.to(tl.int32), 0) - 1
        dst = tl.where(above, dst_above, dst_tied)
        keep = above | (tied & (dst_tied < k))
        page = tl.load(block_table + b * s_bt + offs // PAGE, mask=keep, other=0)
        tl.store(out + b * s_o + dst, page * PAGE + offs % PAGE, mask=keep)
        seen_above += tl.sum(above.to(tl.int32))
        seen_tied += tl.sum(tied.to(tl.int32))
    for start in range(0, k, BLOCK):
        j = start + tl.arange(0, BLOCK)
        tl.store(out + b * s_o + j, tl.full((BLOCK,), -1, tl.int32),
                 mask=(j >= tl.minimum(n, k)) & (j < k))


def topk_slots(*, logits, block_table, seq_lens, out):
    """Top-k positions of each row mapped to KV slots, -1 past the row's length (any order).

    One program per row: a 32-step bitwise search over order-preserving keys finds the k-th
    largest logit (each step counts keys over the row, which stays in L1/L2), then one pass
    compacts the positions above it, and ties at it, with prefix sums. Only rows' valid
    prefixes are read.
    """
    page = logits.shape[1] // block_table.shape[1]
    if logits.stride(-1) != 1 or out.stride(-1) != 1 or out.dtype != torch.int32:
        raise ValueError("topk_slots needs unit-stride rows and int32 slots")
    block = min(4096, triton.next_power_of_2(logits.shape[1]))
    _topk_slots_kernel[(logits.shape[0],)](
        logits, block_table, seq_lens, out, out.shape[1], logits.shape[1], logits.stride(0),
        block_table.stride(0), out.stride(0), PAGE=page, BLOCK=block,
        num_warps=8 if block >= 2048 else 4)


'''

OLD_ATTENTION = r'''"""Sparse MLA decode in Triton: flash-decoding over the indexer's top-k cache slots.

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
'''


def load_old():
    """The parent commit's modules (Triton needs their source in a file)."""
    d = tempfile.mkdtemp(prefix="streamlab_before_")
    mods = []
    for name, src in (("before_topk", OLD_TOPK), ("before_attention", OLD_ATTENTION)):
        path = os.path.join(d, name + ".py")
        with open(path, "w") as f:
            f.write(src)
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        mods.append(mod)
    return mods


# -- timing ------------------------------------------------------------------------------------

def graph_us(fn, outs=()):
    """Median us per call over replays of a graph of REPS calls; also checks that one replay
    reproduces the eager outputs bit for bit. Returns (us, deterministic)."""
    if DEVICE == "cpu":  # interpreter smoke run: no graphs, no meaningful time
        fn()
        eager = [o.clone() for o in outs]
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e6, all(torch.equal(o, e) for o, e in zip(outs, eager))
    fn()
    torch.cuda.synchronize()
    eager = [o.clone() for o in outs]
    g1 = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g1):
        fn()
    for o in outs:
        o.fill_(-7)
    g1.replay()
    torch.cuda.synchronize()
    same = all(torch.equal(o, e) for o, e in zip(outs, eager))
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(REPS):
            fn()
    g.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(REPLAYS):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        g.replay()
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e) * 1e3 / REPS)
    return statistics.median(times), same


# -- top-k -------------------------------------------------------------------------------------

def topk_inputs(batch, dist="normal", ctx=CTX, ragged=False, seed=0):
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    pps = ctx // PAGE
    table = torch.randperm(batch * pps, generator=g, device=DEVICE).reshape(batch, pps).int()
    shape = (batch, ctx)
    if dist == "normal":
        logits = torch.randn(shape, generator=g, device=DEVICE)
    elif dist == "lognormal":  # heavy upper tail: the first round's range is wide
        logits = torch.exp(1.5 * torch.randn(shape, generator=g, device=DEVICE))
    elif dist == "ties":
        logits = torch.randint(-3, 4, shape, generator=g, device=DEVICE).float()
    elif dist == "relu":  # sums of relu'd scores: a pile near zero
        logits = torch.relu(torch.randn(shape, generator=g, device=DEVICE)) + 1e-3 * torch.randn(
            shape, generator=g, device=DEVICE)
    else:
        raise ValueError(dist)
    if ragged:
        seq = torch.randint(ctx // 2, ctx + 1, (batch,), generator=g, device=DEVICE).int()
        seq[0] = ctx
    else:
        seq = torch.full((batch,), ctx, dtype=torch.int32, device=DEVICE)
    out = torch.full((batch, TOPK), -5, dtype=torch.int32, device=DEVICE)
    return logits, table, seq, out


def topk_check(logits, table, seq, out):
    """Selected values are the top-min(n, k) values as a multiset, slots distinct, -1 pads."""
    k = out.shape[1]
    for b in range(logits.shape[0]):
        n = int(seq[b])
        s = out[b]
        want = min(n, k)
        if int((s >= 0).sum()) != want or not bool((s[want:] == -1).all()):
            return f"row {b}: {int((s >= 0).sum())} slots, want {want}"
        pos = torch.arange(n, device=DEVICE)
        slots = table[b, pos // PAGE].long() * PAGE + pos % PAGE
        inv = torch.full((int(table.max()) * PAGE + PAGE,), -1, dtype=torch.long, device=DEVICE)
        inv[slots] = pos
        p = inv[s[:want].long()]
        if bool((p < 0).any()) or p.unique().numel() != want:
            return f"row {b}: slots outside the row or repeated"
        got = logits[b, p].sort().values
        ref_vals = torch.topk(logits[b, :n], want).values.sort().values
        if not torch.equal(got, ref_vals):
            return f"row {b}: values differ"
    return None


TOPK_SWEEP = [dict(bins=b, cap=c, pair=p, num_warps=w, pick_rounds=r, pages_in_regs=g)
              for b, c, p, w, r, g in [
                  (128, 256, 32, 8, True, True), (64, 256, 32, 8, True, True),
                  (128, 256, 32, 8, True, False), (128, 256, 32, 16, True, True),
                  (128, 128, 128, 8, False, True), (128, 0, 32, 8, True, True)]]
TOPK_PHASES = {1: "bounds only", 2: "+ rounds over the row", 3: "+ exact k-th (no placement)"}


def new_topk(cfg):
    return lambda lg, tb, sq, o: indexer._topk_launch(lg, tb, sq, o, **cfg)


def cfg_name(c):
    return (f"bins{c['bins']} cap{c['cap']} w{c['num_warps']} "
            f"{'rounds' if c['pick_rounds'] or not c['cap'] else 'pairwise'} "
            f"table-in-{'regs' if c['pages_in_regs'] else 'memory'}")


def run_topk(batches, old_topk, sweep, budget, results):
    impls = [("before", lambda lg, tb, sq, o: old_topk.topk_slots(
        logits=lg, block_table=tb, seq_lens=sq, out=o), False), ("after", new_topk({}), False)]
    if sweep:
        impls += [(cfg_name(c), new_topk(c), False) for c in TOPK_SWEEP]
        impls += [(f"PHASES {p}: {what}", new_topk(dict(phases=p)), True)
                  for p, what in TOPK_PHASES.items()]
    cases = [("normal", False), ("lognormal", False), ("relu", False), ("normal", True),
             ("ties", False)]
    for batch in batches:
        for dist, ragged in cases:
            lg, tb, sq, o = topk_inputs(batch, dist, ragged=ragged, seed=batch)
            for name, fn, diagnostic in impls:
                main_case = (dist, ragged) == ("normal", False)
                if name == "before" and not main_case:
                    continue
                if name not in ("before", "after") and not main_case and (
                        diagnostic or dist != "lognormal"):
                    continue
                if time.perf_counter() - T0 > budget and name not in ("before", "after"):
                    continue
                try:
                    us, det = graph_us(lambda: fn(lg, tb, sq, o), [o])
                    err = None if diagnostic else topk_check(lg, tb, sq, o)
                except Exception as e:  # noqa: BLE001 - report and go on
                    log(f"topk {name} batch {batch} {dist}: FAILED {type(e).__name__}: {e}")
                    traceback.print_exc(limit=3)
                    continue
                tag = f"{dist}{'-ragged' if ragged else ''}"
                if not diagnostic:
                    results.append(("idx_topk", batch, tag, name, us, det and err is None))
                log(f"topk  b{batch:<3d} {tag:15s} {name:40s} {us:8.2f} us  "
                    + ("(diagnostic)" if diagnostic else
                       f"{'ok' if err is None else 'WRONG ' + err}"
                       f"{'' if det else ' NONDETERMINISTIC'}"))
    # long rows: the tiled path
    long_ctx = 131072 if DEVICE == "cuda" else 32768
    for batch in (1, 4):
        lg, tb, sq, o = topk_inputs(batch, "normal", ctx=long_ctx, seed=7)
        try:
            us, det = graph_us(lambda: indexer.topk_slots(logits=lg, block_table=tb, seq_lens=sq,
                                                          out=o), [o])
            err = topk_check(lg, tb, sq, o)
            results.append(("idx_topk", batch, f"normal-ctx{long_ctx}", "after", us,
                            det and err is None))
            log(f"topk  b{batch:<3d} ctx {long_ctx} after {us:8.2f} us {err or 'ok'} det={det}")
        except Exception as e:  # noqa: BLE001
            log(f"topk ctx {long_ctx} FAILED {type(e).__name__}: {e}")
            traceback.print_exc(limit=3)


# -- sparse MLA decode -------------------------------------------------------------------------

def mla_inputs(batch, seed=0):
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    pps = CTX // PAGE
    kv = torch.empty(batch * CTX, D_QK, dtype=torch.uint8, device=DEVICE)
    kv.random_(0, 256, generator=g).bitwise_and_(0xBF)  # |v| in [2^-9, 1.875], never NaN
    kv = kv.view(FP8)
    q = torch.randn(batch, HEADS, D_QK, generator=g, device=DEVICE).bfloat16()
    table = torch.randperm(batch * pps, generator=g, device=DEVICE).reshape(batch, pps).long()
    pos = torch.stack([torch.randperm(CTX, generator=g, device=DEVICE)[:TOPK]
                       for _ in range(batch)])
    slots = (table.gather(1, pos // PAGE) * PAGE + pos % PAGE).int()
    slots[0, 1500:] = -1  # a short context
    slots[-1, ::7] = -1
    kv_scale = torch.tensor([0.75], device=DEVICE)
    out = torch.empty(batch, HEADS, D_V, dtype=torch.bfloat16, device=DEVICE)
    want = torch.empty_like(out)
    ref.sparse_mla_decode(q=q, kv_cache=kv, topk_slots=slots, kv_scale=kv_scale, out=want,
                          softmax_scale=SOFTMAX_SCALE)
    return q, kv, slots, kv_scale, out, want


def rel_err(out, want):
    if not torch.isfinite(out).all():
        return float("inf")
    return ((out.float() - want.float()).norm() / want.float().norm()).item()


MLA_SHAPES = [dict(prefetch=pf, num_stages=st) for pf, st in [(False, 2), (True, 1), (False, 1)]]
MLA_SPLITS = [dict(programs_per_sm=p, max_splits=m) for p, m in
              [(1, 32), (2, 32), (0.5, 32), (1, 16), (2, 64)]]


def run_mla(batches, old_attn, sweep, budget, results):
    for batch in batches:
        q, kv, slots, kv_scale, out, want = mla_inputs(batch, seed=batch)

        def case(name, fn, diagnostic=False):
            if time.perf_counter() - T0 > budget and name not in ("before", "after"):
                return None
            try:
                us, det = graph_us(fn, [out])
                err = rel_err(out, want)
            except Exception as e:  # noqa: BLE001
                log(f"mla {name} batch {batch}: FAILED {type(e).__name__}: {e}")
                traceback.print_exc(limit=3)
                return None
            log(f"mla   b{batch:<3d} {name:52s} {us:8.2f} us  "
                + ("(no merge: timing only)" if diagnostic else f"rel_err {err:.2e}"
                   + ("" if det else " NONDETERMINISTIC")))
            if not diagnostic:
                results.append(("mla_decode", batch, "fp8", name, us, det and err < 1e-2))
            return us

        args = dict(q=q, kv_cache=kv, topk_slots=slots, kv_scale=kv_scale, out=out,
                    softmax_scale=SOFTMAX_SCALE)
        case("before", lambda: old_attn.sparse_mla_decode(**args))
        case("after", lambda: attention.sparse_mla_decode(**args))
        if not sweep:
            continue

        def launch(**cfg):
            return lambda: attention._mla_launch(q, kv, slots, kv_scale, out, SOFTMAX_SCALE, **cfg)

        def label(cfg):
            n, _ = attention.num_splits(batch, TOPK, q.device, block_n=attention.BLOCK_N,
                                        programs_per_sm=cfg["programs_per_sm"],
                                        max_splits=cfg["max_splits"])
            return (f"{'prefetch' if cfg['prefetch'] else 'plain'} s{cfg['num_stages']} "
                    f"pps{cfg['programs_per_sm']} max{cfg['max_splits']} ({n} splits)")

        base = dict(programs_per_sm=attention.PROGRAMS_PER_SM, max_splits=attention.MAX_SPLITS)
        best, best_cfg = None, None
        for sh in MLA_SHAPES:  # kernel variant at the default split policy
            cfg = {**base, **sh}
            us = case(label(cfg), launch(**cfg))
            if us is not None and (best is None or us < best):
                best, best_cfg = us, cfg
        if best_cfg is None:
            continue
        for sp in MLA_SPLITS[1:]:
            cfg = {**best_cfg, **sp}
            case(label(cfg), launch(**cfg))
        case(f"{label(best_cfg)} combine128", launch(**best_cfg, combine_d=128))


# -- primitive costs: what one block-wide step of the top-k kernel costs ------------------------

@triton.jit
def _probe_kernel(x, table, out, reps, OP: tl.constexpr, BLOCK: tl.constexpr,
                  BINS: tl.constexpr):
    """`reps` chained repetitions of one primitive over a [BLOCK] tile held in registers."""
    offs = tl.arange(0, BLOCK)
    key = tl.load(x + offs).to(tl.uint32, bitcast=True)
    acc = tl.zeros((), tl.int32)
    for r in range(reps):
        if OP == 0:  # one block-wide sum
            acc += tl.sum((key & 1).to(tl.int32), 0)
        elif OP == 1:  # the bounds step: reshapes and a 4-tuple reduction
            a, b, c, d = _tile_bounds(key, offs < BLOCK - r, 0, BLOCK - r, BLOCK)
            acc += (a ^ b ^ c ^ d).to(tl.int32, bitcast=True)
        elif OP == 2:  # masked histogram, digits spread over BINS
            hist = tl.histogram((key % BINS).to(tl.int32), BINS, mask=(key & 3) != 0)
            acc += tl.sum(hist * tl.arange(0, BINS), 0)
        elif OP == 3:  # masked histogram, digits piled into 4 bins (contention)
            hist = tl.histogram((key % 4).to(tl.int32), BINS, mask=(key & 3) != 0)
            acc += tl.sum(hist * tl.arange(0, BINS), 0)
        elif OP == 4:  # prefix sum over the tile (+ a sum)
            acc += tl.sum(tl.cumsum((key & 1).to(tl.int32), 0) & 7, 0)
        elif OP == 5:  # the bin split: a scan and a 3-tuple reduction over BINS counts
            h = (tl.arange(0, BINS) * 37 + acc) % 101
            bstar, n_above, m = _split_bins(h, 2000)
            acc += bstar + n_above + m
        elif OP == 6:  # placement: prefix sum, block-table gather, scattered stores
            keep = (key & 3) == 0
            dst = (tl.cumsum(keep.to(tl.int32), 0) - 1) % 2048
            page = tl.load(table + offs // 64, mask=keep, other=0)
            tl.store(out + 64 + dst, page * 64 + offs % 64 + acc, mask=keep)
            acc += 1
        key = key ^ (acc & 1).to(tl.uint32)
    tl.store(out + tl.arange(0, 1), acc + tl.zeros([1], tl.int32))


PROBES = {0: "block sum", 1: "bounds (reshape + 4-tuple reduce)", 2: "histogram 128 bins",
          3: "histogram, 4 bins hot", 4: "cumsum + sum", 5: "bin split (scan + reduce)",
          6: "placement (cumsum, gather, scatter)"}


def run_probes(results):
    x = torch.randint(-2 ** 31, 2 ** 31 - 1, (8192,), dtype=torch.int32, device=DEVICE)
    table = torch.randperm(4096, device=DEVICE).int()
    out = torch.zeros(8192, dtype=torch.int32, device=DEVICE)
    for warps in (16, 4):
        for op, what in PROBES.items():
            t = {}
            try:
                for reps in (1, 9):
                    t[reps], _ = graph_us(lambda: _probe_kernel[(1,)](
                        x, table, out, reps, OP=op, BLOCK=8192, BINS=128, num_warps=warps))
            except Exception as e:  # noqa: BLE001
                log(f"probe {what} w{warps}: FAILED {type(e).__name__}: {e}")
                continue
            log(f"probe w{warps:<2d} {what:40s} {(t[9] - t[1]) / 8:6.2f} us each "
                f"(1 rep: {t[1]:.2f} us)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", default="1,4,16,64")
    ap.add_argument("--no-sweep", action="store_true")
    ap.add_argument("--only", choices=("topk", "mla", "probe"))
    ap.add_argument("--budget", type=float, default=290.0,
                    help="seconds after which sweep configurations are skipped (top-k's sweep "
                         "stops at 30%% of it)")
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    print(torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu", "torch",
          torch.__version__, "triton", __import__("triton").__version__, flush=True)
    old_topk, old_attn = load_old()
    results = []
    if args.only in (None, "topk"):
        run_topk(batches, old_topk, not args.no_sweep, args.budget * 0.3, results)
    if args.only in (None, "mla"):
        run_mla(batches, old_attn, not args.no_sweep, args.budget, results)
    if args.only == "probe":
        run_probes(results)

    print("\n== sweep: best correct configuration per op, batch and input ==")
    keyf = lambda r: (r[0], r[1], r[2])  # noqa: E731
    for key, grp in itertools.groupby(sorted(results, key=keyf), keyf):
        good = [r for r in grp if r[5]]
        if good:
            r = min(good, key=lambda r: r[4])
            print(f"{key[0]:10s} b{key[1]:<3d} {key[2]:17s} {r[4]:8.2f} us  {r[3]}")
    bad = [r for r in results if not r[5]]
    print(f"\n{len(results)} runs, {len(bad)} wrong or nondeterministic"
          + "".join(f"\n  WRONG: {r[0]} b{r[1]} {r[2]} {r[3]}" for r in bad))
    print("\n== before / after (us per call, CUDA-graph replay) ==")
    print(f"{'op':10s} {'input':17s}" + "".join(f" {'b' + str(b):>15s}" for b in batches))
    rows = sorted({(r[0], r[2]) for r in results})
    for op, tag in rows:
        cells = []
        for b in batches:
            t = {r[3]: r[4] for r in results if (r[0], r[1], r[2]) == (op, b, tag)}
            before = f"{t['before']:.1f}" if "before" in t else "-"
            after = f"{t['after']:.1f}" if "after" in t else "-"
            cells.append(f" {before + ' -> ' + after:>15s}")
        print(f"{op:10s} {tag:17s}" + "".join(cells))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
