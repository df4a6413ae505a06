"""The pairwise micro-benchmark's data (written by bench/pairwise.py on a GPU) and what the
simulator profile takes from it.

Every measurement is one CUDA graph of `units` identical units, timed per replay with device
events. A unit is `fork; MAIN nodes on main; ALT nodes on alt; join`, so each unit starts when the
previous one has finished on both streams; `noop` is an empty one-thread kernel that keeps the
fork/join real (a branch with no kernel would vanish from the graph). From these:

- fence: a ladder of fork/join units of two empty kernels against a chain of one empty kernel
  per unit on one stream; the slope difference (per unit) is what a cross-stream edge costs over
  a same-stream one, the intercept difference what a graph with branches costs per replay;
- pairs (A dispatched first on main, B on alt) against A beside an empty kernel and B beside an
  empty kernel, in the same harness: the overlap excess e = (T_AB - max(d_A, d_B)) / min(d_A, d_B),
  d and T net of the harness (T - T_empty + d_empty), is 0 when the pair overlaps for free and 1
  when it serializes. The profile keeps e per ordered pair and batch (the engine runs the two at
  1 / (1 + e) while both run) and, for combinations never measured, per-node SM demands fitted
  to the same pairs;
- the all-reduce: a pair of it and a shorter GEMM gives the factor it runs slower by.

Records carry the process state they were timed in: `clean`, or `cupti` (after a profiler
session, which Kineto leaves attached). The executor benchmark profiles every run, so this was a
suspect for its first run being faster; on H100 the attached state moved the serial layer by under
1% but made short graphs noisy, so calibration uses `clean`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from streamlab.analysis import percentiles
from streamlab.errors import EXIT_BAD_INPUT, Failure
from streamlab.layer import Variant, build_layer
from streamlab.models import MODELS, RankDims, Shape
from streamlab.sim.engine import Kernel, pair_excess
from streamlab.sim.profile import BatchTable, DeviceProfile, Param

NOOP = "noop"
SM_GRID = [i / 50 for i in range(51)]  # candidate demands 0 .. 1 (above 1 a node would be slow alone)
PRIOR, PRIOR_WEIGHT = 0.5, 1e-4  # a faint pull that picks one demand where pairs allow many
SWEEPS = 12


@dataclass(frozen=True)
class Record:
    state: str  # clean | cupti
    batch: int  # 0 for the empty-kernel harness (fence), which has no layer shape
    kind: str  # chain | ladder | pair
    units: int
    main: tuple[str, ...]
    alt: tuple[str, ...]
    replay_us: float  # median over replays of one graph replay

    @property
    def per_unit_us(self) -> float:
        return self.replay_us / self.units


@dataclass
class Pairwise:
    device: str
    model: str
    shape: dict  # without batch
    variant: dict  # the variant the nodes ran in (shared expert unfused: both MoE halves exist)
    records: list[Record]
    noop_us: float  # the empty kernel's own time (profiler)
    layers: dict[str, dict[int, float]] = field(default_factory=dict)  # state -> batch -> serial us

    def states(self) -> list[str]:
        return sorted({r.state for r in self.records})

    def find(self, state: str, batch: int, main: tuple[str, ...], alt: tuple[str, ...]) -> Record | None:
        return next((r for r in self.records if (r.state, r.batch, r.kind, r.main, r.alt)
                     == (state, batch, "pair", main, alt)), None)


def load_pairwise(path: Path) -> Pairwise:
    try:
        doc = json.loads(Path(path).read_text())
        records = [Record(r["state"], int(r["batch"]), r["kind"], int(r["units"]), tuple(r["main"]),
                          tuple(r["alt"]), float(r["replay_us"])) for r in doc["records"]]
        layers = {s: {int(b): float(t) for b, t in per.items()}
                  for s, per in doc.get("serial_layer_us", {}).items()}
        return Pairwise(doc["device"], doc["model"], doc["shape"], doc["variant"], records,
                        float(doc.get("noop_us", 1.0)), layers)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise Failure(f"{path}: not a pairwise benchmark result: {e}", EXIT_BAD_INPUT) from None


@dataclass(frozen=True)
class PairMeasure:
    """One pair at one batch: the nodes' harness-free latencies and the measured makespan."""

    batch: int
    main: str  # dispatched first
    alt: str
    main_us: float
    alt_us: float
    together_us: float

    @property
    def excess(self) -> float:
        """0: the pair overlaps for free; 1: it takes as long as one after the other."""
        return (self.together_us - max(self.main_us, self.alt_us)) / min(self.main_us, self.alt_us)


