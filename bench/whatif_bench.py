"""What-if on our own runs: replay one run's trace with some nodes set to their times in another
measured run, and compare the prediction with that run's measurement.

    python bench/whatif_bench.py TRACES MATRIX --out DIR
    python bench/whatif_bench.py traces/h100-2026-11-22 bench/results/h100-2026-11-22/matrix.json \\
        --before-traces traces/h100-2026-11-21 --before-matrix bench/results/h100-2026-11-21/matrix.json \\
        --out bench/results/whatif-h100-2026-11-22
    python bench/whatif_bench.py RUNS_DIR RUNS_DIR --out DIR   # a folder of run JSONs (multi-GPU runs)

    python bench/whatif_bench.py --measure --out $OUT/whatif          # fresh runs on the GPU, then the what-ifs
    python bench/whatif_bench.py --measure --device cpu --out /tmp/w  # smoke test: simulated runs

MATRIX: bench/matrix.py's JSON (a list of runs, trace TRACES/<scenario>-b<batch>.trace.json.gz),
a compare report (`streamlab compare`'s report.json) or a folder of `streamlab run` result JSONs;
each run's trace is the one its result names (`RunResult.trace`, found as written or by name in
TRACES), else TRACES/<stem>.trace.json.gz. A run is (scenario, batch, all-reduce implementation).

--measure: `streamlab compare` of --scenarios at --batches (each run in its own process: result
and trace under OUT/runs, the compare report under OUT/compare), then the what-ifs on those
runs. Traces of runs carry their captured graph's edges (exec.measure), so the replay walks the
graph the GPU ran. With --device cpu the runs are simulated on --profile: the rows say so, a
smoke test of the whole path, not a measurement.

What-ifs with a measured counterpart (the target run), each node set to the target's in-graph
time (median over the target trace's occurrences):
- batch: the same layout at the neighbouring batch size, every node set (the graph is the same,
  the node times are the other batch's);
- allreduce: the same layout and batch with another all-reduce implementation, the collective
  nodes set;
- before -> after (with --before-*): an earlier run of the same layout and batch (older kernels),
  the nodes whose time changed by more than max(0.5 us, 5%) set.
And without one: `stall=0` on every trace (the layer without its >= 2 us all-stream-idle gaps).

Columns: predicted = the replay's per-layer wall (median over layers) in the source trace's
scale; target trace = the target run's trace, the same statistic (what the replay is
responsible for); predicted timed = the source run's timed per-layer latency + (predicted -
source trace), against the target run's timed latency. The profiler's per-layer wall sits a
run-dependent offset from the timed latency (the trace is a few replays at one moment of the
timed window's drift), which the timed comparison carries from both runs. Noise: the larger
`streamlab.results.Latency.noise` of the two runs, times the target's latency.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import asdict, dataclass
from itertools import pairwise
from pathlib import Path

from streamlab.analysis import summarize
from streamlab.errors import Failure
from streamlab.io import write_atomic, write_json_atomic
from streamlab.results import CompareResult, RunResult, load_any, load_runs
from streamlab.trace.deps import DepGraph, for_trace
from streamlab.trace.formats import load_trace
from streamlab.trace.whatif import Change, parse_change, what_if

CHANGED_US, CHANGED_SHARE = 0.5, 0.05
ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Run:
    name: str  # <scenario>-b<batch>[-<allreduce>]
    scenario: str
    batch: int
    allreduce: str
    trace: Path
    timed_us: float  # per-layer median
    noise: float  # Latency.noise (fraction)
    measured: bool  # False: simulated (a smoke test on a machine without a GPU)
    where: str  # RunResult.source: "measured on DEVICE" or "simulated, profile NAME"


@dataclass(frozen=True)
class Row:
    kind: str  # batch | allreduce | before->after | stall
    runs: str  # measured | simulated
    source: str
    target: str | None
    what_if: str  # the changes, short
    dependencies: str  # origin of the graph edges
    predicted_us: float
    source_trace_us: float
    target_trace_us: float | None
    predicted_timed_us: float
    target_timed_us: float | None
    noise_us: float | None

    @property
    def trace_error(self) -> float | None:
        return None if self.target_trace_us is None else self.predicted_us - self.target_trace_us

    @property
    def timed_error(self) -> float | None:
        return None if self.target_timed_us is None else self.predicted_timed_us - self.target_timed_us

    def to_json(self) -> dict:
        return {**asdict(self), "trace_error_us": self.trace_error, "timed_error_us": self.timed_error}


def runs_of(traces: Path, matrix: Path, *, simulated: bool = False) -> list[Run]:
    """The runs of `matrix` whose trace is at hand; measured ones only unless `simulated`."""
    if matrix.is_dir():
        entries = []
        for p in sorted(matrix.glob("*.json")):
            try:
                got = load_any(p)
            except Failure:
                continue  # not a result file (an all-reduce sweep's is one, and skipped below)
            if isinstance(got, RunResult):
                entries.append((p.stem, got))
    else:
        got = load_any(matrix)
        runs = got.runs if isinstance(got, CompareResult) else load_runs(matrix)
        entries = [(f"{r.scenario}-b{r.batch}", r) for r in runs]
    out = []
    for stem, r in entries:
        if not (r.measured or simulated):
            continue
        trace = _trace_of(r, traces, stem)
        if trace is None:
            continue
        impl = (r.ranks.allreduce.get("impl") if r.ranks else None) or r.backends.get("allreduce_attn", "")
        out.append(Run(stem, r.scenario, r.batch, impl, trace, r.latency.median,
                       r.latency.noise, r.measured, r.source))
    return out


def _trace_of(r: RunResult, traces: Path, stem: str) -> Path | None:
    """The run's trace: the one its result names (as written, or by name in `traces`), else
    `traces`/<stem>.trace.json.gz (results written before runs named their trace)."""
    named = Path(r.trace) if r.trace else None
    for path in ((named, traces / named.name) if named else ()) + (traces / f"{stem}.trace.json.gz",):
        if path.is_file():
            return path
    return None


class Traces:
    """Each run's trace loaded once, with its dependency graph and node medians."""

    def __init__(self) -> None:
        self.cache: dict[Path, tuple[DepGraph, dict[str, float], float]] = {}

    def get(self, run: Run) -> tuple[DepGraph, dict[str, float], float]:
        if run.trace not in self.cache:
            loaded = load_trace(run.trace)
            s = summarize(loaded.timeline)
            self.cache[run.trace] = (for_trace(loaded.timeline, loaded.info),
                                     {n: v.median for n, v in s.nodes.items()}, s.wall.median)
        return self.cache[run.trace]


