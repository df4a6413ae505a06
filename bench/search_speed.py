"""Search speed: the whole 2-stream search of one batch, and the engine's throughput on its own.

For each profile, `streamlab.search.find` at one batch with the default space (2 streams, <= 4
waits and <= 1 barrier per region, every variant the profile measured, top 5) on `--workers`
processes, split into enumeration, bounds and time inside the simulator; then the simulator
alone on a sample of one region's layouts in one process (layouts per second per core at
`--layers` layers, and at 1 layer), so the search's own overhead and the engine's speed are told
apart. Engine times are CPU seconds (in the search: summed over the workers, on the layouts it
actually simulated), so other jobs on the cores do not inflate them; wall times do include them.

    python bench/search_speed.py                                  # h200, h100, mi355x at batch 4
    python bench/search_speed.py --profiles h100 --batch 64 --out bench/results/search-X
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import time
from dataclasses import asdict, replace
from datetime import date
from pathlib import Path

from streamlab.io import write_atomic, write_json_atomic
from streamlab.models import Shape
from streamlab.search.enumerate import Limits, assemble
from streamlab.search.find import Request, find
from streamlab.search.layout import build_program
from streamlab.search.predict import layer_at, rank_us
from streamlab.search.rank import _LISTED
from streamlab.search.space import Space

ROOT = Path(__file__).resolve().parents[1]


def engine_rate(result, profile_name: str, layers: int, count: int) -> dict:
    """Simulate `count` enumerated layouts of the first variant in this process: ms per layout."""
    from streamlab.sim import load_profile

    profile = load_profile(profile_name)
    req = result.request
    variant = result.variants[0]
    vs = result.spaces[variant]
    space = Space.of(layer_at(req.model, replace(req.shape, batch=req.batches[0]), variant))
    region = vs.regions[0]
    step = max(1, len(region) // count)
    programs = []
    for rl in region[::step][:count]:
        parts = vs.serial()
        parts[0] = rl
        programs.append(build_program(space, assemble(space, parts)[0]))
    out = {}
    for n_layers in sorted({layers, 1}):
        t0 = time.process_time()
        for program in programs:
            rank_us(space.layer, program, profile, n_layers)
        cpu = time.process_time() - t0
        out[f"layers_{n_layers}"] = {"layouts": len(programs), "cpu_s": cpu, "ms_per_layout": 1e3 * cpu / len(programs),
                                     "per_core_per_s": len(programs) / cpu}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profiles", default="h200,h100,mi355x")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--engine-layouts", type=int, default=200)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / f"search-{date.today().isoformat()}")
    args = ap.parse_args()
    runs = []
    for name in args.profiles.split(","):
        _LISTED.clear()  # each profile's search enumerates its space itself
        load_before = os.getloadavg()
        t0 = time.perf_counter()
        result = find(Request(shape=Shape(batch=args.batch), batches=(args.batch,), profile=name,
                              limits=Limits(), layers=args.layers, workers=args.workers))
        wall = time.perf_counter() - t0
        (o,) = result.batches
        t = o.tally
        run = {"profile": name, "batch": args.batch, "wall_s": wall, "tally": asdict(t),
               "variants": [asdict(v) for v in result.variants],
               "best": {"name": o.best.candidate.name, "us": o.best.candidate.predicted.us},
               "serial_us": o.serial.candidate.predicted.us,
               "simulated_per_s": t.simulated / wall,
               "engine_ms_per_layout_in_search": 1e3 * t.engine_s / max(1, t.simulated),
               "search_overhead_s": wall - t.engine_s / args.workers,
               "engine": engine_rate(result, name, args.layers, args.engine_layouts),
               "loadavg_before_after": [load_before, os.getloadavg()]}
        runs.append(run)
        print(f"{name}: {wall:.1f} s, {t.simulated} simulated of {t.considered} considered "
              f"({t.classes:,} classes), engine {run['engine']}", flush=True)
    doc = {"date": date.today().isoformat(), "command": "python bench/search_speed.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out"),
        "machine": {"cpu": _cpu(), "cores": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)),
                    "python": platform.python_version()},
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                 text=True, check=False).stdout.strip(),
        "runs": runs}
    write_json_atomic(args.out / "search_speed.json", doc)
    write_atomic(args.out / "search_speed.md", _markdown(doc))
    print(f"wrote {args.out}")


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _markdown(doc: dict) -> str:
    machine = doc["machine"]
    header = ("| profile | wall s | enumerate s | bounds s | engine CPU s (all workers) | classes | considered | "
              "simulated | simulated / s | in the search: engine layouts / s / core | sample: engine ms / layout "
              "(4 layers, 1 layer) | sample: engine layouts / s / core (4, 1) | best us | serial us | load |")
    lines = [f"# Search speed ({doc['date']}, commit {doc['commit']})", "",
             (f"`{doc['command']}` on {machine['cpu']}, {machine['affinity']} cores (shared with other jobs: "
              f"load average in the table), Python {machine['python']}."), "", header, "|" + "---|" * 15]
    for r in doc["runs"]:
        t, e = r["tally"], r["engine"]
        four, one = e.get("layers_4", e[min(e)]), e["layers_1"]
        lines.append(
            f"| {r['profile']} | {r['wall_s']:.1f} | {t['enumerate_s']:.1f} | {t['bound_s']:.1f} | {t['engine_s']:.1f} | "
            f"{t['classes']:,} | {t['considered']:,} | {t['simulated']:,} | {r['simulated_per_s']:.0f} | "
            f"{1e3 / r['engine_ms_per_layout_in_search']:,.0f} | "
            f"{four['ms_per_layout']:.2f}, {one['ms_per_layout']:.2f} | {four['per_core_per_s']:.0f}, "
            f"{one['per_core_per_s']:.0f} | {r['best']['us']:.1f} | {r['serial_us']:.1f} | "
            f"{r['loadavg_before_after'][0][0]:.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
