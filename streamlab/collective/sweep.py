"""`streamlab allreduce`: the all-reduce alone, over message sizes, nccl-tests style.

For each implementation and size, every rank captures `calls` all-reduces back to back into one
CUDA/HIP graph, replays it `warmup` + `iters` times and times each replay with device events;
time per call = replay time / calls (the graph launch is amortised, as nccl-tests amortise their
launch loop). Reported per size: the median over replays on each rank, and the slowest rank's
median as the time of the collective; algbw = bytes / time, busbw = algbw x 2(n-1)/n. Each size
is checked: every element must equal 1 + 2 + ... + n. On the CPU (gloo) the calls run eagerly,
timed on the host, for testing the path only.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import Sequence

from streamlab.errors import EXIT_BAD_INPUT, EXIT_CHECK_FAILED, Failure

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


def sweep(world: int, impls: Sequence[str] = DEFAULT_IMPLS, sizes: str | Sequence[int] = DEFAULT_SIZES,
          out: str | os.PathLike = "traces/runs", *, iters: int = 100, warmup: int = 10,
          calls: int = 20, device: str = "auto", launcher_args: Sequence[str] | None = None,
          rank_timeout: float | None = None, err=None) -> int:
    """Run the sweep on `world` ranks per node; prints the table and writes
    `out/allreduce-w{world}-{impls}.json` (rank 0). Returns the exit code: 0, 1 when an
    implementation returned wrong sums, or the failure's code (message printed to `err`)."""
    from streamlab.collective.impls import IMPLS
    from streamlab.collective.launch import DEFAULT_RANK_TIMEOUT, launch_worker

    impls = [i.strip() for i in (impls.split(",") if isinstance(impls, str) else impls) if i.strip()]
    try:
        unknown = [i for i in impls if i not in IMPLS]
        if unknown or not impls:
            raise Failure(f"--impl: unknown all-reduce {', '.join(unknown) or '(none)'}; choose from "
                          f"{', '.join(IMPLS)}", EXIT_BAD_INPUT)
        size_text = sizes if isinstance(sizes, str) else ",".join(str(int(s)) for s in sizes)
        parse_sizes(size_text)
        if min(iters, calls) <= 0 or warmup < 0:
            raise Failure("--iters and --calls must be positive, --warmup not negative", EXIT_BAD_INPUT)
    except Failure as e:
        from streamlab.collective.launch import _print_error
        _print_error(err, str(e))
        return e.code
    args = ["sweep", "--impl", ",".join(impls), "--sizes", size_text, "--out", str(out),
            "--iters", str(iters), "--warmup", str(warmup), "--calls", str(calls), "--device", device]
    return launch_worker(args, world, launcher_args=launcher_args,
                         rank_timeout=rank_timeout or DEFAULT_RANK_TIMEOUT, err=err)


def sweep_cli(argv: list[str], world: int, *, launcher_args=None, rank_timeout=None) -> int:
    p = argparse.ArgumentParser(prog="python -m streamlab.collective sweep")
    p.add_argument("--impl", default=",".join(DEFAULT_IMPLS))
    p.add_argument("--sizes", default=DEFAULT_SIZES)
    p.add_argument("--out", default="traces/runs")
    p.add_argument("--iters", type=int, default=100)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--calls", type=int, default=20)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    a = p.parse_args(argv)
    return sweep(world, a.impl, a.sizes, a.out, iters=a.iters, warmup=a.warmup, calls=a.calls,
                 device=a.device, launcher_args=launcher_args, rank_timeout=rank_timeout)


# -- the rank side ---------------------------------------------------------------------------


