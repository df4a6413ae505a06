"""The rank side of `streamlab allreduce`: the all-reduce alone, over message sizes, nccl-tests
style.

For each implementation and size, every rank captures `calls` all-reduces back to back into one
CUDA/HIP graph, replays it `warmup` times untimed, meets the other ranks at a barrier, then times
`iters` replays through the timing harness (exec.measure: each replay between device events);
time per call = replay time / calls (the graph launch is amortised, as nccl-tests amortise their
launch loop). Reported per size: the median over replays on each rank, and the slowest rank's
median as the time of the collective; algbw = bytes / time, busbw = algbw x 2(n-1)/n. Each size
is checked: every element must equal 1 + 2 + ... + n. On the CPU (gloo) the calls run eagerly,
timed on the host, for testing the path only.
"""

from __future__ import annotations

import re
from pathlib import Path

from streamlab.collective.rank import Ctx, gather
from streamlab.errors import EXIT_BAD_INPUT, EXIT_CHECK_FAILED, Failure
from streamlab.kernels.allreduce.progress import in_collective
from streamlab.results import AllReduceSweep, SweepRow, dump

__all__ = ["DEFAULT_IMPLS", "DEFAULT_SIZES", "parse_sizes", "rank_sweep", "sweep_path"]

DEFAULT_SIZES = "8K..64M,48K,768K"  # plus GLM-5's all-reduce at batch 4 and 64: [T, 6144] bf16
DEFAULT_IMPLS = ("nccl", "symm_mem")
_UNITS = {"": 1, "B": 1, "K": 1 << 10, "KB": 1 << 10, "KIB": 1 << 10, "M": 1 << 20, "MB": 1 << 20,
          "MIB": 1 << 20, "G": 1 << 30, "GB": 1 << 30, "GIB": 1 << 30}


def _size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", text)
    if not m or m.group(2).upper() not in _UNITS:
        raise Failure(f"--sizes: cannot read {text!r} (e.g. 8K, 48K, 1M, 64M)", EXIT_BAD_INPUT)
    return int(m.group(1)) * _UNITS[m.group(2).upper()]


def parse_sizes(text: str) -> list[int]:
    """'8K..64M' doubles from 8K to 64M; items separated by commas; bytes per rank, sorted."""
    out: set[int] = set()
    for item in (t for t in text.split(",") if t.strip()):
        if ".." in item:
            lo_s, hi_s = item.split("..", 1)
            lo, hi = _size(lo_s), _size(hi_s)
            if lo <= 0 or hi < lo:
                raise Failure(f"--sizes: {item!r} must run from a positive size up", EXIT_BAD_INPUT)
            s = lo
            while s <= hi:
                out.add(s)
                s *= 2
        else:
            out.add(_size(item))
    bad = [s for s in out if s < 16 or s % 16]
    if bad or not out:
        raise Failure(f"--sizes: sizes must be positive multiples of 16 bytes, got {sorted(bad) or text!r}",
                      EXIT_BAD_INPUT)
    return sorted(out)


def sweep_path(out: str | Path, world: int, impls: list[str], gpu: bool) -> Path:
    """OUT/allreduce-wWORLD-IMPLS-cuda.json (or -cpu: the gloo path)."""
    return Path(out) / f"allreduce-w{world}-{'-'.join(impls)}-{'cuda' if gpu else 'cpu'}.json"


