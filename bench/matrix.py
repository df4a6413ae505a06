"""The GPU executor benchmark: shipped layouts x batch sizes (GLM-5, tp 8 shapes, context 8192),
which is `streamlab compare` on the GPU (each run in a process of its own), going on past a run
that fails. A thin entry point over the product:

    python bench/matrix.py --out DIR [--batches 1,4,16,64] [--scenarios serial,pr23562,a_v4,a_v4_moe_dual]
                           [--context 8192]

    = streamlab compare scenarios/serial.yaml ... --batch 1,4,16,64 --context 8192 --device cuda
                        --keep-going --out DIR/runs --report DIR

Writes DIR/report.json (a compare report: every run's full result), DIR/report.md (the tables,
plots and per-node tables) and the plots; each run's result and trace under DIR/runs/.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from streamlab.cli import app

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--batches", default="1,4,16,64")
    ap.add_argument("--scenarios", default="serial,pr23562,a_v4,a_v4_moe_dual")
    ap.add_argument("--context", type=int, default=8192)
    args = ap.parse_args(argv)
    scenarios = [str(ROOT / "scenarios" / f"{name}.yaml") for name in args.scenarios.split(",")]
    app(["compare", *scenarios, "--batch", args.batches, "--context", str(args.context), "--device", "cuda",
         "--keep-going", "--out", str(args.out / "runs"), "--report", str(args.out)], prog_name="streamlab")


if __name__ == "__main__":
    main()
