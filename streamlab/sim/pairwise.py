"""The pairwise micro-benchmark's data (written on a GPU by the pairs stages of `streamlab
calibrate --measure`, streamlab/calibration/pairbench.py; older files by bench/pairwise.py) and
what the simulator profile takes from it.

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
from streamlab.sim.profile import BatchTable, DeviceProfile, PairMeasure, Param

NOOP = "noop"
OLD_TOOL = "bench/pairwise.py"  # what wrote the files that do not say (before calibrate --measure)
SM_GRID = [i / 50 for i in range(51)]  # candidate demands 0 .. 1 (above 1 a node would be slow alone)
PRIOR, PRIOR_WEIGHT = 0.5, 1e-4  # a faint pull that picks one demand where pairs allow many
SWEEPS = 12
SPREAD_QUANTILE = 0.9  # the overlap model's spread: this quantile of its leave-one-out misses


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
    tool: str = OLD_TOOL  # what measured it, for the parameters' sources

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
                        float(doc.get("noop_us", 1.0)), layers, str(doc.get("tool", OLD_TOOL)))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise Failure(f"{path}: not a pairwise benchmark result: {e}", EXIT_BAD_INPUT) from None


@dataclass(frozen=True)
class Demand:
    """A paired node at one batch as the demand model sees it: its HBM share at the latency it
    ran at in the pairwise harness (the excess is judged against what ran)."""

    us: float
    hbm: float


def demand_excess(a: Demand, b: Demand, sm_a: float, sm_b: float) -> float:
    """The overlap excess of two kernels started together under the engine's demand model with
    no measured pair and no per-kernel slowdown: both run at 1 / max(1, HBM sum, SM sum) until
    the shorter ends, then the longer alone at full pace, so (makespan - longer) / shorter =
    max(1, HBM sum, SM sum) - 1 (tests/test_calibrate.py checks it against the engine)."""
    return max(1.0, a.hbm + b.hbm, sm_a + sm_b) - 1.0


@dataclass
class PairwiseFit:
    state: str
    source: str
    fence_extra_us: Param
    graph_entry_us: Param
    pairs: list[PairMeasure]
    ar_factor: Param
    overlap: OverlapFit


@dataclass(frozen=True)
class OverlapFit:
    """The demand model fitted to measured pairs: per-node SM demands, and how far it misses a
    pair it was not fitted to (leave-one-out over unordered node pairs, both orders left out)."""

    sm_demand: dict[str, BatchTable]
    default_sm_demand: float
    residuals: dict[tuple[int, str, str], float]  # (batch, first, second) -> predicted - measured excess
    spread: float  # SPREAD_QUANTILE of |residual|
    source: str

    def params(self) -> tuple[Param, Param]:
        """(default_sm_demand, overlap_model_spread) as profile parameters."""
        worst = max((abs(v) for v in self.residuals.values()), default=0.0)
        return (Param(self.default_sm_demand, f"{self.source}: median of the fitted demands"),
                Param(self.spread, f"{self.source}: {SPREAD_QUANTILE:.0%} of the demand model's excess misses "
                      f"(leave-one-out: each unordered node pair predicted from the others at its batch), "
                      f"{len(self.residuals)} measurements, largest {worst:.2f}"))

    @property
    def note(self) -> str:
        return (f"{self.source}: fitted to the measured pairs, proportional sharing, for combinations "
                "never measured (one demand per node cannot express e > 1 or which of the two was "
                "dispatched first)")


def choose_state(pw: Pairwise, state: str | None) -> str:
    """The named state, else `clean`. A profiler session left attached moved the serial layer by
    under 1% on H100 (bench/results/h100-2026-11-21/pairwise.json) but made short graphs noisy."""
    states = pw.states()
    want = state or ("clean" if "clean" in states else states[0])
    if want not in states:
        raise Failure(f"pairwise data has no state {want!r}; it has {', '.join(states)}", EXIT_BAD_INPUT)
    return want


def fence_and_entry(pw: Pairwise, state: str, source: str) -> tuple[Param, Param]:
    """(extra us of a cross-stream edge over a same-stream one, us per replay of a graph with
    branches): least-squares lines of replay time over unit count, ladder minus chain. Spread:
    how far the same difference lands between consecutive unit counts alone."""
    def points(kind: str) -> list[tuple[int, float]]:
        pts = sorted((r.units, r.replay_us) for r in pw.records if (r.state, r.kind) == (state, kind))
        if len({u for u, _ in pts}) < 2:
            raise Failure(f"pairwise data ({state}): the {kind} needs two unit counts", EXIT_BAD_INPUT)
        return pts

    def line(pts: list[tuple[int, float]]) -> tuple[float, float]:
        mu, mt = sum(u for u, _ in pts) / len(pts), sum(t for _, t in pts) / len(pts)
        slope = sum((u - mu) * (t - mt) for u, t in pts) / sum((u - mu) ** 2 for u, _ in pts)
        return slope, mt - slope * mu
    chain, ladder = points("chain"), points("ladder")
    (cs, ci), (ls, li) = line(chain), line(ladder)
    fence, entry = max(0.0, ls - cs), max(0.0, li - ci)
    local = [(line(ladder[i:i + 2]), line(chain[i:i + 2])) for i in range(min(len(chain), len(ladder)) - 1)
             if chain[i][0] == ladder[i][0] and chain[i + 1][0] == ladder[i + 1][0]]
    fence_spread = max((abs(max(0.0, lad[0] - ch[0]) - fence) for lad, ch in local), default=0.0)
    entry_spread = max((abs(max(0.0, lad[1] - ch[1]) - entry) for lad, ch in local), default=0.0)
    return (Param(fence, f"{source}, fork/join ladder vs single-stream chain of empty kernels, per unit",
                  spread=fence_spread),
            Param(entry, f"{source}: intercept of the fork/join ladder minus the chain's, per replay",
                  spread=entry_spread))


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


def demands(pairs: list[PairMeasure], prof: DeviceProfile, variant: Variant) -> dict[tuple[int, str], Demand]:
    """Each paired node at each batch: the pairwise run's own latency, HBM share from its bytes
    at the profile's calibration shape."""
    shape = prof.provenance.shape
    out = {}
    for batch in sorted({p.batch for p in pairs}):
        layer = build_layer(RankDims(MODELS[shape.model], Shape(batch, shape.context, shape.tp, shape.page_size,
                                                                 shape.kv_cache)), variant)
        for p in (q for q in pairs if q.batch == batch):
            for name, us in ((p.first, p.first_us), (p.second, p.second_us)):
                out[(batch, name)] = Demand(us, prof.bandwidth_demand(layer.node(name), us))
    return out


