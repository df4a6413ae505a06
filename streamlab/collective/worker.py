"""The rank entry point of a multi-process run: the one command line the launcher starts, once
per rank, through torch's elastic launcher (it is internal: people use `streamlab run --world N`
and `streamlab allreduce`, whose options the launcher checks with `parse` before any rank starts):

    python -m streamlab.collective.worker run SCENARIO [SCENARIO ...] [--batch 4,64] [--impl nccl,symm_mem] ...
    python -m streamlab.collective.worker sweep [--impl nccl,symm_mem] [--sizes 8K..64M] ...
    python -m streamlab.collective.worker layouts JOBS.json


Each rank starts its liveness monitor (stdlib only) before importing torch, takes GPU LOCAL_RANK,
joins the process group (collective.rank), and runs its mode: `layer_runs` (scenarios with a real
all-reduce bound to the layer's all-reduce nodes) or `sweep` (the all-reduce alone over message
sizes), or `layouts` (search --measure: rank r measures run r of the jobs file on its GPU, in no
process group: the runs are independent). Rank 0 writes the results; the others write nothing that outlives the run. A rank that
fails writes a report to the run folder and exits; the launcher turns the reports into one
message.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from streamlab.collective import watch
from streamlab.collective.rank import COLLECTIVE_GRACE, exit_now, init, teardown
from streamlab.kernels.allreduce import progress

__all__ = ["DEFAULT_RANK_TIMEOUT", "MODULE", "main", "parse"]

MODULE = "streamlab.collective.worker"  # what the launcher starts (and finds leftovers by)
DEFAULT_RANK_TIMEOUT = 180.0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--impl", default=None, help="all-reduce(s): auto, nccl, symm_mem, aiter, emulated (comma list)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--out", default="traces/runs")
    p.add_argument("--force", action="store_true", help="replace result files that exist")
    p.add_argument("--rank-timeout", type=float, default=DEFAULT_RANK_TIMEOUT)
    p.add_argument("--run-dir", default=None, help="the launcher's folder for heartbeats and reports")


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=f"python -m {MODULE}")
    sub = p.add_subparsers(dest="mode", required=True)
    run = sub.add_parser("run", help="run scenarios with a real all-reduce")
    run.add_argument("scenarios", nargs="+")
    run.add_argument("--model")
    run.add_argument("--batch", help="batch size(s), comma list")
    run.add_argument("--context", type=int)
    run.add_argument("--tp", type=int)
    run.add_argument("--page-size", type=int)
    run.add_argument("--kv-cache")
    run.add_argument("--backend")
    run.add_argument("--layers", type=int)
    run.add_argument("--profile", default="mi355x")
    run.add_argument("--verify-full", action="store_true")
    _common(run)
    sw = sub.add_parser("sweep", help="all-reduce alone in a graph, over message sizes")
    sw.add_argument("--sizes", default=None)
    sw.add_argument("--iters", type=int, default=100)
    sw.add_argument("--warmup", type=int, default=10)
    sw.add_argument("--calls", type=int, default=20, help="all-reduce calls captured back to back in one graph")
    _common(sw)
    lay = sub.add_parser("layouts", help="one layout run per rank, each alone on its GPU")
    lay.add_argument("jobs", help="the jobs file (collective.layout_runs.write_jobs)")
    _common(lay)
    return p.parse_args(argv)


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    rank, world = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1)
    local_rank = _env_int("LOCAL_RANK", 0)
    run_dir = Path(args.run_dir) if args.run_dir else None
    monitor = watch.RankMonitor(rank, world, local_rank, run_dir, args.rank_timeout,
                                COLLECTIVE_GRACE).start()
    progress.install(monitor)
    code = 0
    try:
        monitor.phase("import")
        if rank != 0:
            import warnings
            warnings.filterwarnings("ignore")  # one copy of each warning (rank 0's) is enough
        if args.mode == "layouts":
            from streamlab.collective.layout_runs import rank_layouts
            code = rank_layouts(args, rank, local_rank, monitor)
        else:
            monitor.phase("init process group")
            ctx = init(args.device, rank, world, local_rank, run_dir, args.rank_timeout)
            if args.mode == "run":
                from streamlab.collective.layer_runs import run_ranks
                code = run_ranks(args, ctx, monitor)
            else:
                from streamlab.collective.sweep import rank_sweep
                code = rank_sweep(args, ctx, monitor)
    except BaseException as e:  # noqa: BLE001 - every way out of a rank is reported, then exits
        from streamlab.errors import Failure
        if isinstance(e, KeyboardInterrupt):
            exit_now(130)
        exit_now(monitor.fail(e, expected=isinstance(e, Failure)))
    monitor.done()
    teardown(5.0)
    exit_now(0 if code in (0, None) or run_dir is not None else code)


if __name__ == "__main__":
    main()
