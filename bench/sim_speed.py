"""Simulation speed: what a schedule search pays per layout once the profile is loaded.

    python bench/sim_speed.py [--profile h100 mi355x] [--rounds 7] [--calls 200] [--out DIR]

Per profile and shipped layout at its default shape (4 layers, the measure default):
- rank: `engine.run(...).per_layer_us`: the schedule captured and mapped to lanes, the event loop,
  the latency (node costs per layer shape come cached on the profile after the first call);
- predict: `predict(...)`: the same plus the prediction interval and the overlap list;
- timeline: `engine.simulate(...)`: the same as rank plus the Timeline every report reads.
And the profile's load (YAML, validation) and the first call at a new shape (node costs).
Times are CPU time on one core (time.thread_time; the simulator is single-threaded Python), the
best round's median (the machine is shared; the best round is the least disturbed).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path

from streamlab.io import write_atomic, write_json_atomic
from streamlab.scenario import load
from streamlab.sim.engine import run, simulate
from streamlab.sim.predict import predict
from streamlab.sim.profile_file import load_profile

ROOT = Path(__file__).resolve().parent.parent
LAYOUTS = ("serial", "pr23562", "a_v4", "a_v4_moe_dual")


def best_median_ms(fn, rounds: int, calls: int) -> float:
    """The best round's median of `calls` calls, in CPU ms of this process (time.thread_time: the
    time on its one core, not the wall time other processes on the shared machine take)."""
    best = float("inf")
    for _ in range(rounds):
        times = []
        for _ in range(calls):
            t = time.thread_time()
            fn()
            times.append(time.thread_time() - t)
        best = min(best, statistics.median(times))
    return best * 1e3


def first_call(name: str, scen) -> float:
    """Seconds of the first simulation at a shape on a freshly loaded profile (node costs computed)."""
    fresh = load_profile(name)
    t = time.thread_time()
    run(scen.layer, scen.program, fresh, scen.measure.layers)
    return time.thread_time() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", nargs="*", default=["h100", "mi355x"])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--out", type=Path, help="write sim_speed.json and sim_speed.md here")
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    rows = []
    for name in args.profile:
        load_ms = best_median_ms(lambda n=name: load_profile(n), args.rounds, 10)
        prof = load_profile(name)
        for layout in LAYOUTS:
            scen = load(ROOT / "scenarios" / f"{layout}.yaml")
            layers = scen.measure.layers

            first_ms = min(first_call(name, scen) for _ in range(args.rounds)) * 1e3
            run(scen.layer, scen.program, prof, layers)
            rank = best_median_ms(lambda s=scen, p=prof: run(s.layer, s.program, p, s.measure.layers).per_layer_us,
                                  args.rounds, args.calls)
            pred = best_median_ms(lambda s=scen, p=prof: predict(s, p), args.rounds, args.calls)
            tl = best_median_ms(lambda s=scen, p=prof: simulate(s.layer, s.program, p, s.measure.layers),
                                args.rounds, args.calls)
            rows.append({"profile": name, "layout": layout, "batch": scen.shape.batch, "layers": layers,
                         "rank_ms": rank, "predict_ms": pred, "timeline_ms": tl,
                         "layouts_per_s": 1e3 / rank, "first_call_ms": first_ms, "profile_load_ms": load_ms})
    doc = {"date": date.today().isoformat(), "python": platform.python_version(),
           "machine": platform.processor() or platform.machine(), "command": " ".join(sys.argv),
           "rows": rows}
    lines = [(f"Simulation speed, {doc['date']}, Python {doc['python']}, one core of a shared "
              f"2-core VM (CPU time of the one thread); best round's median of {args.calls} calls x {args.rounds} rounds."), "",
             ("| profile | layout | rank ms | layouts/s | predict ms | with Timeline ms | first call at a shape ms "
              "| profile load ms |"), "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['profile']} | {r['layout']} | {r['rank_ms']:.3f} | {r['layouts_per_s']:.0f} | "
              f"{r['predict_ms']:.3f} | {r['timeline_ms']:.3f} | {r['first_call_ms']:.1f} | "
              f"{r['profile_load_ms']:.1f} |" for r in rows]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out:
        write_json_atomic(args.out / "sim_speed.json", doc)
        write_atomic(args.out / "sim_speed.md", text)


if __name__ == "__main__":
    main()
