"""Multi-process runs without the typer CLI (tests, bench scripts):

    python -m streamlab.collective run SCENARIO [SCENARIO ...] --world N [--launcher "TORCHRUN OPTS"]
           [--rank-timeout S] [--batch 4,64] [--impl nccl,symm_mem] [--out DIR] [other `run` options]
    python -m streamlab.collective sweep --world N [--impl nccl,symm_mem] [--sizes 8K..64M] [--out DIR]
"""

from __future__ import annotations

import argparse
import shlex
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m streamlab.collective")
    p.add_argument("mode", choices=("run", "sweep"))
    p.add_argument("--world", type=int, required=True, help="ranks per node (one GPU each)")
    p.add_argument("--launcher", default="", help="torchrun options for multi-node runs (one string)")
    p.add_argument("--rank-timeout", type=float, default=None)
    args, rest = p.parse_known_args(argv)
    from streamlab.collective.launch import DEFAULT_RANK_TIMEOUT, launch_worker

    timeout = args.rank_timeout or DEFAULT_RANK_TIMEOUT
    launcher = shlex.split(args.launcher) or None
    if args.mode == "run":
        return launch_worker(["run", *rest], args.world, launcher_args=launcher, rank_timeout=timeout)
    from streamlab.collective.sweep import sweep_cli
    return sweep_cli(rest, args.world, launcher_args=launcher, rank_timeout=timeout)


if __name__ == "__main__":
    sys.exit(main())