def rank_sweep(args, ctx, monitor) -> int:
    from streamlab.collective.impls import bandwidths, choose, describe
    from streamlab.collective.worker import gather
    from streamlab.io import write_json_atomic

    sizes = parse_sizes(args.sizes or DEFAULT_SIZES)
    impls = [i for i in (args.impl or ",".join(DEFAULT_IMPLS)).split(",") if i]
    rows, described, wrong = [], {}, []
    path = Path(args.out) / f"allreduce-w{ctx.world}-{'-'.join(impls)}.json"
    for name in impls:
        monitor.phase(f"set up all-reduce {name}")
        fn = choose(name, ctx.world, ctx.device, max_bytes=max(sizes), group=ctx.group,
                    cpu_group=ctx.cpu_group)
        if fn is None:
            raise Failure("the all-reduce sweep needs several ranks or a GPU", EXIT_BAD_INPUT)
        described[name] = describe(fn)
        for size in sizes:
            monitor.phase(f"sweep {name} {size} bytes")
            mine = _time_size(fn, size, args, ctx)
            per_rank = gather(ctx, mine)
            t = max(r["median_us"] for r in per_rank)
            alg, bus = bandwidths(size, t, ctx.world)
            row = {"impl": name, "backend": getattr(fn, "backend", name), "bytes": size,
                   "count": size // 2, "dtype": "bf16", "time_us": t, "algbw_gbs": alg,
                   "busbw_gbs": bus, "p20_us": per_rank[0]["p20_us"], "p80_us": per_rank[0]["p80_us"],
                   "per_rank_us": [r["median_us"] for r in per_rank],
                   "correct": all(r["correct"] for r in per_rank)}
            rows.append(row)
            if not row["correct"]:
                wrong.append(f"{name} at {size} bytes")
            if ctx.rank == 0:  # rows so far, marked incomplete: a run stopped by a time limit keeps them
                write_json_atomic(path, document(ctx, args, described, rows, complete=False))
        del fn
    code = EXIT_CHECK_FAILED if wrong else 0
    message = f"wrong all-reduce sums: {', '.join(wrong)}" if wrong else ""
    if ctx.rank == 0:
        from rich.console import Console
        console = Console(highlight=False)
        doc = document(ctx, args, described, rows, complete=True)
        write_json_atomic(path, doc)
        print_sweep(console, doc)
        console.print(f"result: {path}")
        monitor.outcome(code, message)
    return code


def document(ctx, args, described: dict, rows: list[dict], complete: bool) -> dict:
    import torch

    from streamlab.exec.session import versions

    return {"kind": "allreduce-sweep", "world": ctx.world, "complete": complete,
            "device": torch.cuda.get_device_name(ctx.device) if ctx.gpu else "cpu",
            "versions": versions(), "implementations": described,
            "method": ("graph of %d back-to-back calls, %d warm-up + %d timed replays, device events; "
                       "time = slowest rank's median per call" % (args.calls, args.warmup, args.iters))
            if ctx.gpu else "eager calls timed on the host (CPU, gloo): not a graph measurement",
            "rows": list(rows)}


def _time_size(fn, size: int, args, ctx) -> dict:
    import time

    import torch
    import torch.distributed as dist

    from streamlab.analysis import percentiles
    from streamlab.collective.watch import in_collective

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
        for _ in range(args.warmup):
            graph.replay()
        torch.cuda.synchronize(ctx.device)
        with in_collective("barrier before timing"):
            dist.barrier(group=ctx.cpu_group)
        marks = [torch.cuda.Event(enable_timing=True) for _ in range(args.iters + 1)]
        marks[0].record()
        for i in range(args.iters):
            graph.replay()
            marks[i + 1].record()
        marks[-1].synchronize()
        per_call = [marks[i].elapsed_time(marks[i + 1]) * 1e3 / args.calls for i in range(args.iters)]
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


def _human(n: int) -> str:
    for unit, scale in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{unit}"
    return str(n)


def print_sweep(console, doc: dict) -> None:
    from rich.table import Table

    table = Table(title=f"all-reduce alone in a graph, {doc['world']} ranks, {doc['device']} "
                        f"(busbw = algbw x 2(n-1)/n)", title_justify="left")
    for col in ("size", "count", "type", "impl", "time us", "p20-p80 r0", "algbw GB/s",
                "busbw GB/s", "per rank us", "ok"):
        table.add_column(col, justify="left" if col in ("impl", "type") else "right")
    for r in sorted(doc["rows"], key=lambda r: (r["bytes"], r["impl"])):
        table.add_row(_human(r["bytes"]), str(r["count"]), r["dtype"], r["backend"],
                      f"{r['time_us']:.2f}", f"{r['p20_us']:.1f}-{r['p80_us']:.1f}",
                      f"{r['algbw_gbs']:.2f}", f"{r['busbw_gbs']:.2f}",
                      " ".join(f"{v:.1f}" for v in r["per_rank_us"]),
                      "yes" if r["correct"] else "[red]NO[/]")
    console.print(table)
    console.print(f"[dim]{doc['method']}[/]")
