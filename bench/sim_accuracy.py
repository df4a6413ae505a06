"""Simulator accuracy on measured runs. The profile is calibrated from the serial layout, isolated
nodes and the pairwise micro-benchmark; the dual-stream layouts are held out and compared here,
each with its prediction interval (sim/predict.py): coverage is how many measured medians fall
inside their intervals.

    python bench/sim_accuracy.py MATRIX.json [--pairwise PAIRWISE.json] [--name h100]
        [--profile-out streamlab/sim/profiles/h100.yaml] [--out sim_accuracy.md]
    python bench/sim_accuracy.py MATRIX.json --profile streamlab/sim/profiles/h200.yaml
    python bench/sim_accuracy.py HELDOUT.json --profile h200-heldout.yaml --before h200.yaml
        (`calibrate --measure`'s profile before and after `calibrate --measure --for bench/heldout/*.yaml`)
    ... [--traces traces/h100-2026-11-22]  (adds each node's time inside the layer vs the run traces)

The layouts are those the matrix measured: the shipped dual-stream ones and any of
bench/heldout/ (written for the held-out test: each creates overlaps the shipped ones lack).

With --before, the report adds the same scores for a profile measured before `calibrate --measure
--for` added the held-out layouts' pairs: the intervals must widen where pairs are missing, not
the errors hide.

With --pairwise the report adds the before / after `calibrate --for` comparison: the same
held-out layouts predicted by a profile calibrated without any pair, by one whose pairs lack
those the layout itself creates (derived from its simulated replay, both orders, every batch:
what `--for` would measure), and by the complete one. The intervals must widen where pairs are
missing, not the errors hide.

Tie rule (TIE_RULE below): two layouts tie at a batch when their measured per-layer medians
differ by less than the larger of their repeat spreads (max - min of the repeat medians, in us):
repeats of one layout already disagree by that much, so the measurement does not order them. The
ranking check passes when the simulation orders every pair that does not tie as measured; the
strict ranking (ties ordered by the medians too) is reported beside it.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

from streamlab.analysis import summarize
from streamlab.io import write_atomic
from streamlab.results import load_runs
from streamlab.scenario import load
from streamlab.sim.calibrate import calibrate
from streamlab.sim.pairwise import with_pairs
from streamlab.sim.predict import Prediction, predict
from streamlab.sim.profile import DeviceProfile
from streamlab.sim.profile_file import dump_profile, load_profile
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
    """Per (layout, batch): a bench matrix or a `streamlab compare` report (results.load_runs)."""
    return {(r.scenario, r.batch): Measured(r.latency.median, r.latency.noise * r.latency.median)
            for r in load_runs(matrix) if r.measured}


def scenario(name: str, batch: int):
    """A shipped layout, or one written for the held-out test (bench/heldout/)."""
    path = next(p for p in (ROOT / "scenarios" / f"{name}.yaml", ROOT / "bench" / "heldout" / f"{name}.yaml")
                if p.exists())
    return load(path).override(batch=batch)


def layouts_in(runs: dict[tuple[str, int], Measured]) -> tuple[str, ...]:
    """The layouts the matrix measured: the shipped ones in their order, other shipped dual-stream
    ones, then bench/heldout/ ones (single-stream layouts of other variants are calibration
    inputs, not layouts to rank)."""
    names = {n for n, _ in runs}
    shipped = sorted(n for n in names if n not in LAYOUTS and (ROOT / "scenarios" / f"{n}.yaml").exists()
                     and len({op.stream for op in scenario(n, 4).program.launches}) > 1)
    extra = sorted(n for n in names if n not in LAYOUTS and (ROOT / "bench" / "heldout" / f"{n}.yaml").exists())
    return tuple(n for n in LAYOUTS if n in names) + tuple(shipped) + tuple(extra)


def predictions(profile: DeviceProfile, batch: int, layouts=LAYOUTS) -> dict[str, Prediction]:
    return {name: predict(scenario(name, batch), profile) for name in layouts}


def simulated(profile: DeviceProfile, batch: int, layouts=LAYOUTS) -> dict[str, float]:
    return {name: p.per_layer_us for name, p in predictions(profile, batch, layouts).items()}


def node_lines(profile: DeviceProfile, traces: Path, batches: list[int], layouts=LAYOUTS) -> list[str]:
    """Each node's mean time per layer inside the held-out layouts, simulated vs the run's
    profiled trace: where the overlap model stretches the wrong kernel, the layer total can still
    come out right; this shows it."""
    lines = ["| batch | layout | mean abs error per node, us | furthest off (simulated / traced us) |",
             "|---|---|---|---|"]
    errors = []
    for batch in batches:
        for name in layouts:
            path = traces / f"{name}-b{batch}.trace.json.gz"
            if name == CALIBRATION or not path.exists():
                continue
            traced = summarize(read_chrome(path)).nodes
            sim = summarize(predict(scenario(name, batch), profile).timeline).nodes
            off = {n: sim[n].mean - traced[n].mean for n in sim if n in traced}
            errors += [abs(v) for v in off.values()]
            worst = sorted(off, key=lambda n: -abs(off[n]))[:3]
            lines.append(f"| {batch} | {name} | {sum(abs(v) for v in off.values()) / len(off):.2f} | "
                         + ", ".join(f"{n} {sim[n].mean:.1f} / {traced[n].mean:.1f}" for n in worst) + " |")
    if not errors:
        return []
    return ([(f"Node times inside the layer, simulated vs the run traces in {traces} (profiled replays, "
             f"whose kernels read ~0.1-0.4 us longer than in replays timed with events): mean absolute "
             f"error per node {sum(errors) / len(errors):.2f} us."), ""] + lines)


def tie(a: Measured, b: Measured) -> bool:
    """TIE_RULE."""
    return abs(a.us - b.us) < max(a.noise_us, b.noise_us)


def misranked(sim: dict[str, float], meas: dict[str, Measured]) -> list[tuple[str, str, float]]:
    """(faster, slower, us apart) for each pair of layouts the measurement orders (no tie) and
    the simulation orders the other way round."""
    wrong = []
    for a, b in combinations(sim, 2):
        diff = meas[a].us - meas[b].us
        if not tie(meas[a], meas[b]) and (sim[a] - sim[b]) * diff <= 0:
            wrong.append((a, b, -diff) if diff < 0 else (b, a, diff))
    return wrong


def ranking_lines(batch: int, sim: dict[str, float], meas: dict[str, Measured]) -> list[str]:
    """The strict ranking, then every pair: resolved (and whether the simulation agrees) or a tie."""
    by_sim, by_meas = sorted(sim, key=sim.get), sorted(sim, key=lambda n: meas[n].us)
    pairs = list(combinations(sim, 2))
    ties = [f"{a} ~ {b} ({abs(meas[a].us - meas[b].us):.1f} < {max(meas[a].noise_us, meas[b].noise_us):.1f} us)"
            for a, b in pairs if tie(meas[a], meas[b])]
    wrong = misranked(sim, meas)
    verdict = "identical" if not wrong else "DIFFERS on " + "; ".join(
        f"{fast} < {slow} by {us:.1f} us" for fast, slow, us in wrong)
    strict = "identical" if by_sim == by_meas else "DIFFERS"
    return [(f"- batch {batch}: strict ranking {strict}: simulated {' < '.join(by_sim)}; "
             f"measured {' < '.join(by_meas)}"),
            (f"  - up to ties: {verdict} ({len(pairs) - len(ties)} of {len(pairs)} pairs resolved by the measurement; "
             f"ties: {'; '.join(ties) or 'none'})")]


@dataclass(frozen=True)
class Scores:
    """Held-out accuracy of one profile: errors as fractions, intervals as half-widths."""

    errors: list[float]  # signed (simulated - measured) / measured
    inside: list[bool]
    half_widths: list[float]  # half the interval / measured
    unmeasured: int  # overlaps extrapolated, over all held-out predictions
    overlaps: int
    sign_errors: list[str]  # "layout bN": predicted faster than serial, measured slower beyond the noise, or the reverse

    def line(self, label: str) -> str:
        n = len(self.errors)
        return (f"| {label} | {100 * sum(map(abs, self.errors)) / n:.2f}% | {100 * max(map(abs, self.errors)):.2f}% | "
                f"{sum(self.inside)} of {n} ({100 * sum(self.inside) / n:.0f}%) | "
                f"{100 * sum(self.half_widths) / n:.2f}% | {self.overlaps - self.unmeasured} of {self.overlaps} | "
                f"{len(self.sign_errors)}{': ' + ', '.join(self.sign_errors) if self.sign_errors else ''} |")


def sign_error(runs: dict[tuple[str, int], Measured], pred: dict[tuple[str, int], Prediction],
               name: str, batch: int) -> bool:
    """The simulation puts the layout on the other side of serial than a measurement beyond the
    noise does (TIE_RULE); a measured tie is never a sign error."""
    meas, base = runs[(name, batch)], runs[(CALIBRATION, batch)]
    predicted = pred[(name, batch)].per_layer_us - pred[(CALIBRATION, batch)].per_layer_us
    return not tie(meas, base) and predicted * (meas.us - base.us) <= 0


def score(runs: dict[tuple[str, int], Measured], pred: dict[tuple[str, int], Prediction]) -> Scores:
    held = [k for k in pred if k[0] != CALIBRATION]
    meas = {k: runs[k].us for k in held}
    return Scores([(pred[k].per_layer_us - meas[k]) / meas[k] for k in held],
                  [pred[k].low_us <= meas[k] <= pred[k].high_us for k in held],
                  [pred[k].half_width_us / meas[k] for k in held],
                  sum(len(pred[k].unmeasured) for k in held), sum(len(pred[k].overlaps) for k in held),
                  [f"{n} b{b}" for n, b in held if sign_error(runs, pred, n, b)])


SCORE_HEADER = [("| profile | mean abs error | worst | measured inside the interval | mean half-width | overlaps measured "
                 "| sign errors vs serial |"), "|---|---|---|---|---|---|---|"]


def report(matrix: Path, profile: DeviceProfile, origin: str, traces: Path | None = None) -> str:
    runs = measured_runs(matrix)
    batches = sorted({b for _, b in runs})
    layouts = layouts_in(runs)
    lines = [f"profile {profile.name} ({origin}) vs {matrix}", "",
             "| batch | layout | simulated us | interval us | measured us | noise us | error | inside | held out |",
             "|---|---|---|---|---|---|---|---|---|"]
    pred, rankings = {}, []
    for batch in batches:
        mine = predictions(profile, batch, layouts)
        pred.update({(n, batch): p for n, p in mine.items()})
        meas = {n: runs[(n, batch)] for n in layouts}
        for name, p in mine.items():
            m = meas[name].us
            lines.append(f"| {batch} | {name} | {p.per_layer_us:.1f} | {p.low_us:.1f} - {p.high_us:.1f} | {m:.1f} | "
                         f"{meas[name].noise_us:.1f} | {100 * (p.per_layer_us - m) / m:+.1f}% | "
                         f"{'yes' if p.low_us <= m <= p.high_us else 'NO'} | "
                         f"{'yes' if name != CALIBRATION else 'no (calibration)'} |")
        rankings += ranking_lines(batch, {n: p.per_layer_us for n, p in mine.items()}, meas)
    scores = score(runs, pred)
    n = len(scores.errors)
    lines += ["", (f"mean absolute percentage error over held-out layouts: "
              f"{100 * sum(map(abs, scores.errors)) / n:.2f}%; measured inside the predicted interval: "
              f"{sum(scores.inside)} of {n}; mean half-width {100 * sum(scores.half_widths) / n:.2f}%; "
              f"sign errors vs serial (beyond the noise): {len(scores.sign_errors)}"
              f"{' (' + ', '.join(scores.sign_errors) + ')' if scores.sign_errors else ''}"),
              "", "Interval parts of each held-out prediction (+- us per layer):", "",
              "| batch | layout | " + " | ".join(BANDS) + " | overlaps |", "|---|---|" + "---|" * (len(BANDS) + 1)]
    for (name, batch), p in sorted(pred.items(), key=lambda kv: (kv[0][1], layouts.index(kv[0][0]))):
        if name == CALIBRATION:
            continue
        parts = {b.name: b.us for b in p.bands}
        lines.append(f"| {batch} | {name} | " + " | ".join(f"{parts.get(b, 0.0):.1f}" for b in BANDS)
                     + f" | {p.overlaps_line()} |")
    lines += ["", f"Ranking per batch. Tie rule: {TIE_RULE}.", ""] + rankings
    if traces is not None:
        lines += [""] + node_lines(profile, traces, batches, layouts)
    lines += ["", "Profile parameters:", ""] + [f"- {k} = {v}: {src}" for k, v, src in profile.describe()]
    return "\n".join(lines) + "\n"


BANDS = ("calibration noise", "launch gap", "fence", "graph entry", "layer entry", "queue wait", "all-reduce factor",
         "unmeasured overlaps", "shape")


def pairs_of(profile: DeviceProfile, layout: str, batches: list[int]) -> set[frozenset[str]]:
    """The node pairs a layout overlaps in its simulated replay, at any of the batches."""
    return {frozenset((o.first, o.second)) for b in batches
            for o in predict(scenario(layout, b), profile).overlaps}


def before_after(matrix: Path, runs_paths: list[Path], pairwise: Path, full: DeviceProfile) -> str:
    """The held-out layouts predicted without any pair, without their own pairs, and with every
    pair (module docstring)."""
    runs = measured_runs(matrix)
    batches = sorted({b for _, b in runs})
    held = [n for n in layouts_in(runs) if n != CALIBRATION]
    bare = calibrate([matrix, *runs_paths], full.name)
    settings = {"calibrated without pairwise.json": {}, "pairwise, the layout's own pairs removed (before --for)": {},
                "pairwise complete (after --for)": {}}
    rows = []
    for name in held:
        own = pairs_of(full, name, batches)
        kept = tuple(p for p in full.pair_measures if frozenset((p.first, p.second)) not in own)
        without = with_pairs(full, kept, f"{pairwise} without {name}'s pairs")
        for label, prof in zip(settings, (bare, without, full)):
            for b in batches:
                settings[label][(name, b)] = predict(scenario(name, b), prof)
        rows.append(f"- {name}: {len(own)} node pairs removed ({len(full.pair_measures) - len(kept)} measurements): "
                    + ", ".join(sorted("|".join(sorted(p)) for p in own)))
    return "\n".join(
        ["Before / after `calibrate --for` (held-out layouts at every batch):", "", *SCORE_HEADER]
        + [score(runs, pred).line(label) for label, pred in settings.items()]
        + ["", "Pairs removed per layout (those its simulated replay overlaps, both orders, every batch):", ""]
        + rows) + "\n"


def before_for(matrix: Path, profiles: dict[str, DeviceProfile]) -> str:
    """The held-out scores of profiles measured by `calibrate --measure`, before and after `--for`."""
    runs = measured_runs(matrix)
    batches, layouts = sorted({b for _, b in runs}), layouts_in(runs)
    lines = ["Before / after `calibrate --measure --for` (held-out layouts at every batch):", "", *SCORE_HEADER]
    for label, prof in profiles.items():
        pred = {(n, b): p for b in batches for n, p in predictions(prof, b, layouts).items()}
        lines.append(score(runs, pred).line(label))
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
    ap.add_argument("--before", help="with --profile: the profile before `calibrate --measure --for` added "
                    "the held-out layouts' pairs, scored beside it")
    ap.add_argument("--name", default="h100", help="name of the calibrated profile")
    ap.add_argument("--profile-out", type=Path, help="write the calibrated profile here")
    ap.add_argument("--traces", type=Path, help="the matrix's run traces (LAYOUT-bBATCH.trace.json.gz), "
                    "to compare each node's time inside the layer")
    ap.add_argument("--out", type=Path, help="write the report here (else print it)")
    ap.add_argument("--date", help="provenance: when the calibration runs were measured")
    ap.add_argument("--driver", default="", help="provenance: the GPU driver they ran on")
    ap.add_argument("--kernel-hash", help="provenance: the kernels they measured (default: the installed "
                    "ones); for a past run: streamlab.sim.provenance.kernel_hash of `git archive COMMIT "
                    "streamlab/kernels`")
    args = ap.parse_args()
    if args.profile:
        profile, origin = load_profile(args.profile), f"loaded from {args.profile}"
    else:
        inputs = [args.matrix, *args.calibration]
        profile = calibrate(inputs, args.name, pairwise=args.pairwise, pairwise_state=args.pairwise_state,
                            command="python " + " ".join(sys.argv), date=args.date, driver=args.driver,
                            kernel_hash=args.kernel_hash)
        origin = (f"calibrated from {', '.join(map(str, inputs))}"
                  + (f" and {args.pairwise}" if args.pairwise else ""))
        if args.profile_out:
            write_atomic(args.profile_out, dump_profile(profile))
    text = report(args.matrix, profile, origin, args.traces)
    if args.pairwise and not args.profile:
        text += "\n" + before_after(args.matrix, args.calibration, args.pairwise, profile)
    if args.before:
        text += "\n" + before_for(args.matrix, {f"before --for ({args.before})": load_profile(args.before),
                                               f"after --for ({args.profile})": profile})
    if args.out:
        write_atomic(args.out, text)
    print(text, end="")


if __name__ == "__main__":
    main()