def rank_sweep(args, ctx: Ctx, monitor) -> int:
    from streamlab.kernels.allreduce.impls import bandwidths, choose, describe

    sizes = parse_sizes(args.sizes or DEFAULT_SIZES)
    impls = [i for i in (args.impl or ",".join(DEFAULT_IMPLS)).split(",") if i]
    rows: list[SweepRow] = []
    described: dict[str, dict] = {}
    wrong = []
    path = sweep_path(args.out, ctx.world, impls, ctx.gpu)
    for name in impls:
        monitor.phase(f"set up all-reduce {name}")
        fn = choose(name, ctx.world, ctx.device, max_bytes=max(sizes), group=ctx.group,
                    cpu_group=ctx.cpu_group)
        if fn is None:
            raise Failure("the all-reduce sweep needs several ranks or a GPU", EXIT_BAD_INPUT)
        described[name] = describe(fn)
        for size in sizes:
            monitor.phase(f"sweep {name} {size} bytes")
            per_rank = gather(ctx, _time_size(fn, size, args, ctx))
            t = max(r["median_us"] for r in per_rank)
            alg, bus = bandwidths(size, t, ctx.world)
            row = SweepRow(impl=name, backend=getattr(fn, "backend", name), bytes=size, count=size // 2,
                           dtype="bf16", time_us=t, algbw_gbs=alg, busbw_gbs=bus,
                           p20_us=per_rank[0]["p20_us"], p80_us=per_rank[0]["p80_us"],
                           per_rank_us=tuple(r["median_us"] for r in per_rank),
                           correct=all(r["correct"] for r in per_rank))
            rows.append(row)
            if not row.correct:
                wrong.append(f"{name} at {size} bytes")
            if ctx.rank == 0:  # rows so far, marked incomplete: a run stopped by a time limit keeps them
                dump(_result(ctx, args, described, rows, complete=False), path)
        del fn
    code = EXIT_CHECK_FAILED if wrong else 0
    message = f"wrong all-reduce sums: {', '.join(wrong)}" if wrong else ""
    if ctx.rank == 0:
        from streamlab.report.allreduce import print_sweep
        from streamlab.report.console import output_console
        console = output_console()
        result = _result(ctx, args, described, rows, complete=True)
        dump(result, path)
        print_sweep(console, result)
        console.print(f"result: {path}", markup=False)
        monitor.outcome(code, message)
    return code


def _result(ctx: Ctx, args, described: dict, rows: list[SweepRow], complete: bool) -> AllReduceSweep:
    from streamlab.exec.target import device_name, versions

    return AllReduceSweep(
        world=ctx.world, complete=complete, device=device_name(ctx.device), versions=versions(),
        implementations=described,
        method=(f"graph of {args.calls} back-to-back calls, {args.warmup} warm-up + {args.iters} timed "
                "replays, device events (exec.measure.time_graph); time = slowest rank's median per call")
        if ctx.gpu else "eager calls timed on the host (CPU, gloo): not a graph measurement",
        rows=tuple(rows))


def _time_size(fn, size: int, args, ctx: Ctx) -> dict:
    import time

    import torch
    import torch.distributed as dist

    from streamlab.analysis import percentiles
    from streamlab.exec.measure import time_graph, warm_up
    from streamlab.scenario import Measure

    numel = size // 2
    want = ctx.world * (ctx.world + 1) / 2
    x = torch.full((numel,), float(ctx.rank + 1), dtype=torch.bfloat16, device=ctx.device)
    out = torch.empty_like(x)
    for _ in range(3):
        fn(x=x, out=out)
    if ctx.gpu:
        torch.cuda.synchronize(ctx.device)
    correct = bool((out.float() == want).all())
    out.zero_()
    per_call: list[float] = []
    if ctx.gpu:
        graph = torch.cuda.CUDAGraph()
        with fn.capture():
            with torch.cuda.graph(graph):
                for _ in range(args.calls):
                    fn(x=x, out=out)
        warm_up([graph], replays=args.warmup, block=max(args.warmup, 1), seconds=0.0)
        with in_collective("barrier before timing"):
            dist.barrier(group=ctx.cpu_group)
        timed = Measure(layers=1, warmup=0, iters=args.iters, repeats=1, seconds=0.0)
        per_call = time_graph(graph, timed, per_replay=args.calls, warmup_s=0.0).per_replay_us
        del graph
    else:
        with in_collective("barrier before timing"):
            dist.barrier(group=ctx.cpu_group)
        for _ in range(args.iters):
            t0 = time.perf_counter()
            for _ in range(args.calls):
                fn(x=x, out=out)
            per_call.append((time.perf_counter() - t0) * 1e6 / args.calls)
    correct = correct and bool((out.float() == want).all())
    p20, p50, p80 = percentiles(per_call)
    del x, out
    if ctx.gpu:
        torch.cuda.empty_cache()
    return {"rank": ctx.rank, "median_us": p50, "p20_us": p20, "p80_us": p80, "correct": correct}
