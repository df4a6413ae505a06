"""One table from the results of multi-rank runs and all-reduce sweeps in a folder:

    python -m streamlab.collective.summary DIR

Layer runs: per scenario, batch and all-reduce, the per-layer latency (slowest rank's median),
the all-reduce per call inside the graph and alone in a graph (median over ranks of each rank's
median, both nodes), their ratio, bubble and streams. Sweeps: time and busbw per size and
implementation, side by side.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table


def load(folder: Path) -> tuple[list[dict], list[dict]]:
    runs, sweeps = [], []
    for p in sorted(folder.rglob("*.json")):
        try:
            doc = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and doc.get("kind") == "allreduce-sweep":
            sweeps.append(doc)
        elif isinstance(doc, dict) and "ranks" in doc and "world" in doc:
            runs.append(doc)
    return runs, sweeps


def _med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def layer_rows(runs: list[dict]) -> list[dict]:
    rows = []
    for r in runs:
        kind = "measured" if "measured" in r else "simulated"
        sec = r[kind]
        in_graph, alone = [], []
        for node in r.get("allreduce_nodes", {}).values():
            for pr in node["per_rank"]:
                in_graph.append((pr.get("in_graph_us") or {}).get("median"))
                alone.append(pr.get("isolated_us"))
        ig, iso = _med(in_graph), _med(alone)
        bus = _med([pr.get("busbw_gbs") for n in r.get("allreduce_nodes", {}).values() for pr in n["per_rank"]])
        rows.append({
            "scenario": r["scenario"], "batch": r["shape"]["batch"], "context": r["shape"]["context"],
            "impl": r.get("allreduce", {}).get("backend", "?"), "world": r["world"], "kind": kind,
            "layer_us": max(x["per_layer_us"]["median"] for x in r["ranks"]),
            "spread": sec.get("repeat_spread"),
            "ar_in_graph_us": ig, "ar_isolated_us": iso,
            "ar_slowdown": ig / iso if ig and iso else None, "ar_busbw_gbs": bus,
            "bubble_us": (sec["profile"].get("bubble_us") or {}).get("median"),
            "streams": sec["profile"].get("physical_streams"),
            "equal": r.get("equal_to_serial"), "complete": r.get("complete"),
        })
    order = {"serial": 0, "pr23562": 1, "a_v4": 2, "a_v4_moe_dual": 3}
    rows.sort(key=lambda x: (x["batch"], order.get(x["scenario"], 9), x["scenario"], x["impl"]))
    return rows


def print_summary(console: Console, folder: Path) -> int:
    runs, sweeps = load(folder)
    f = lambda v, p=1: "-" if v is None else f"{v:.{p}f}"
    for doc in sweeps:
        impls = sorted({r["backend"] for r in doc["rows"]})
        t = Table(title=f"all-reduce alone in a graph: {doc['world']} x {doc['device']}"
                        + ("" if doc.get("complete", True) else " [red](INCOMPLETE: stopped early)[/]"),
                  title_justify="left")
        t.add_column("bytes", justify="right")
        for i in impls:
            t.add_column(f"{i} us", justify="right")
            t.add_column(f"{i} busbw", justify="right")
        by = {}
        for r in doc["rows"]:
            by.setdefault(r["bytes"], {})[r["backend"]] = r
        for size in sorted(by):
            cells = [str(size)]
            for i in impls:
                r = by[size].get(i)
                bad = r is not None and not r["correct"]
                cells += [("WRONG " if bad else "") + f(r and r["time_us"], 2), f(r and r["busbw_gbs"])]
            t.add_row(*cells)
        console.print(t)
    rows = layer_rows(runs)
    if rows:
        t = Table(title="layer runs with a real all-reduce (per-layer: slowest rank; AR: median over "
                        "ranks and both AR nodes)", title_justify="left")
        for col in ("scenario", "batch", "ctx", "AR impl", "ranks", "per-layer us", "spread %",
                    "AR in-graph us", "AR alone us", "in-graph/alone", "AR busbw", "bubble us",
                    "streams", "= serial"):
            t.add_column(col, justify="left" if col in ("scenario", "AR impl") else "right")
        for r in rows:
            t.add_row(r["scenario"], str(r["batch"]), str(r["context"]), r["impl"], str(r["world"]),
                      f(r["layer_us"]), f(100 * r["spread"], 2) if r["spread"] is not None else "-",
                      f(r["ar_in_graph_us"], 2), f(r["ar_isolated_us"], 2), f(r["ar_slowdown"], 2),
                      f(r["ar_busbw_gbs"]), f(r["bubble_us"]), str(r["streams"]),
                      "yes" if r["equal"] else "[red]NO[/]")
        console.print(t)
    if not rows and not sweeps:
        console.print(f"no results in {folder}")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m streamlab.collective.summary DIR", file=sys.stderr)
        return 2
    return print_summary(Console(highlight=False), Path(argv[0]))


if __name__ == "__main__":
    sys.exit(main())
