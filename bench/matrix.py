"""The GPU executor benchmark: shipped layouts x batch sizes at context 8192 (GLM-5, tp 8 shapes).

    python bench/matrix.py --out DIR [--batches 1,4,16,64] [--scenarios serial,pr23562,a_v4,a_v4_moe_dual]

Writes DIR/matrix.json (every run's full result) and DIR/matrix.md (the summary tables).
"""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

from rich.console import Console

from streamlab.errors import Failure
from streamlab.exec.fresh import run_apart
from streamlab.io import write_atomic, write_json_atomic
from streamlab.scenario import load

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--batches", default="1,4,16,64")
    ap.add_argument("--scenarios", default="serial,pr23562,a_v4,a_v4_moe_dual")
    ap.add_argument("--context", type=int, default=8192)
    args = ap.parse_args()
    console = Console(width=160)
    results = []
    for batch in [int(b) for b in args.batches.split(",")]:
        for name in args.scenarios.split(","):
            scen = load(ROOT / "scenarios" / f"{name}.yaml").override(batch=batch, context=args.context)
            t0 = time.perf_counter()
            try:
                res = run_apart(scen, verbose=True, backend=None, device="cuda", layers=None,
                                out=args.out / "runs")
            except Failure as e:
                console.print(f"[red]{name} batch {batch}: {e}")
                results.append({"scenario": name, "batch": batch, "error": str(e)})
                continue
            res["batch"] = batch
            res["seconds"] = time.perf_counter() - t0
            results.append(res)
            write_json_atomic(args.out / "matrix.json", results)
    write_atomic(args.out / "matrix.md", markdown(results))
    console.print(markdown(results))


def markdown(results: list[dict]) -> str:
    out = io.StringIO()
    ok = [r for r in results if "measured" in r]
    if ok:
        r0 = ok[0]
        out.write(f"Device: {r0['device']}; versions: {r0['versions']}\n\n")
    out.write("| scenario | batch | layer us median | p20 | p80 | repeat spread | drift | vs serial | "
              "wall (profiled) | kernel sum | overlap | bubble launch/fence/stall | AR/call | streams | "
              "equal to serial | latency / budget | without AR set time |\n")
    out.write("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    serial = {r["batch"]: r["measured"]["per_layer_us"]["median"] for r in ok if r["scenario"] == "serial"}
    for r in results:
        if "measured" not in r:
            out.write(f"| {r['scenario']} | {r['batch']} | error: {r['error']} |\n")
            continue
        m, p = r["measured"], r["measured"]["profile"]
        lay = m["per_layer_us"]
        b = p["bubble_by_class_us"]
        ar = p["allreduce_per_call_us"]
        base = serial.get(r["batch"])
        delta = f"{lay['median'] - base:+.1f}" if base else "-"
        out.write(f"| {r['scenario']} | {r['batch']} | {lay['median']:.1f} | {lay['p20']:.1f} | "
                  f"{lay['p80']:.1f} | {100 * m['repeat_spread']:.2f}% | "
                  f"{100 * m.get('drift', 0.0):.2f}% | {delta} | "
                  f"{p['wall_us']['median']:.1f} | {p['kernel_sum_us']['median']:.1f} | "
                  f"{p['overlap']['median']:.2f} | {b['launch']['median']:.1f}/{b['fence']['median']:.1f}/"
                  f"{b['stall']['median']:.1f} | {ar['median'] if ar else 0:.1f} | "
                  f"{p['physical_streams']} | {r['equal_to_serial']} | "
                  f"{lay['median'] / m['budget_us']:.2f} | "
                  f"{lay['median'] / m.get('budget_roofline_us', m['budget_us']):.2f} |\n")
    for r in ok:
        out.write(f"\n### {r['scenario']} batch {r['batch']}: per node (us)\n\n")
        out.write("| node | kernels | in-graph | isolated | slowdown | floor | isolated/floor |\n|---|---|---|---|---|---|---|\n")
        for name, n in r["measured"]["nodes"].items():
            g = n["in_graph_us"]["median"] if n["in_graph_us"] else float("nan")
            far = n["isolated_us"] / n["floor_us"] if n["floor_us"] else float("inf")
            out.write(f"| {name} | {n['kernels']} | {g:.2f} | {n['isolated_us']:.2f} | "
                      f"{n['slowdown']:.2f} | {n['floor_us']:.2f} | {far:.1f} |\n")
    out.write("\nlatency / budget: per-layer median over (sum of node floors + 2 us per kernel); a "
              "node's floor is max(bytes / copy bandwidth, FLOPs / peak), and the emulated "
              "all-reduce's floor is its set time (it holds the stream that long by design); the "
              "last column counts only its bytes.\n\nrepeat spread: max - min of the medians of 5 "
              "interleaved repeats (replay i in repeat i mod 5) over a timed window of >= 2 s, "
              "over their median; drift: the same over the medians of consecutive blocks of 50 "
              "replays (how much the layer's speed wandered during the window).\n")
    return out.getvalue()


if __name__ == "__main__":
    main()