@dataclass
class PairwiseFit:
    state: str
    source: str
    fence_extra_us: float
    graph_entry_us: float
    pair_excess: dict[str, BatchTable]  # "first|second" -> batch -> excess (>= 0)
    sm_demand: dict[str, BatchTable]
    default_sm_demand: float
    ar_factor: float
    ar_source: str
    pairs: list[PairMeasure]
    residuals: dict[tuple[int, str, str], float]  # demand model's predicted - measured excess

    @property
    def pair_note(self) -> str:
        return (f"{self.source}: (makespan of A dispatched first beside B - the longer alone) / "
                f"the shorter alone, each beside an empty kernel in the same fork/join harness; "
                f"{len(self.pairs)} measurements, below 0 read as 0")

    @property
    def sm_note(self) -> str:
        worst = max((abs(v) for v in self.residuals.values()), default=0.0)
        return (f"{self.source}: fitted to the same pairs, proportional sharing, for combinations "
                f"never measured; largest residual {worst:.2f} of the shorter node's latency (one "
                "demand per node cannot express e > 1 or which of the two was dispatched first)")


def choose_state(pw: Pairwise, state: str | None) -> str:
    """The named state, else `clean`. A profiler session left attached moved the serial layer by
    under 1% on H100 (bench/results/h100-2026-11-21/pairwise.json) but made short graphs noisy."""
    states = pw.states()
    want = state or ("clean" if "clean" in states else states[0])
    if want not in states:
        raise Failure(f"pairwise data has no state {want!r}; it has {', '.join(states)}", EXIT_BAD_INPUT)
    return want


def fence_and_entry(pw: Pairwise, state: str) -> tuple[float, float]:
    """(extra us of a cross-stream edge over a same-stream one, us per replay of a graph with
    branches): least-squares lines of replay time over unit count, ladder minus chain."""
    def line(kind: str) -> tuple[float, float]:
        pts = [(r.units, r.replay_us) for r in pw.records if (r.state, r.kind) == (state, kind)]
        if len({u for u, _ in pts}) < 2:
            raise Failure(f"pairwise data ({state}): the {kind} needs two unit counts", EXIT_BAD_INPUT)
        mu, mt = sum(u for u, _ in pts) / len(pts), sum(t for _, t in pts) / len(pts)
        slope = sum((u - mu) * (t - mt) for u, t in pts) / sum((u - mu) ** 2 for u, _ in pts)
        return slope, mt - slope * mu
    (cs, ci), (ls, li) = line("chain"), line("ladder")
    return max(0.0, ls - cs), max(0.0, li - ci)


def pair_measures(pw: Pairwise, state: str) -> list[PairMeasure]:
    """Every measured pair with both nodes' alone runs: harness overhead removed by subtracting
    the empty harness (and adding back the empty kernel it ran)."""
    out = []
    for r in pw.records:
        if r.state != state or r.kind != "pair" or NOOP in r.main + r.alt or len(r.main + r.alt) != 2:
            continue
        (a,), (b,) = r.main, r.alt
        empty = pw.find(state, r.batch, (NOOP,), (NOOP,))
        alone_a, alone_b = pw.find(state, r.batch, (a,), (NOOP,)), pw.find(state, r.batch, (NOOP,), (b,))
        if empty is None or alone_a is None or alone_b is None:
            continue
        base = empty.per_unit_us - pw.noop_us  # the harness around one unit's kernels
        out.append(PairMeasure(r.batch, a, b, *(max(x.per_unit_us - base, 1e-3) for x in (alone_a, alone_b, r))))
    return out


def _kernels(pw: Pairwise, prof: DeviceProfile, pairs: list[PairMeasure]) -> dict[tuple[int, str], Kernel]:
    """Each paired node as the engine sees it at that batch: the pairwise run's own latency (so
    the excess is judged against what ran), HBM demand from its bytes."""
    out = {}
    variant = Variant(**pw.variant)
    for batch in sorted({p.batch for p in pairs}):
        layer = build_layer(RankDims(MODELS[pw.model], Shape(**{**pw.shape, "batch": batch})), variant)
        for p in (q for q in pairs if q.batch == batch):
            for name, us in ((p.main, p.main_us), (p.alt, p.alt_us)):
                node = layer.node(name)
                out[(batch, name)] = Kernel(us, prof.bandwidth_demand(node, us), 0.0)
    return out


