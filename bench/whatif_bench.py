"""What-if on our own runs: replay one run's trace with some nodes set to their times in another
measured run, and compare the prediction with that run's measurement.

    python bench/whatif_bench.py TRACES MATRIX --out DIR
    python bench/whatif_bench.py traces/h100-2026-11-22 bench/results/h100-2026-11-22/matrix.json \\
        --before-traces traces/h100-2026-11-21 --before-matrix bench/results/h100-2026-11-21/matrix.json \\
        --out bench/results/whatif-h100-2026-11-22
    python bench/whatif_bench.py RUNS_DIR RUNS_DIR --out DIR   # a folder of run JSONs (multi-GPU runs)

MATRIX: bench/matrix.py's JSON (a list of runs, trace TRACES/<scenario>-b<batch>.trace.json.gz)
or a folder of `streamlab run` result JSONs (trace: the result's stem + .trace.json.gz in
TRACES). A run is (scenario, batch, all-reduce implementation).

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
from dataclasses import asdict, dataclass
from itertools import pairwise
from pathlib import Path

from streamlab.analysis import summarize
from streamlab.errors import Failure
from streamlab.io import write_atomic, write_json_atomic
from streamlab.results import RunResult, load_any, load_runs
from streamlab.trace.deps import DepGraph, for_trace
from streamlab.trace.formats import load_trace
from streamlab.trace.whatif import Change, parse_change, what_if

CHANGED_US, CHANGED_SHARE = 0.5, 0.05


@dataclass(frozen=True)
class Run:
    name: str  # <scenario>-b<batch>[-<allreduce>]
    scenario: str
    batch: int
    allreduce: str
    trace: Path
    timed_us: float  # per-layer median
    noise: float  # Latency.noise (fraction)


@dataclass(frozen=True)
class Row:
    kind: str  # batch | allreduce | before->after | stall
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


def runs_of(traces: Path, matrix: Path) -> list[Run]:
    if matrix.is_dir():
        entries = []
        for p in sorted(matrix.glob("*.json")):
            try:
                got = load_any(p)
            except Failure:
                continue  # not a result file (an all-reduce sweep's is one, and skipped below)
            if isinstance(got, RunResult) and got.measured:
                entries.append((p.stem, got))
    else:
        entries = [(f"{r.scenario}-b{r.batch}", r) for r in load_runs(matrix) if r.measured]
    out = []
    for stem, r in entries:
        trace = traces / f"{stem}.trace.json.gz"
        if not trace.is_file():
            continue
        impl = (r.ranks.allreduce.get("impl") if r.ranks else None) or r.backends.get("allreduce_attn", "")
        out.append(Run(stem, r.scenario, r.batch, impl, trace, r.latency.median, r.latency.noise))
    return out


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
    return Row(kind=kind, source=src.name, target=tgt.name if tgt else None, what_if=label,
               dependencies=graph.origin, predicted_us=result.layer_wall_us.after,
               source_trace_us=src_wall, target_trace_us=tgt_wall,
               predicted_timed_us=src.timed_us + result.layer_wall_us.after - src_wall,
               target_timed_us=tgt.timed_us if tgt else None,
               noise_us=max(src.noise, tgt.noise) * tgt.timed_us if tgt else None)


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


def markdown(rows: list[Row], command: str) -> str:
    lines = [f"# What-if on measured runs\n\n`{command}`\n",
             ("Per-layer latency (us). predicted: the source trace replayed with the what-if "
              "(median layer wall); target trace: the target run's trace, same statistic; "
              "predicted timed: source timed latency + (predicted - source trace); noise: the "
              "larger `Latency.noise` of the two runs x the target latency. Predictions, not "
              "measurements.\n"),
             ("| kind | source | target | what-if | deps | predicted | target trace | error | "
              "predicted timed | target timed | error | noise | timed within noise |"),
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        within = "-" if r.timed_error is None else ("yes" if abs(r.timed_error) <= r.noise_us else "no")
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
            lines.append(f"| {kind} | {len(mine)} | {100 * err[len(err) // 2]:.2f}% | "
                         f"{100 * err[-1]:.2f}% | {sum(abs(r.trace_error) <= r.noise_us for r in mine)} | "
                         f"{sum(abs(r.timed_error) <= r.noise_us for r in mine)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("traces", type=Path, help="folder of the runs' traces")
    ap.add_argument("matrix", type=Path, help="bench/matrix.py JSON, or a folder of run JSONs")
    ap.add_argument("--before-traces", type=Path, help="traces of earlier runs (older kernels)")
    ap.add_argument("--before-matrix", type=Path, help="their matrix JSON or run folder")
    ap.add_argument("--out", type=Path, required=True, help="folder for whatif.json and whatif.md")
    args = ap.parse_args()
    runs = runs_of(args.traces, args.matrix)
    if not runs:
        raise SystemExit(f"no run of {args.matrix} has its trace in {args.traces}")
    before = runs_of(args.before_traces, args.before_matrix) if args.before_matrix else []
    rows = rows_for(runs, before, Traces())
    command = "python bench/whatif_bench.py " + " ".join(
        str(a) for a in (args.traces, args.matrix) + (
            ("--before-traces", args.before_traces, "--before-matrix", args.before_matrix)
            if args.before_matrix else ()) + ("--out", args.out))
    write_json_atomic(args.out / "whatif.json", {"command": command,
                                                 "rows": [r.to_json() for r in rows]})
    text = markdown(rows, command)
    write_atomic(args.out / "whatif.md", text)
    print(text)


if __name__ == "__main__":
    main()
