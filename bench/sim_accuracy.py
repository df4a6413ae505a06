"""Simulator accuracy on measured runs. The profile is calibrated from the serial layout, isolated
nodes and the pairwise micro-benchmark; the dual-stream layouts are held out and compared here.

    python bench/sim_accuracy.py MATRIX.json [--pairwise PAIRWISE.json] [--name h100]
        [--profile-out streamlab/sim/profiles/h100.yaml] [--out sim_accuracy.md]
    python bench/sim_accuracy.py MATRIX.json --profile streamlab/sim/profiles/h200.yaml
    ... [--traces traces/h100-2026-11-22]  (adds each node's time inside the layer vs the run traces)

Tie rule (TIE_RULE below): two layouts tie at a batch when their measured per-layer medians
differ by less than the larger of their repeat spreads (max - min of the repeat medians, in us):
repeats of one layout already disagree by that much, so the measurement does not order them. The
ranking check passes when the simulation orders every pair that does not tie as measured; the
strict ranking (ties ordered by the medians too) is reported beside it.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

from streamlab.analysis import summarize
from streamlab.io import write_atomic
from streamlab.results import load_runs
from streamlab.scenario import load
from streamlab.sim.calibrate import calibrate
from streamlab.sim.engine import per_layer_us, simulate
from streamlab.sim.profile import Profile, dump_profile, load_profile
from streamlab.trace.chrome import read_chrome

ROOT = Path(__file__).resolve().parent.parent
LAYOUTS = ("serial", "pr23562", "a_v4", "a_v4_moe_dual")
CALIBRATION = "serial"
TIE_RULE = ("two layouts tie when their measured medians differ by less than the larger of their "
            "noises (`streamlab.results.Latency.noise` x the median, in us: the larger of the repeat "
            "spread and half the drift within the timed window, how far a fresh run could land)")


@dataclass(frozen=True)
class Measured:
    us: float  # per-layer median
    noise_us: float  # Latency.noise in us


def measured_runs(matrix: Path) -> dict[tuple[str, int], Measured]:
    return {(r.scenario, r.batch): Measured(r.latency.median, r.latency.noise * r.latency.median)
            for r in load_runs(matrix) if r.measured}


def simulated_timeline(profile: Profile, name: str, batch: int):
    scen = load(ROOT / "scenarios" / f"{name}.yaml").override(batch=batch)
    return simulate(scen.layer, scen.program, profile, scen.measure.layers), scen.measure.layers


def simulated(profile: Profile, batch: int) -> dict[str, float]:
    return {name: per_layer_us(*simulated_timeline(profile, name, batch)) for name in LAYOUTS}


def node_lines(profile: Profile, traces: Path, batches: list[int]) -> list[str]:
    """Each node's mean time per layer inside the held-out layouts, simulated vs the run's
    profiled trace: where the overlap model stretches the wrong kernel, the layer total can still
    come out right; this shows it."""
    lines = ["| batch | layout | mean abs error per node, us | furthest off (simulated / traced us) |",
             "|---|---|---|---|"]
    errors = []
    for batch in batches:
        for name in LAYOUTS:
            path = traces / f"{name}-b{batch}.trace.json.gz"
            if name == CALIBRATION or not path.exists():
                continue
            traced = summarize(read_chrome(path)).nodes
            sim = summarize(simulated_timeline(profile, name, batch)[0]).nodes
            off = {n: sim[n].mean - traced[n].mean for n in sim if n in traced}
            errors += [abs(v) for v in off.values()]
            worst = sorted(off, key=lambda n: -abs(off[n]))[:3]
            lines.append(f"| {batch} | {name} | {sum(abs(v) for v in off.values()) / len(off):.2f} | "
                         + ", ".join(f"{n} {sim[n].mean:.1f} / {traced[n].mean:.1f}" for n in worst) + " |")
    if not errors:
        return []
    return ([f"Node times inside the layer, simulated vs the run traces in {traces} (profiled replays, "
             f"whose kernels read ~0.1-0.4 us longer than in replays timed with events): mean absolute "
             f"error per node {sum(errors) / len(errors):.2f} us.", ""] + lines)


def tie(a: Measured, b: Measured) -> bool:
    """TIE_RULE."""
    return abs(a.us - b.us) < max(a.noise_us, b.noise_us)


def misranked(sim: dict[str, float], meas: dict[str, Measured]) -> list[tuple[str, str, float]]:
    """(faster, slower, us apart) for each pair of layouts the measurement orders (no tie) and
    the simulation orders the other way round."""
    wrong = []
    for a, b in combinations(LAYOUTS, 2):
        diff = meas[a].us - meas[b].us
        if not tie(meas[a], meas[b]) and (sim[a] - sim[b]) * diff <= 0:
            wrong.append((a, b, -diff) if diff < 0 else (b, a, diff))
    return wrong


def ranking_lines(batch: int, sim: dict[str, float], meas: dict[str, Measured]) -> list[str]:
    """The strict ranking, then every pair: resolved (and whether the simulation agrees) or a tie."""
    by_sim, by_meas = sorted(LAYOUTS, key=sim.get), sorted(LAYOUTS, key=lambda n: meas[n].us)
    ties = [f"{a} ~ {b} ({abs(meas[a].us - meas[b].us):.1f} < {max(meas[a].noise_us, meas[b].noise_us):.1f} us)"
            for a, b in combinations(LAYOUTS, 2) if tie(meas[a], meas[b])]
    wrong = misranked(sim, meas)
    verdict = "identical" if not wrong else "DIFFERS on " + "; ".join(
        f"{fast} < {slow} by {us:.1f} us" for fast, slow, us in wrong)
    strict = "identical" if by_sim == by_meas else "DIFFERS"
    return [(f"- batch {batch}: strict ranking {strict}: simulated {' < '.join(by_sim)}; "
             f"measured {' < '.join(by_meas)}"),
            (f"  - up to ties: {verdict} ({6 - len(ties)} of 6 pairs resolved by the measurement; "
             f"ties: {'; '.join(ties) or 'none'})")]


def report(matrix: Path, profile: Profile, origin: str, traces: Path | None = None) -> str:
    runs = measured_runs(matrix)
    lines = [f"profile {profile.name} ({origin}) vs {matrix}", "",
             "| batch | layout | simulated us | measured us | noise us | error | held out |",
             "|---|---|---|---|---|---|---|"]
    errors, rankings = [], []
    for batch in sorted({b for _, b in runs}):
        sim = simulated(profile, batch)
        meas = {n: runs[(n, batch)] for n in LAYOUTS}
        for name in LAYOUTS:
            err = (sim[name] - meas[name].us) / meas[name].us
            held = name != CALIBRATION
            if held:
                errors.append(abs(err))
            lines.append(f"| {batch} | {name} | {sim[name]:.1f} | {meas[name].us:.1f} | "
                         f"{meas[name].noise_us:.1f} | {100 * err:+.1f}% | {'yes' if held else 'no (calibration)'} |")
        rankings += ranking_lines(batch, sim, meas)
    lines += ["", f"mean absolute percentage error over held-out layouts: {100 * sum(errors) / len(errors):.2f}%",
              "", f"Ranking per batch. Tie rule: {TIE_RULE}.", ""] + rankings
    if traces is not None:
        lines += [""] + node_lines(profile, traces, sorted({b for _, b in runs}))
    lines += ["", "Profile parameters:", ""] + [f"- {k} = {v}: {src}" for k, v, src in profile.describe()]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("matrix", type=Path, help="bench/matrix.py result (matrix.json) to report on")
    ap.add_argument("--calibration", type=Path, nargs="*", default=[],
                    help="more measured runs to calibrate from (single-stream layouts of other "
                         "variants, e.g. serial_moe_unfused.json)")
    ap.add_argument("--pairwise", type=Path, help="bench/pairwise.py result, for calibration")
    ap.add_argument("--pairwise-state", help="clean | cupti (default: matched to the matrix)")
    ap.add_argument("--profile", help="use this profile instead of calibrating from MATRIX")
    ap.add_argument("--name", default="h100", help="name of the calibrated profile")
    ap.add_argument("--profile-out", type=Path, help="write the calibrated profile here")
    ap.add_argument("--traces", type=Path, help="the matrix's run traces (LAYOUT-bBATCH.trace.json.gz), "
                    "to compare each node's time inside the layer")
    ap.add_argument("--out", type=Path, help="write the report here (else print it)")
    args = ap.parse_args()
    if args.profile:
        profile, origin = load_profile(args.profile), f"loaded from {args.profile}"
    else:
        inputs = [args.matrix, *args.calibration]
        profile = calibrate(inputs, args.name, pairwise=args.pairwise, pairwise_state=args.pairwise_state)
        origin = (f"calibrated from {', '.join(map(str, inputs))}"
                  + (f" and {args.pairwise}" if args.pairwise else ""))
        if args.profile_out:
            write_atomic(args.profile_out, dump_profile(profile))
    text = report(args.matrix, profile, origin, args.traces)
    if args.out:
        write_atomic(args.out, text)
    print(text, end="")


if __name__ == "__main__":
    main()