def predict(kind: str, src: Run, tgt: Run | None, changes: list[Change], traces: Traces,
            label: str) -> Row:
    graph, _, src_wall = traces.get(src)
    result = what_if(graph, changes)
    tgt_wall = traces.get(tgt)[2] if tgt else None
    return Row(kind=kind, runs="measured" if src.measured else "simulated", source=src.name,
               target=tgt.name if tgt else None, what_if=label,
               dependencies=graph.origin, predicted_us=result.layer_wall_us.after,
               source_trace_us=src_wall, target_trace_us=tgt_wall,
               predicted_timed_us=src.timed_us + result.layer_wall_us.after - src_wall,
               target_timed_us=tgt.timed_us if tgt else None,
               noise_us=max(src.noise, tgt.noise) * tgt.timed_us if tgt and src.measured and tgt.measured
               else None)  # a simulation has no noise to judge by


def set_nodes(nodes: dict[str, float], keep) -> list[Change]:
    return [Change(f"{n}={us:.3f}us", n, "node", us) for n, us in nodes.items() if keep(n)]


def rows_for(runs: list[Run], before: list[Run], traces: Traces) -> list[Row]:
    rows = []
    by = {(r.scenario, r.allreduce): sorted((x for x in runs if (x.scenario, x.allreduce) ==
                                             (r.scenario, r.allreduce)), key=lambda x: x.batch)
          for r in runs}
    for group in by.values():
        for a, b in pairwise(group):
            for src, tgt in ((a, b), (b, a)):
                src_nodes, tgt_nodes = traces.get(src)[1], traces.get(tgt)[1]
                changes = set_nodes(tgt_nodes, src_nodes.__contains__)
                rows.append(predict("batch", src, tgt, changes, traces,
                                    f"every node ({len(changes)}) at its batch-{tgt.batch} time"))
    for src in runs:
        for tgt in runs:
            if (src.scenario, src.batch) == (tgt.scenario, tgt.batch) and src.allreduce != tgt.allreduce:
                tgt_nodes = traces.get(tgt)[1]
                changes = set_nodes(tgt_nodes, lambda n: n.startswith("allreduce"))
                rows.append(predict("allreduce", src, tgt, changes, traces,
                                    ", ".join(f"{c.key}={c.us:.2f}us" for c in changes)
                                    + f" (as with {tgt.allreduce})"))
    for old in before:
        new = next((r for r in runs if (r.scenario, r.batch, r.allreduce) ==
                    (old.scenario, old.batch, old.allreduce)), None)
        if new is None:
            continue
        old_nodes, new_nodes = traces.get(old)[1], traces.get(new)[1]
        changed = {n for n in new_nodes if n in old_nodes and abs(new_nodes[n] - old_nodes[n])
                   > max(CHANGED_US, CHANGED_SHARE * old_nodes[n])}
        changes = set_nodes(new_nodes, changed.__contains__)
        if changes:
            rows.append(predict("before->after", old, new, changes, traces, ", ".join(
                f"{c.key} {old_nodes[c.key]:.2f}->{c.us:.2f}us" for c in changes)))
    for src in runs:
        graph = traces.get(src)[0]
        rows.append(predict("stall", src, None, [parse_change("stall=0", graph.timeline)], traces,
                            "stall=0"))
    return rows


