"""The compare report (tables, plots, Markdown) of a GPU matrix fetched from the device, as
`streamlab compare` writes it: for a matrix of before the compare report came back with it, or
to draw the per-layer plots at another batch.

    python bench/report_matrix.py RESULTS_DIR OUT_DIR [PLOT_BATCH]

RESULTS_DIR holds matrix.json (any result schema) and the runs.tgz of bench/gpu_check.sh
unpacked beside it (the runs' traces under runs/ or matrix/runs/).
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

from streamlab.report.compare import export
from streamlab.results import CompareResult, load


def main(results: Path, out: Path, plot_batch: int | None) -> None:
    matrix = load(results / "matrix.json", CompareResult)
    folder = next((d for d in (results / "runs", results / "matrix" / "runs") if d.is_dir()), results / "runs")
    runs = tuple(replace(r, trace=str(folder / Path(r.trace).name)) if r.trace else r for r in matrix.runs)
    for p in export(replace(matrix, runs=runs), out, plot_batch):
        print(p)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else None)