def fit_overlap(pairs: list[PairMeasure], prof: DeviceProfile, variant: Variant, source: str) -> OverlapFit:
    """SM demands per batch minimising the squared error of the demand model's excess against the
    measured one (below 0 read as 0); then each unordered node pair predicted from the others."""
    kernels = demands(pairs, prof, variant)
    sm: dict[str, BatchTable] = {}
    residuals = {}
    for batch in sorted({p.batch for p in pairs}):
        mine = [p for p in pairs if p.batch == batch]
        full = _fit_batch(mine, kernels)
        for node, v in full.items():
            sm.setdefault(node, {})[batch] = v
        for nodes in {frozenset((p.first, p.second)) for p in mine}:
            rest = [p for p in mine if {p.first, p.second} != nodes]
            held = _fit_batch(rest, kernels)
            for p in mine:
                if {p.first, p.second} == nodes:
                    residuals[(batch, p.first, p.second)] = _error(p, kernels, {**{n: PRIOR for n in nodes}, **held})
    values = [v for t in sm.values() for v in t.values()]
    misses = sorted(abs(v) for v in residuals.values())
    spread = misses[min(len(misses) - 1, int(SPREAD_QUANTILE * len(misses)))] if misses else 1.0
    return OverlapFit(sm, percentiles(values)[1] if values else 0.0, residuals, spread, source)


def _fit_batch(ps: list[PairMeasure], kernels: dict[tuple[int, str], Demand]) -> dict[str, float]:
    """Coordinate descent over a grid from the prior, until a sweep changes nothing (at most
    SWEEPS): deterministic, and a handful of nodes per batch."""
    s = {n: PRIOR for p in ps for n in (p.first, p.second)}
    for _ in range(SWEEPS):
        moved = False
        for node in sorted(s):
            was = s[node]
            mine = [p for p in ps if node in (p.first, p.second)]
            best = None
            for v in SM_GRID:
                s[node] = v
                loss = PRIOR_WEIGHT * (v - PRIOR) ** 2 + sum(_error(p, kernels, s) ** 2 for p in mine)
                if best is None or loss < best[0]:
                    best = (loss, v)
            s[node] = best[1]
            moved |= best[1] != was
        if not moved:
            break
    return s


def _error(p: PairMeasure, kernels: dict[tuple[int, str], Demand], sm: dict[str, float]) -> float:
    a, b = kernels[(p.batch, p.first)], kernels[(p.batch, p.second)]
    return demand_excess(a, b, sm[p.first], sm[p.second]) - max(0.0, p.excess)