def _f(v: float | None, digits: int = 1, sign: bool = False) -> str:
    return "-" if v is None else (f"{v:+.{digits}f}" if sign else f"{v:.{digits}f}")


def markdown(rows: list[Row], command: str, where: list[str]) -> str:
    simulated = any(r.runs == "simulated" for r in rows)
    title = ("What-if on simulated runs (a smoke test of the path: predictions replayed on "
             "predictions, no measurement)" if simulated else "What-if on measured runs")
    lines = [f"# {title}\n\n`{command}`\n\nRuns: {'; '.join(where)}.\n",
             ("Per-layer latency (us). predicted: the source trace replayed with the what-if "
              "(median layer wall); target trace: the target run's trace, same statistic; "
              "predicted timed: source timed latency + (predicted - source trace); noise: the "
              "larger `Latency.noise` of the two runs x the target latency. Predictions, not "
              "measurements.\n"),
             ("| kind | source | target | what-if | deps | predicted | target trace | error | "
              "predicted timed | target timed | error | noise | timed within noise |"),
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        within = "-" if r.timed_error is None or r.noise_us is None else (
            "yes" if abs(r.timed_error) <= r.noise_us else "no")
        what = r.what_if if len(r.what_if) <= 70 else r.what_if[:69] + "…"
        lines.append(f"| {r.kind} | {r.source} | {r.target or '-'} | {what} | {r.dependencies} | "
                     f"{_f(r.predicted_us)} | {_f(r.target_trace_us)} | {_f(r.trace_error, sign=True)} | "
                     f"{_f(r.predicted_timed_us)} | {_f(r.target_timed_us)} | "
                     f"{_f(r.timed_error, sign=True)} | {_f(r.noise_us)} | {within} |")
    judged = [r for r in rows if r.target is not None]
    if judged:
        lines += ["", ("| kind | what-ifs | median abs error vs target trace | max | within noise "
                       "(trace) | within noise (timed) |"), "|---|---|---|---|---|---|"]
        for kind in dict.fromkeys(r.kind for r in judged):
            mine = [r for r in judged if r.kind == kind]
            err = sorted(abs(r.trace_error) / r.target_trace_us for r in mine)
            noisy = [r for r in mine if r.noise_us is not None]
            lines.append(f"| {kind} | {len(mine)} | {100 * err[len(err) // 2]:.2f}% | {100 * err[-1]:.2f}% | "
                         + (f"{sum(abs(r.trace_error) <= r.noise_us for r in noisy)} | "
                            f"{sum(abs(r.timed_error) <= r.noise_us for r in noisy)} |" if noisy else "- | - |"))
    return "\n".join(lines) + "\n"


def measure_runs(out: Path, *, scenarios: str, batches: str, device: str, profile: str) -> Path:
    """`streamlab compare` of the scenarios at the batches (on a GPU each run in a fresh process):
    results and traces under out/runs, the compare report in out/compare; its report.json."""
    paths = [str(ROOT / "scenarios" / f"{name}.yaml") for name in scenarios.split(",")]
    cmd = [sys.executable, "-m", "streamlab", "compare", *paths, "--batch", batches, "--device", device,
           "--profile", profile, "--keep-going", "--out", str(out / "runs"), "--report", str(out / "compare")]
    print("$ " + " ".join(cmd[1:]), flush=True)
    done = subprocess.run(cmd, cwd=ROOT, check=False)
    report = out / "compare" / "report.json"
    if not report.is_file():
        raise SystemExit(f"streamlab compare ended with exit {done.returncode} and wrote no {report}")
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("traces", type=Path, nargs="?", help="folder of the runs' traces")
    ap.add_argument("matrix", type=Path, nargs="?",
                    help="bench/matrix.py JSON, a compare report.json, or a folder of run JSONs")
    ap.add_argument("--before-traces", type=Path, help="traces of earlier runs (older kernels)")
    ap.add_argument("--before-matrix", type=Path, help="their matrix JSON or run folder")
    ap.add_argument("--measure", action="store_true", help="run the layouts first (streamlab compare)")
    ap.add_argument("--scenarios", default="serial,a_v4,a_v4_moe_dual", help="--measure: shipped scenarios")
    ap.add_argument("--batches", default="4,64", help="--measure: batch sizes (neighbours give the what-ifs)")
    ap.add_argument("--device", default="cuda", help="--measure: cuda, or cpu for a simulated smoke test")
    ap.add_argument("--profile", default="h200", help="--measure --device cpu: the simulator profile")
    ap.add_argument("--out", type=Path, required=True, help="folder for whatif.json and whatif.md")
    args = ap.parse_args()
    if args.measure:
        args.matrix = measure_runs(args.out, scenarios=args.scenarios, batches=args.batches,
                                   device=args.device, profile=args.profile)
        args.traces = args.out / "runs"
    elif args.traces is None or args.matrix is None:
        ap.error("give TRACES and MATRIX, or --measure")
    runs = runs_of(args.traces, args.matrix, simulated=args.measure and args.device == "cpu")
    if not runs:
        raise SystemExit(f"no run of {args.matrix} has its trace in {args.traces}")
    before = runs_of(args.before_traces, args.before_matrix) if args.before_matrix else []
    rows = rows_for(runs, before, Traces())
    command = "python bench/whatif_bench.py " + " ".join(
        str(a) for a in ((("--measure", "--scenarios", args.scenarios, "--batches", args.batches, "--device",
                           args.device) + (("--profile", args.profile) if args.device == "cpu" else ()))
                         if args.measure else (args.traces, args.matrix)) + (
            ("--before-traces", args.before_traces, "--before-matrix", args.before_matrix)
            if args.before_matrix else ()) + ("--out", args.out))
    where = sorted({r.where for r in runs + before})
    write_json_atomic(args.out / "whatif.json", {"command": command, "runs": where,
                                                 "rows": [r.to_json() for r in rows]})
    text = markdown(rows, command, where)
    write_atomic(args.out / "whatif.md", text)
    print(text)


if __name__ == "__main__":
    main()
