#!/usr/bin/env python3
"""Sweep and report the Triton FP8 GEMM and fused-MoE kernels at GLM-5 tp=8 decode shapes.

    PYTHONPATH=$PWD python3 bench/tune_gemm_moe.py sweep  [--m 4,64] [--t 1,4,16,64] [--space swap]
    PYTHONPATH=$PWD python3 bench/tune_gemm_moe.py report [--m 1,4,16,64] [--tuned best.json]

Every timing is a CUDA-graph replay of R back-to-back calls, each on its own weight buffer (R
buffers together well over the L2, random data, never zeros), timed by the executor's harness
(exec.measure.time_graph: each replay between device events) and reported as the median over
replays of the time per call, so launch gaps inside a graph count as they do in the
layer. Every timed configuration's output is checked against streamlab.kernels.reference on
the same device and for bitwise-equal replays. `floor` is the bytes one call must move (weights,
activations, output) over the device-to-device copy bandwidth measured at start.

sweep: times candidate configurations (tile width, K groups per iteration, K splits, warps,
stages, transposed tiles) of the dense GEMMs at --m and of fused_moe's gate_up and down kernels
at --t (gate_up first, then down with the best gate_up), compiling them first in parallel
worker processes (Triton's disk cache hands them to the timing process), prints the best few
per shape, and writes the best to best.json and as table entries (gemm._TUNED, moe._TUNED).
--space swap: only the transposed tiles and the table's own configuration. report: times the
configurations the kernels pick by themselves (or those of --tuned) as "new" against the
implementation before this tuning ("old", when bench/baseline.py finds the earlier gemm.py and
moe.py), at every M; --kernels adds per-kernel MoE times
from the profiler. Both write JSON lines to --out ($OUT on the device).

On a machine without a GPU (TRITON_INTERPRET=1) `--smoke` runs the same code at tiny shapes
with wall-clock timing, to check the script itself.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import multiprocessing as mp
import os
import statistics
import time
import zlib
from pathlib import Path

import torch
import triton

import baseline
from streamlab.exec.measure import time_graph
from streamlab.kernels import reference as ref
from streamlab.kernels.quant import FP8
from streamlab.kernels.triton import common, gemm, moe
from streamlab.scenario import Measure

ROOT = Path(__file__).resolve().parent.parent
BF16 = torch.bfloat16

# name, op, N, K, batch (heads for bmm)
DENSE = [
    ("qkv_a_proj", "fp8", 2688, 6144, 1),
    ("o_proj", "fp8", 6144, 2048, 1),
    ("idx_wq_b", "fp8", 4096, 2048, 1),
    ("q_b_proj", "fp8", 2048, 2048, 1),
    ("idx_wk", "fp8", 128, 6144, 1),
    ("sh_gate_up", "fp8", 512, 6144, 1),
    ("sh_down", "fp8", 6144, 256, 1),
    ("router_gate", "bf16", 256, 6144, 1),
    ("idx_weights", "bf16", 32, 6144, 1),
    ("bmm_w_kc", "bmm", 512, 192, 8),
    ("bmm_w_vc", "bmm", 256, 512, 8),
]
SMOKE_DENSE = [("fp8_small", "fp8", 320, 512, 1), ("bf16_small", "bf16", 32, 384, 1),
               ("bmm_small", "bmm", 64, 192, 2)]
# GLM-5 tp=8 experts: 256 routed + the shared one, hidden 6144, inter 2048 / 8, top-8 + shared
MOE = dict(experts=257, hidden=6144, inter=256, topk=8)
SMOKE_MOE = dict(experts=9, hidden=512, inter=256, topk=3)
TOL = {"fp8": 2e-2, "bf16": 1e-4, "bmm": 1e-2, "moe": 3e-2}
ROTATE_BYTES = 256 << 20  # weights touched per graph, > 4x the L2 of an H100/H200

SMOKE = False


def dev() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sms() -> int:
    return common.sm_count(dev(), off_gpu=4)


def rel(got, want) -> float:
    got, want = got.double(), want.double()
    if not torch.isfinite(got).all():
        return float("inf")
    return ((got - want).norm() / want.norm()).item()


# -- problems --------------------------------------------------------------------------------

class Dense:
    """One GEMM shape at M rows with `rot` weight buffers and outputs."""

    def __init__(self, spec, m: int, rot: int):
        self.name, self.op, self.n, self.k, self.batch = spec
        self.m = m
        d = dev()
        g = torch.Generator(d).manual_seed(zlib.crc32(f"{self.name}/{m}".encode()))
        n, k, b = self.n, self.k, self.batch
        self.w, self.s = [], []
        for _ in range(rot):
            if self.op == "bf16":
                self.w.append((torch.randn(n, k, generator=g, device=d) * k ** -0.5).to(BF16))
                self.s.append(None)
            else:
                shape = (n, k) if self.op == "fp8" else (b, n, k)
                self.w.append(torch.randn(shape, generator=g, device=d).to(FP8))
                if self.op == "fp8":
                    self.s.append((torch.rand(-(-n // 128), k // 128, generator=g, device=d)
                                   + 0.5) * k ** -0.5)
                else:
                    self.s.append((torch.rand(b, generator=g, device=d) + 0.5) * k ** -0.5)
        xs = (m, k) if self.op != "bmm" else (m, b, k)
        self.x = torch.randn(xs, generator=g, device=d).to(BF16)
        odt = torch.float32 if self.op == "bf16" else BF16
        os_ = (m, n) if self.op != "bmm" else (m, b, n)
        self.out = [torch.full(os_, float("nan"), dtype=odt, device=d) for _ in range(rot)]

    def bytes(self) -> int:
        wb = self.n * self.k * self.batch * (2 if self.op == "bf16" else 1)
        sb = 0 if self.s[0] is None else self.s[0].numel() * 4
        return wb + sb + self.x.numel() * 2 + self.out[0].numel() * self.out[0].element_size()

    def call(self, impl, cfg, r: int):
        w, s, out = self.w[r], self.s[r], self.out[r]
        if impl == "new":
            gemm.run_gemm(self.op, self.x, w, out, s, config=cfg)
        else:  # an implementation module with the public ops
            if self.op == "fp8":
                impl.fp8_linear(x=self.x, weight=w, weight_scale=s, out=out)
            elif self.op == "bf16":
                impl.linear(x=self.x, weight=w, out=out)
            else:
                impl.bmm_fp8(x=self.x, weight=w, weight_scale=s, out=out)

    def reference(self, r: int):
        want = torch.full_like(self.out[r], float("nan"))
        if self.op == "fp8":
            ref.fp8_linear(x=self.x, weight=self.w[r], weight_scale=self.s[r], out=want)
        elif self.op == "bf16":
            ref.linear(x=self.x, weight=self.w[r], out=want)
        else:
            ref.bmm_fp8(x=self.x, weight=self.w[r], weight_scale=self.s[r], out=want)
        return want

    def outputs(self):
        return self.out


class Moe:
    """fused_moe with `rot` routings (different experts each) of T tokens."""

    def __init__(self, t: int, rot: int, weights=None):
        cfg = SMOKE_MOE if SMOKE else MOE
        e, h, i, topk = cfg["experts"], cfg["hidden"], cfg["inter"], cfg["topk"]
        self.t, self.op = t, "moe"
        self.name = f"moe_T{t}"
        d = dev()
        g = torch.Generator(d).manual_seed(1234 + t)
        if weights is None:
            weights = make_moe_weights(e, h, i)
        self.w13, self.w13s, self.w2, self.w2s = weights
        self.x = torch.randn(t, h, generator=g, device=d).to(BF16)
        self.ids, self.wts = [], []
        gc = torch.Generator().manual_seed(99 + t)
        for _ in range(rot):
            ids = torch.stack([torch.randperm(e - 1, generator=gc)[:topk] for _ in range(t)])
            ids = torch.cat([ids, torch.full((t, 1), e - 1)], 1).to(torch.int32)
            w = torch.rand(t, topk + 1, generator=gc) + 0.1
            w[:, -1] = 1.0
            self.ids.append(ids.to(d))
            self.wts.append(w.to(d))
        self.out = [torch.full((t, h), float("nan"), dtype=BF16, device=d) for _ in range(rot)]
        self.per_expert = (self.w13[0].numel() + self.w2[0].numel()
                           + (self.w13s[0].numel() + self.w2s[0].numel()) * 4)

    def bytes(self) -> int:
        return (int(torch.unique(self.ids[0]).numel()) * self.per_expert
                + self.x.numel() * 2 + self.out[0].numel() * 2)

    def args(self, r: int):
        return dict(x=self.x, ids=self.ids[r], weights=self.wts[r], w13=self.w13,
                    w13_scale=self.w13s, w2=self.w2, w2_scale=self.w2s)

    def call(self, impl, cfg, r: int):
        a = self.args(r)
        if impl == "new":
            moe.run_fused_moe(**a, out=self.out[r], config=cfg)
        else:
            impl.fused_moe(**a, out=self.out[r])

    def reference(self, r: int):
        want = torch.full_like(self.out[r], float("nan"))
        ref.fused_moe(**self.args(r), out=want)
        return want

    def outputs(self):
        return self.out


def make_moe_weights(e, h, i):
    d = dev()
    g = torch.Generator(d).manual_seed(7)
    w13 = torch.randn(e, 2 * i, h, generator=g, device=d).to(FP8)
    w13s = (torch.rand(e, 2 * i // 128, h // 128, generator=g, device=d) + 0.5) * h ** -0.5
    w2 = torch.randn(e, h, i, generator=g, device=d).to(FP8)
    w2s = (torch.rand(e, h // 128, i // 128, generator=g, device=d) + 0.5) * i ** -0.5
    return w13, w13s, w2, w2s


def dense_rot(spec) -> int:
    if SMOKE:
        return 2
    _, op, n, k, b = spec
    wb = n * k * b * (2 if op == "bf16" else 1)
    return max(4, min(64, math.ceil(ROTATE_BYTES / wb)))


# -- timing ----------------------------------------------------------------------------------

def clear_workspaces(*mods):
    common._WORKSPACES.clear()
    for mod in mods:
        if mod is not None and hasattr(mod, "_WORKSPACES"):
            mod._WORKSPACES.clear()


def want(prob):
    """The reference output of rotation 0, computed once per problem."""
    if not hasattr(prob, "_want"):
        prob._want = prob.reference(0)
    return prob._want


def measure(prob, impl, cfg, batches=4, reps=3) -> dict:
    """Median microseconds per call over graph replays of all rotations (exec.measure.time_graph);
    error vs reference of rotation 0; whether two replays gave bitwise-equal outputs."""
    rot = len(prob.outputs())
    for r in range(rot):  # eager: compiles, allocates workspaces
        prob.call(impl, cfg, r)
    if dev().type != "cuda":
        t0 = time.perf_counter()
        for r in range(rot):
            prob.call(impl, cfg, r)
        us = (time.perf_counter() - t0) * 1e6 / rot
        first = prob.outputs()[0].clone()
        prob.call(impl, cfg, 0)
        return dict(us=us, err=rel(prob.outputs()[0], want(prob)),
                    det=bool(torch.equal(first, prob.outputs()[0])))
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for r in range(rot):
            prob.call(impl, cfg, r)
    for o in prob.outputs():
        o.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    first = prob.outputs()[0].clone()
    # the executor's harness: `batches` blocks of `reps` replays, each replay between device events
    timing = time_graph(graph, Measure(warmup=0, iters=reps, repeats=batches, seconds=0.0), per_replay=rot,
                        warmup_s=0.0)
    det = bool(torch.equal(first, prob.outputs()[0]))
    err = rel(prob.outputs()[0], want(prob))
    del graph
    return dict(us=statistics.median(timing.per_replay_us), err=err, det=det)


def copy_bandwidth() -> float:
    """Device-to-device copy, bytes read + written per second."""
    if dev().type != "cuda":
        return 1e11
    n = 1 << 30
    a = torch.empty(n, dtype=torch.uint8, device="cuda").random_(0, 255)
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        b.copy_(a)
    end.record()
    end.synchronize()
    bw = 2 * n * 10 / (start.elapsed_time(end) * 1e-3)
    del a, b
    return bw


# -- candidates ------------------------------------------------------------------------------

def dense_candidates(spec, m: int, space: str = "full") -> list[gemm.GemmConfig]:
    """Tile widths, K per iteration (bf16 / bmm only: fp8_linear scales every 128-group),
    warps x stages, the tile as is or transposed (swap: weight rows on the MMA's M side), and
    the K splits that give about 1, 2 or 4 programs per SM (and none). Space "swap": the
    transposed tiles only, and the table's configuration."""
    _, op, n, k, batch = spec
    block_m = gemm._tile(m, gemm._MAX_BLOCK_M)
    if space == "swap":
        table = gemm.gemm_config(op, m, n, k, batch, dev())
        out = [table]
        bns = [b for b in ((64, 128, 256) if op == "fp8" else (32, 64, 128))
               if b <= max(32, triton.next_power_of_2(n))]
        gs = [1] if op == "fp8" else [g for g in (1, 2) if 128 * g <= 2 * k]
        ws = [(4, 3), (4, 4), (8, 3)] if op == "fp8" else [(4, 3)]
        for bn, g in itertools.product(bns, gs):
            tiles = batch * triton.cdiv(m, block_m) * triton.cdiv(n, bn)
            iters = triton.cdiv(k, 128 * g)
            seen = set()
            for per_sm in ((0, 1, 2, 4) if op == "fp8" else (0, 1, 2)):
                s = max(1, min(iters, triton.cdiv(per_sm * sms(), tiles)))
                eff = triton.cdiv(iters, triton.cdiv(iters, s))
                if eff not in seen:
                    seen.add(eff)
                    out += [gemm.GemmConfig(bn, g, eff, w, st, True) for w, st in ws]
        return list(dict.fromkeys(out))
    bns = [b for b in (16, 32, 64, 128, 256)
           if b <= max(32, triton.next_power_of_2(n)) and (b > 16 or n <= 256)]
    gs = [1] if op == "fp8" else [g for g in (1, 2, 4) if 128 * g <= 2 * k]
    if op != "fp8":
        plain, swapped = [(4, 3)], [(4, 3), (8, 4)]
    elif block_m == 16:
        plain, swapped = [(8, 3)], [(4, 3), (4, 4), (4, 5), (8, 3), (8, 4)]
    else:
        plain = [(4, 2), (4, 3), (8, 2), (8, 3)]
        swapped = [(4, 3), (4, 4), (8, 3)]
    out = []
    for bn, g in itertools.product(bns, gs):
        tiles = batch * triton.cdiv(m, block_m) * triton.cdiv(n, bn)
        iters = triton.cdiv(k, 128 * g)
        seen = set()
        for per_sm in (0, 1, 2, 4):
            s = max(1, min(iters, triton.cdiv(per_sm * sms(), tiles)))
            eff = triton.cdiv(iters, triton.cdiv(iters, s))
            if eff in seen:
                continue
            seen.add(eff)
            out += [gemm.GemmConfig(bn, g, eff, w, st, False) for w, st in plain]
            if bn >= 32:
                out += [gemm.GemmConfig(bn, g, eff, w, st, True) for w, st in swapped]
    return out




def moe_table(t: int) -> moe.MoeConfig:
    c = SMOKE_MOE if SMOKE else MOE
    return moe.moe_config(t, c["topk"] + 1, c["experts"], c["hidden"], c["inter"], dev())


def _fields(cfg: moe.MoeConfig, prefix: str) -> dict:
    return {f: v for f, v in cfg._asdict().items() if f.startswith(prefix)}


def gate_up_candidates(t: int, down: dict, space: str = "full") -> list[moe.MoeConfig]:
    if space == "swap":
        bns, ws = (64, 128), ((4, 3, False), (4, 3, True), (4, 4, True), (8, 3, True))
    else:
        bns, ws = (32, 64, 128), ((4, 3, False), (8, 3, False), (4, 3, True), (4, 4, True),
                                  (8, 3, True))
    out = [moe.MoeConfig(**_fields(moe_table(t), "gu_"), **down)]
    for bn, s, (w, st, sw) in itertools.product(bns, (1, 2, 3, 4, 6, 8), ws):
        out.append(moe.MoeConfig(bn, s, w, st, sw, **down))
    return list(dict.fromkeys(out))


def down_candidates(t: int, gate_up: dict, space: str = "full") -> list[moe.MoeConfig]:
    if space == "swap":
        bns, ws = (128, 256), ((4, 2, False), (4, 2, True), (4, 3, True), (8, 3, True))
    else:
        bns, ws = (64, 128, 256), ((4, 2, False), (4, 3, False), (4, 2, True), (4, 3, True),
                                   (8, 3, True), (4, 4, True))
    out = [moe.MoeConfig(**gate_up, **_fields(moe_table(t), "down_"))]
    for bn, (w, st, sw) in itertools.product(bns, ws):
        out.append(moe.MoeConfig(**gate_up, down_block_n=bn, down_warps=w, down_stages=st,
                                 down_swap=sw))
    return list(dict.fromkeys(out))


# -- parallel compilation --------------------------------------------------------------------

_W_PROBS: dict = {}
_W_MOE_WEIGHTS = None


def _compile_job(job):
    """In a worker: one call of the configuration (compiles it into Triton's disk cache)."""
    global _W_MOE_WEIGHTS
    kind, key, cfg = job
    try:
        if kind == "dense":
            spec, m = key
            prob = _W_PROBS.get(key)
            if prob is None:
                prob = _W_PROBS[key] = Dense(spec, m, 1)
        else:
            prob = _W_PROBS.get(key)
            if prob is None:
                if _W_MOE_WEIGHTS is None:
                    c = SMOKE_MOE if SMOKE else MOE
                    _W_MOE_WEIGHTS = make_moe_weights(c["experts"], c["hidden"], c["inter"])
                prob = _W_PROBS[key] = Moe(key, 1, _W_MOE_WEIGHTS)
        prob.call("new", cfg, 0)
        if dev().type == "cuda":
            torch.cuda.synchronize()
        clear_workspaces()
        return job, None
    except Exception as exc:  # noqa: BLE001 - e.g. out of shared memory: reported, skipped
        return job, f"{type(exc).__name__}: {str(exc)[:160]}"


def _worker_init(smoke: bool):
    global SMOKE
    SMOKE = smoke
    os.environ.setdefault("PYTHONUNBUFFERED", "1")


def compile_all(jobs, procs: int, deadline: float) -> dict:
    """Compile configurations in `procs` processes; returns {job: error} for the failed ones."""
    failed = {}
    if not jobs:
        return failed
    t0 = time.time()
    ctx = mp.get_context("spawn")
    with ctx.Pool(procs, initializer=_worker_init, initargs=(SMOKE,)) as pool:
        for i, (job, err) in enumerate(pool.imap(_compile_job, jobs)):
            if err:
                failed[job] = err
            if time.time() > deadline:
                print(f"  compile: deadline after {i + 1}/{len(jobs)} jobs", flush=True)
                pool.terminate()
                break
    print(f"  compiled {len(jobs)} jobs in {time.time() - t0:.0f} s, {len(failed)} failed",
          flush=True)
    for err in list(dict.fromkeys(failed.values()))[:4]:
        print(f"    e.g. {err}", flush=True)
    return failed


# -- output ----------------------------------------------------------------------------------

def fmt_cfg(cfg) -> str:
    if cfg is None:
        return "-"
    if isinstance(cfg, gemm.GemmConfig):
        return (f"n{cfg.block_n} g{cfg.groups} s{cfg.splits} w{cfg.warps} st{cfg.stages}"
                f"{' sw' if cfg.swap else ''}")
    return (f"gu(n{cfg.gu_block_n} s{cfg.gu_splits} w{cfg.gu_warps} st{cfg.gu_stages}"
            f"{' sw' if cfg.gu_swap else ''}) dn(n{cfg.down_block_n} w{cfg.down_warps} "
            f"st{cfg.down_stages}{' sw' if cfg.down_swap else ''})")


class Log:
    def __init__(self, out: Path | None):
        if out:
            out.parent.mkdir(parents=True, exist_ok=True)
        self.f = open(out, "a") if out else None

    def rec(self, **kw):
        if self.f:
            self.f.write(json.dumps(kw) + "\n")
            self.f.flush()


ERRORS: list[str] = []


def run_timed(prob, impl, cfg, log: Log, bw: float, tag: str, mods=()):
    try:
        res = measure(prob, impl, cfg)
    except Exception as exc:  # noqa: BLE001
        res = dict(us=float("inf"), err=float("inf"), det=False,
                   error=f"{type(exc).__name__}: {str(exc)[:160]}")
    finally:
        clear_workspaces(*mods)
    if "error" in res:
        ERRORS.append(res["error"])
        if len(set(ERRORS)) <= 4 and ERRORS.count(res["error"]) == 1:
            print(f"  error {prob.name} {fmt_cfg(cfg)}: {res['error']}", flush=True)
    res["floor"] = prob.bytes() / bw * 1e6
    log.rec(tag=tag, shape=prob.name, m=getattr(prob, "m", getattr(prob, "t", None)),
            impl=impl if isinstance(impl, str) else "old",
            cfg=None if cfg is None else list(cfg), **res)
    return res


def ok(res, op) -> bool:
    return res["err"] <= TOL[op] and res["det"]


# -- modes -----------------------------------------------------------------------------------

def sweep(args, bw, log):
    deadline = time.time() + args.budget
    specs = SMOKE_DENSE if SMOKE else DENSE
    if args.only:
        specs = [s for s in specs if s[0] in args.only.split(",")]
    moe_ts = [int(t) for t in args.t.split(",") if t]
    ms = [int(m) for m in args.m.split(",") if m]
    # one compile job per (shape, M, config); shapes in order, so that a variant that several
    # shapes share compiles once and later shapes find it in the cache
    jobs = []
    for spec in specs:
        for m in ms:
            jobs += [("dense", (spec, m), c) for c in dense_candidates(spec, m, args.space)]
    moe_jobs = []
    if moe_ts:  # gate_up compiles the same for every T (SPLIT aside), down per BLOCK_T
        t0 = moe_ts[0]
        moe_jobs += [("moe", t0, c) for c in gate_up_candidates(
            t0, _fields(moe_table(t0), "down_"), args.space)]
    block_ts = {}
    for t in moe_ts:
        block_ts.setdefault(min(16, triton.next_power_of_2(t)), t)
    for t in block_ts.values():
        moe_jobs += [("moe", t, c) for c in down_candidates(
            t, _fields(moe_table(t), "gu_"), args.space)]
    jobs = moe_jobs + jobs if args.moe_first else jobs + moe_jobs
    jobs = list(dict.fromkeys(jobs))
    print(f"sweep: {len(jobs)} compile jobs on {args.procs} processes", flush=True)
    failed = compile_all(jobs, args.procs, deadline - args.time_reserve)
    bad_variants = set(failed)
    if args.wait_file:  # e.g. GPU tests running beside the compilation: let them finish
        t_wait = time.time()
        while not Path(args.wait_file).exists() and time.time() - t_wait < args.wait_max:
            time.sleep(1)
        print(f"waited {time.time() - t_wait:.0f} s for {args.wait_file}", flush=True)
    best_out = {"dense": {}, "moe": {}}

    old_gemm, old_moe = baseline.load("gemm"), baseline.load("moe")
    print(f"\n{'shape':<14}{'M':>4}{'floor':>8}{'old':>9}{'heur':>9}{'best':>9}  best config"
          f"  (2nd, 3rd)", flush=True)

    def moe_part():
        weights = None
        for t in moe_ts:
            if time.time() > deadline:
                print("deadline: stopping", flush=True)
                return
            c = SMOKE_MOE if SMOKE else MOE
            weights = weights or make_moe_weights(c["experts"], c["hidden"], c["inter"])
            prob = Moe(t, 2 if SMOKE else 4, weights)
            old = (run_timed(prob, old_moe, None, log, bw, "old", (old_moe,))
                   if old_moe else None)
            table = moe_table(t)
            base = run_timed(prob, "new", table, log, bw, "table")
            results = [(base["us"], table)] if ok(base, "moe") else []
            for c in gate_up_candidates(t, _fields(table, "down_"), args.space)[1:]:
                if ("moe", t, c) in bad_variants or time.time() > deadline:
                    continue
                r = run_timed(prob, "new", c, log, bw, "sweep")
                if ok(r, "moe"):
                    results.append((r["us"], c))
            results.sort()
            best_gu = results[0][1] if results else table
            gu = _fields(best_gu, "gu_")
            d_results = [results[0]] if results else []
            for c in down_candidates(t, gu, args.space)[1:]:
                if time.time() > deadline:
                    break
                r = run_timed(prob, "new", c, log, bw, "sweep")
                if ok(r, "moe"):
                    d_results.append((r["us"], c))
            d_results.sort()
            if d_results:
                best_out["moe"][str(t)] = list(d_results[0][1])
            print(f"{prob.name:<14}{t:>4}{base['floor']:>8.1f}"
                  f"{old['us'] if old else float('nan'):>9.1f}{base['us']:>9.1f}"
                  f"{(d_results or results or [(float('nan'),)])[0][0]:>9.1f}  "
                  f"{fmt_cfg((d_results or results or [(0, None)])[0][1])}", flush=True)
            print(f"{'':<14}    gate_up top: "
                  + "; ".join(f"{u:.1f} {fmt_cfg(c).split(' dn')[0]}" for u, c in results[:3]),
                  flush=True)
            print(f"{'':<14}    down top: "
                  + "; ".join(f"{u:.1f} {fmt_cfg(c).split(') ')[1]}" for u, c in d_results[:3]),
                  flush=True)
            del prob
            clear_workspaces()

    def dense_part():
        for spec, m in itertools.product(specs, ms):
            if time.time() > deadline:
                print("deadline: stopping", flush=True)
                return
            prob = Dense(spec, m, dense_rot(spec))
            old = (run_timed(prob, old_gemm, None, log, bw, "old", (old_gemm,))
                   if old_gemm else None)
            heur_cfg = gemm._heuristic(spec[1], m, spec[2], spec[3], spec[4], sms())
            heur = run_timed(prob, "new", heur_cfg, log, bw, "heur")
            results = []
            for c in dense_candidates(spec, m, args.space):
                if ("dense", (spec, m), c) in bad_variants:
                    continue
                if time.time() > deadline:
                    break
                r = run_timed(prob, "new", c, log, bw, "sweep")
                if ok(r, spec[1]):
                    results.append((r["us"], c))
                elif "error" not in r:
                    print(f"  BAD {spec[0]} M={m} {fmt_cfg(c)}: err {r['err']:.2e} "
                          f"det {r['det']}", flush=True)
            results.sort()
            best = results[0] if results else (float("nan"), None)
            if results:
                best_out["dense"][tuned_key(spec, m)] = list(best[1])
            rest = ", ".join(f"{u:.1f} {fmt_cfg(c)}" for u, c in results[1:3])
            print(f"{spec[0]:<14}{m:>4}{heur['floor']:>8.1f}"
                  f"{old['us'] if old else float('nan'):>9.1f}{heur['us']:>9.1f}"
                  f"{best[0]:>9.1f}  {fmt_cfg(best[1])}  ({rest})", flush=True)
            del prob

    for part in ((moe_part, dense_part) if args.moe_first else (dense_part, moe_part)):
        part()
    if args.out:
        (Path(args.out) / "best.json").write_text(json.dumps(best_out, indent=1))
    print("\nbest as table entries:")
    for key, cfg in best_out["dense"].items():
        print(f"    {tuple(json.loads(key))}: _C{tuple(cfg)},")
    for t, cfg in best_out["moe"].items():
        print(f"    ({t}, ...): MoeConfig{tuple(cfg)},")


def tuned_key(spec, m) -> str:
    _, op, n, k, batch = spec
    return json.dumps([op, n, k, batch, gemm._tile(m, gemm._MAX_BLOCK_M)])


def load_tuned(path: str) -> dict:
    if not path or not Path(path).exists():
        return {"dense": {}, "moe": {}}
    return json.loads(Path(path).read_text())


def report(args, bw, log):
    specs = SMOKE_DENSE if SMOKE else DENSE
    if args.only:
        specs = [s for s in specs if s[0] in args.only.split(",")]
    old_gemm, old_moe = baseline.load("gemm"), baseline.load("moe")
    tuned = load_tuned(args.tuned)
    ms = [int(m) for m in args.m.split(",") if m]
    print(f"\n{'shape':<14}{'M':>4}{'floor':>8}{'old':>9}{'new':>9}{'x':>6}  new config "
          f"(err, deterministic)", flush=True)
    for spec in specs:
        for m in ms:
            prob = Dense(spec, m, dense_rot(spec))
            old = (run_timed(prob, old_gemm, None, log, bw, "old", (old_gemm,))
                   if old_gemm else dict(us=float("nan")))
            cfg = gemm.gemm_config(spec[1], m, spec[2], spec[3], spec[4], dev())
            if tuned_key(spec, m) in tuned["dense"]:
                cfg = gemm.GemmConfig(*tuned["dense"][tuned_key(spec, m)])
            elif m <= 16 and tuned_key(spec, 4) in tuned["dense"]:
                cfg = gemm.GemmConfig(*tuned["dense"][tuned_key(spec, 4)])
            new = run_timed(prob, "new", cfg, log, bw, "new")
            print(f"{spec[0]:<14}{m:>4}{new['floor']:>8.1f}{old['us']:>9.1f}{new['us']:>9.1f}"
                  f"{old['us'] / new['us']:>6.2f}  {fmt_cfg(cfg)} ({new['err']:.1e}, "
                  f"{new['det']})", flush=True)
            del prob
    c = SMOKE_MOE if SMOKE else MOE
    weights = make_moe_weights(c["experts"], c["hidden"], c["inter"])
    for t in [int(t) for t in args.t.split(",") if t]:
        prob = Moe(t, 2 if SMOKE else 4, weights)
        old = (run_timed(prob, old_moe, None, log, bw, "old", (old_moe,))
               if old_moe else dict(us=float("nan")))
        cfg = moe_table(t)
        if str(t) in tuned["moe"]:
            cfg = moe.MoeConfig(*tuned["moe"][str(t)])
        new = run_timed(prob, "new", cfg, log, bw, "new")
        print(f"{prob.name:<14}{t:>4}{new['floor']:>8.1f}{old['us']:>9.1f}{new['us']:>9.1f}"
              f"{old['us'] / new['us']:>6.2f}  {fmt_cfg(cfg)} ({new['err']:.1e}, {new['det']})",
              flush=True)
        if args.kernels and dev().type == "cuda":
            for name, impl in (("old", old_moe), ("new", "new")):
                if impl is not None:
                    print(f"{'':<18}{name} kernels: {kernel_times(prob, impl, cfg)}", flush=True)
        del prob
        clear_workspaces(old_moe)


def kernel_times(prob, impl, cfg, calls=20) -> str:
    """Per-kernel device time (us per call) from the profiler, eager calls."""
    from torch.profiler import ProfilerActivity, profile
    cfg = cfg if impl == "new" else None
    prob.call(impl, cfg, 0)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for i in range(calls):
            prob.call(impl, cfg, i % len(prob.outputs()))
        torch.cuda.synchronize()
    parts = []
    for evt in prof.key_averages():
        total = getattr(evt, "device_time_total", None)
        if total is None:
            total = getattr(evt, "cuda_time_total", 0)
        if total > 0 and "kernel" in evt.key:
            parts.append(f"{evt.key.split('(')[0][:24]} {total / calls:.1f}")
    return ", ".join(parts)


def main():
    global SMOKE
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("mode", choices=["sweep", "report"])
    p.add_argument("--m", default=None, help="rows (tokens) for the dense GEMMs")
    p.add_argument("--t", default="1,4,16,64", help="tokens for fused_moe")
    p.add_argument("--only", default="", help="comma-separated dense shape names")
    p.add_argument("--budget", type=float, default=300, help="sweep: seconds in all")
    p.add_argument("--time-reserve", type=float, default=150,
                   help="sweep: seconds kept for timing after compiling")
    p.add_argument("--procs", type=int, default=min(14, max(1, (os.cpu_count() or 2) - 2)))
    p.add_argument("--moe-first", action="store_true")
    p.add_argument("--space", choices=["full", "swap"], default="full",
                   help="sweep: all candidates, or the transposed tiles and the table's")
    p.add_argument("--tuned", default="", help="report: best.json of a sweep, over the table")
    p.add_argument("--wait-file", default="", help="sweep: wait for it before timing")
    p.add_argument("--wait-max", type=float, default=200)
    p.add_argument("--kernels", action="store_true", help="report: per-kernel MoE times")
    p.add_argument("--smoke", action="store_true", help="tiny shapes (interpreter check)")
    p.add_argument("--out", default=os.environ.get("OUT", ""))
    args = p.parse_args()
    SMOKE = args.smoke
    if args.m is None:
        args.m = "4,64" if args.mode == "sweep" else "1,4,16,64"
    out = Path(args.out) / f"{args.mode}.jsonl" if args.out else None
    if dev().type == "cuda":
        props = torch.cuda.get_device_properties(0)
        print(f"{props.name}, {props.multi_processor_count} SMs, "
              f"L2 {getattr(props, 'L2_cache_size', 0) / 2**20:.0f} MiB, torch {torch.__version__},"
              f" triton {triton.__version__}", flush=True)
    bw = copy_bandwidth()
    print(f"copy bandwidth {bw / 1e12:.2f} TB/s (floor = bytes / that)", flush=True)
    log = Log(out)
    log.rec(tag="device", bw=bw, sms=sms(),
            name=torch.cuda.get_device_name(0) if dev().type == "cuda" else "cpu")
    (sweep if args.mode == "sweep" else report)(args, bw, log)


if __name__ == "__main__":
    main()