def ar_factor(pairs: list[PairMeasure], collectives: set[str], origin: str) -> Param:
    """The engine slows an all-reduce by f while another lane runs and leaves the other kernel
    alone, so a pair where the all-reduce outlasts the other kernel X ends at
    d_X + d_AR - d_X / f: f = d_X / (d_X + d_AR - makespan), median over batches; spread: the
    farthest batch."""
    fs = []
    for p in pairs:
        if p.first in collectives or p.second in collectives:
            ar, x = (p.first_us, p.second_us) if p.first in collectives else (p.second_us, p.first_us)
            if ar > x and p.together_us > ar:
                fs.append(x / max(x + ar - p.together_us, 1e-3))
            elif ar > x:
                fs.append(1.0)
    if not fs:
        return Param(1.0, "not calibrated: no all-reduce pair in the pairwise data")
    f = max(1.0, percentiles(fs)[1])
    return Param(f, f"measured: {origin}: emulated all-reduce (spin kernel) beside "
                 f"a GEMM on the other stream, {len(fs)} batches (one GPU: a real all-reduce needs several)",
                 spread=max(abs(max(1.0, x) - f) for x in fs))


def fit_pairwise(pw: Pairwise, prof: DeviceProfile, state: str | None = None) -> PairwiseFit:
    """`prof`: the profile calibrated so far (node bytes over HBM bandwidth for the demand model)."""
    st = choose_state(pw, state)
    source = f"measured: {pw.tool} on {pw.device} ({st} process state)"
    fence_extra, entry = fence_and_entry(pw, st, source)
    variant = Variant(**pw.variant)
    collectives = {n.name for n in _layer_at(prof, variant).nodes if n.is_collective}
    measured = pair_measures(pw, st)
    pairs = [p for p in measured if p.first not in collectives and p.second not in collectives]
    return PairwiseFit(st, source, fence_extra, entry, pairs,
                       ar_factor(measured, collectives, f"{pw.tool} on {pw.device}"),
                       fit_overlap(pairs, prof, variant, source))


def pairs_in(path: Path, state: str | None = None) -> tuple[list[PairMeasure], Pairwise]:
    """The node pairs one pairwise file measured (in `state`, default `clean`) with the file: what
    `add_pairs` takes after a pairs stage of `calibrate --measure` or `--for`."""
    pw = load_pairwise(path)
    return pair_measures(pw, choose_state(pw, state)), pw


def _layer_at(prof: DeviceProfile, variant: Variant):
    shape = prof.provenance.shape
    return build_layer(RankDims(MODELS[shape.model], Shape(4, shape.context, shape.tp, shape.page_size,
                                                           shape.kv_cache)), variant)


def pair_note(source: str, pairs: tuple[PairMeasure, ...]) -> str:
    return (f"{source}: (makespan of A dispatched first beside B - the longer alone) / the shorter alone, "
            f"each beside an empty kernel in the same fork/join harness; {len(pairs)} measurements, "
            "below 0 read as 0")


def with_pairs(prof: DeviceProfile, pairs: tuple[PairMeasure, ...], source: str) -> DeviceProfile:
    """The profile with exactly these measured pairs, its demand model and spread refitted to them
    (no pairs: the prior, every overlap unmeasured). `pairs` ran in the profile's `pair_variant`."""
    if not pairs:
        return replace(prof, pair_measures=(), pair_source="", sm_demand={}, sm_source="",
                       default_sm_demand=DeviceProfile.__dataclass_fields__["default_sm_demand"].default,
                       overlap_model_spread=DeviceProfile.__dataclass_fields__["overlap_model_spread"].default)
    fit = fit_overlap(list(pairs), prof, Variant(**prof.pair_variant), source)
    default, spread = fit.params()
    return replace(prof, pair_measures=tuple(pairs), pair_source=pair_note(source, pairs), sm_demand=fit.sm_demand,
                   sm_source=fit.note, default_sm_demand=default, overlap_model_spread=spread)


def add_pairs(prof: DeviceProfile, pairs: list[PairMeasure], source: str, *,
              variant: dict[str, bool] | None = None) -> DeviceProfile:
    """The profile with `pairs` measured (by `calibrate --measure --for`) added: a pair already
    there at that batch is replaced, the demand model refitted to them all, and its spread with it.
    `variant`: the layer variant the pairs ran in (their bytes set the demand model's HBM shares);
    it must be the profile's `pair_variant` when it has pairs already."""
    if variant is not None and prof.pair_measures and dict(variant) != dict(prof.pair_variant):
        raise Failure(f"{prof.origin or prof.name}: pair_variant: the profile's pairs ran in {prof.pair_variant}, "
                      f"the new ones in {variant}; accepted: pairs measured in the profile's pair_variant",
                      EXIT_BAD_INPUT)
    if variant is not None:
        prof = replace(prof, pair_variant=dict(variant))
    new = {(p.batch, p.first, p.second) for p in pairs}
    kept = tuple(p for p in prof.pair_measures if (p.batch, p.first, p.second) not in new)
    return with_pairs(prof, kept + tuple(pairs), source)
