"""Sweep and before/after timings of idx_topk (`topk_slots`) and mla_decode (`sparse_mla_decode`)
at GLM-5 tp=8 decode shapes: context 8192, page 64, top-2048, 8 MLA heads, fp8 KV [slots, 576].

    PYTHONPATH=$PWD python3 bench/tune_indexer_attention.py [--batches 1,4,16,64] [--no-sweep]
        [--only topk|mla|probe] [--budget SECONDS]

Every timing is the median over graph replays of a CUDA graph holding REPS calls of the op (so
launch gaps inside a graph are included, as in the layer), divided by REPS, each replay between
device events (the executor's harness, exec.measure.time_graph). Inputs are random
(normal, log-normal, relu-like and tied logits, full and ragged rows, 128k rows; fp8 KV codes
never zero); every configuration is checked against `streamlab.kernels.reference` on the same
device, and its graph replay against its eager run bit for bit. "before" is the implementation
before the tuning round, read by bench/baseline.py from git history (skipped when absent). The
sweep also times the top-k kernel stopped after each phase (diagnostic) and `--only probe` the
cost of single block-wide primitives (a sum, a histogram, a prefix sum, ...) at 8192 keys.
The compact table is printed last. Without a GPU it is a smoke run in the interpreter.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import time
import traceback

import torch

if not torch.cuda.is_available():  # a CPU smoke run: kernels in the Triton interpreter
    os.environ.setdefault("TRITON_INTERPRET", "1")

import triton  # noqa: E402 - after TRITON_INTERPRET
import triton.language as tl  # noqa: E402

import baseline  # noqa: E402
from streamlab.exec.measure import time_graph  # noqa: E402
from streamlab.kernels import reference as ref  # noqa: E402
from streamlab.kernels.quant import FP8  # noqa: E402
from streamlab.kernels.triton import attention, topk  # noqa: E402
from streamlab.kernels.triton.topk import _split_bins, _tile_bounds  # noqa: E402
from streamlab.scenario import Measure  # noqa: E402

REPS = 20
REPLAYS = 7
CTX, PAGE, TOPK, HEADS, D_QK, D_V = 8192, 64, 2048, 8, 576, 512
SOFTMAX_SCALE = 256 ** -0.5  # GLM-5 qk_head_dim = 192 + 64
T0 = time.perf_counter()
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: a smoke run in the interpreter


def log(*a):
    print(f"[{time.perf_counter() - T0:6.1f}s]", *a, flush=True)


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
    # the executor's harness: one untimed block of REPLAYS replays, then REPLAYS timed, each between events
    timing = time_graph(g, Measure(warmup=1, iters=REPLAYS, repeats=1, seconds=0.0), per_replay=REPS,
                        warmup_s=0.0)
    return statistics.median(timing.per_replay_us), same


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


TOPK_SWEEP = [dict(chunk=0, bins=b, cap=c, pair=p, num_warps=w, pick_rounds=r, pages_in_regs=g)
              for b, c, p, w, r, g in [
                  (128, 256, 32, 8, True, True), (64, 256, 32, 8, True, True),
                  (128, 256, 32, 8, True, False), (128, 256, 32, 16, True, True),
                  (128, 128, 128, 8, False, True), (128, 0, 32, 8, True, True)]]
TOPK_PHASES = {1: "bounds only", 2: "+ rounds over the row", 3: "+ exact k-th (no placement)"}


def new_topk(cfg):
    return lambda lg, tb, sq, o: topk._topk_launch(lg, tb, sq, o, **cfg)


def cfg_name(c):
    return (f"one program: bins{c['bins']} cap{c['cap']} w{c['num_warps']} "
            f"{'rounds' if c['pick_rounds'] or not c['cap'] else 'pairwise'} "
            f"table-in-{'regs' if c['pages_in_regs'] else 'memory'}")


def run_topk(batches, old_topk, sweep, budget, results):
    impls = [("before", lambda lg, tb, sq, o: old_topk.topk_slots(
        logits=lg, block_table=tb, seq_lens=sq, out=o), False)] if old_topk else []
    impls.append(("after", new_topk({}), False))
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
            us, det = graph_us(lambda: topk.topk_slots(logits=lg, block_table=tb, seq_lens=sq,
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
        if old_attn:
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
    old_topk, old_attn = baseline.load("topk"), baseline.load("attention")
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
