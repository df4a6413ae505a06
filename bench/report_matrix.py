"""Turn a device matrix (bench/matrix.py output, fetched with its runs.tgz unpacked beside it)
into the compare report: tables, plots and Markdown, as `streamlab compare` would write them.

    python bench/report_matrix.py RESULTS_DIR OUT_DIR [PLOT_BATCH]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from streamlab.report.compare import Run, export
from streamlab.scenario import load

ROOT = Path(__file__).resolve().parent.parent


def main(results: Path, out: Path, plot_batch: int | None) -> None:
    runs = []
    for r in json.loads((results / "matrix.json").read_text()):
        if "measured" not in r:
            continue
        trace = Path(r["measured"]["trace"])
        r["measured"]["trace"] = str(results / "runs" / trace.name)
        scen = load(ROOT / "scenarios" / f"{r['scenario']}.yaml").override(batch=r["batch"])
        runs.append(Run(scen, r["batch"], r))
    for p in export(runs, out, plot_batch):
        print(p)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else None)