def fit_sm_demand(pairs: list[PairMeasure], kernels: dict[tuple[int, str], Kernel],
                  prof: DeviceProfile) -> dict[str, BatchTable]:
    """Per batch, SM demands minimising the squared error of the engine's pair excess (demand
    model) against the measured one. Only a pair's sum above 1 is seen; a faint prior picks one
    split."""
    out: dict[str, BatchTable] = {}
    for batch in sorted({p.batch for p in pairs}):
        for node, v in _fit_batch([p for p in pairs if p.batch == batch], kernels, prof).items():
            out.setdefault(node, {})[batch] = v
    return out


def _fit_batch(ps: list[PairMeasure], kernels: dict[tuple[int, str], Kernel], prof: DeviceProfile) -> dict[str, float]:
    """Coordinate descent over a grid: deterministic, and a handful of nodes per batch."""
    s = {n: PRIOR for p in ps for n in (p.main, p.alt)}
    for _ in range(SWEEPS):
        for node in sorted(s):
            mine = [p for p in ps if node in (p.main, p.alt)]
            best = None
            for v in SM_GRID:
                s[node] = v
                loss = PRIOR_WEIGHT * (v - PRIOR) ** 2 + sum(_error(p, kernels, prof, s) ** 2 for p in mine)
                if best is None or loss < best[0]:
                    best = (loss, v)
            s[node] = best[1]
    return s


def _error(p: PairMeasure, kernels: dict[tuple[int, str], Kernel], prof: DeviceProfile,
           sm: dict[str, float]) -> float:
    a, b = kernels[(p.batch, p.main)], kernels[(p.batch, p.alt)]
    return pair_excess(prof, replace(a, sm=sm[p.main]), replace(b, sm=sm[p.alt])) - p.excess


def pair_table(pairs: list[PairMeasure]) -> dict[str, BatchTable]:
    """"first|second" -> batch -> measured excess; below 0 (noise, or a pair that ran faster than
    its longer node alone) reads as 0: concurrency is never modelled as a speed-up."""
    out: dict[str, BatchTable] = {}
    for p in pairs:
        out.setdefault(f"{p.main}|{p.alt}", {})[p.batch] = max(0.0, p.excess)
    return out


def ar_factor(pairs: list[PairMeasure], collectives: set[str], device: str) -> tuple[float, str]:
    """The engine slows an all-reduce by f while another lane runs and leaves the other kernel
    alone, so a pair where the all-reduce outlasts the other kernel X ends at
    d_X + d_AR - d_X / f: f = d_X / (d_X + d_AR - makespan), median over batches."""
    fs = []
    for p in pairs:
        if p.main in collectives or p.alt in collectives:
            ar, x = (p.main_us, p.alt_us) if p.main in collectives else (p.alt_us, p.main_us)
            if ar > x and p.together_us > ar:
                fs.append(x / max(x + ar - p.together_us, 1e-3))
            elif ar > x:
                fs.append(1.0)
    if not fs:
        return 1.0, "not calibrated: no all-reduce pair in the pairwise data"
    f = max(1.0, percentiles(fs)[1])
    return f, (f"measured: bench/pairwise.py on {device}: emulated all-reduce (spin kernel) beside "
               f"a GEMM on the other stream, {len(fs)} batches (one GPU: a real all-reduce needs several)")


def fit_pairwise(pw: Pairwise, prof: DeviceProfile, state: str | None = None) -> PairwiseFit:
    """`prof`: the profile calibrated so far (node bytes over HBM bandwidth for the demand model)."""
    st = choose_state(pw, state)
    source = f"measured: bench/pairwise.py on {pw.device} ({st} process state)"
    fence_extra, entry = fence_and_entry(pw, st)
    layer = build_layer(RankDims(MODELS[pw.model], Shape(**pw.shape)), Variant(**pw.variant))
    collectives = {n.name for n in layer.nodes if n.is_collective}
    measured = pair_measures(pw, st)
    pairs = [p for p in measured if p.main not in collectives and p.alt not in collectives]
    kernels = _kernels(pw, prof, pairs)
    demand = replace(prof, concurrency_slowdown=Param(0.0, "superseded by SM demands"), pair_excess={})
    sm = fit_sm_demand(pairs, kernels, demand)
    residuals = {(p.batch, p.main, p.alt): _error(p, kernels, demand, {n: t[p.batch] for n, t in sm.items()
                                                                       if p.batch in t})
                 for p in pairs}
    values = [v for t in sm.values() for v in t.values()]
    f, ar_src = ar_factor(measured, collectives, pw.device)
    return PairwiseFit(st, source, fence_extra, entry, pair_table(pairs), sm,
                       percentiles(values)[1] if values else 0.0, f, ar_src, pairs, residuals)
