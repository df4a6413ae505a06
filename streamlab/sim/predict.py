"""A simulated per-layer latency with its prediction interval, and the overlaps it rests on.

The interval is the sum of bounds, each from the calibration's own evidence (a bound added to a
bound stays a bound; the parts are listed, so nothing hides in the total):
- calibration noise: how far a fresh run of the calibration's serial layer lands
  (`check.run_noise`, per batch), as a fraction of the prediction;
- launch gap, fence, graph entry, all-reduce factor: each parameter's spread (how far the
  calibration's evidence at this batch lies from the value used) times how often the layout
  pays it per layer (kernels, cross-lane edges, replays, all-reduce time);
- unmeasured overlaps: for every pair of kernels that shared the device in the simulated replay
  and whose ordered pair the profile did not measure at this batch, the demand model's
  leave-one-out spread over the measured pairs (`overlap_model_spread`, in units of the shorter
  kernel) times the work the shorter one did beside the other;
- shape: every node moved from its calibrated point to this shape (sim/shape.py), by the rule's
  own miss rate on the measured batches times the move;
- SM budgets: what budgets do is modelled (sim/costs.py `BudgetCosts`), never measured by a
  profile; the interval takes their whole modelled effect (against the same layout without
  them, or the budgeted nodes' slowdown alone, the larger) as its own uncertainty.

Which overlaps a layout creates comes from its simulated replay, never from a list: the pairs
the engine ran side by side, with which one it let keep its pace (`Overlap`). `missing_pairs`
is what `streamlab calibrate --measure --for` measures and adds (sim/pairwise.add_pairs).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from streamlab.layer import Layer
from streamlab.results import (
    IntervalPart,
    MovedNode,
    PredictedLatency,
    PredictedOverlap,
)
from streamlab.scenario import Scenario, check_budgets
from streamlab.schedule.program import Program
from streamlab.sim.costs import QUEUE_WAIT_EXEMPT, device_units, node_costs
from streamlab.sim.engine import Overlap, Replay, run, run_graph
from streamlab.sim.profile import DeviceProfile
from streamlab.sim.profile_file import check_profile_for
from streamlab.sim.shape import NodeLatency, shape_spread
from streamlab.timeline import Timeline


@dataclass(frozen=True)
class Prediction:
    """What the simulator predicts for one layout at one shape, and how sure it is."""

    scenario: str
    profile: str
    batch: int
    layers: int
    per_layer_us: float
    bands: tuple[IntervalPart, ...]
    overlaps: tuple[Overlap, ...]
    moved: tuple[NodeLatency, ...]  # nodes scaled from a calibrated point to this shape
    replay: Replay = field(compare=False, repr=False)

    @property
    def half_width_us(self) -> float:
        return sum(b.us for b in self.bands)

    @property
    def low_us(self) -> float:
        return self.per_layer_us - self.half_width_us

    @property
    def high_us(self) -> float:
        return self.per_layer_us + self.half_width_us

    @property
    def timeline(self) -> Timeline:
        return self.replay.timeline

    @property
    def unmeasured(self) -> tuple[Overlap, ...]:
        return tuple(o for o in self.overlaps if not o.measured)

    def overlaps_line(self) -> str:
        """e.g. `5 of 7 overlaps measured; 2 extrapolated: a|b, c|d`."""
        if not self.overlaps:
            return "no overlaps (one kernel at a time)"
        n, out = len(self.overlaps), self.unmeasured
        line = f"{n - len(out)} of {n} overlaps measured"
        if out:
            line += f"; {len(out)} extrapolated: " + ", ".join(o.pair for o in out)
        crowded = [o for o in out if o.crowded]
        if crowded:
            line += f" ({len(crowded)} beside a third kernel: the demand model, which no pair measurement replaces)"
        return line

    def shape_line(self) -> str | None:
        if not self.moved:
            return None
        why = sorted({m.moved_from for m in self.moved})
        return f"extrapolates {len(self.moved)} node latencies from the calibrated shape: " + "; ".join(why)

    def line(self) -> str:
        return (f"{self.per_layer_us:.1f} us per layer, interval {self.low_us:.1f} - {self.high_us:.1f} us "
                f"(simulated on profile {self.profile}: a prediction, not a measurement)")

    def record(self, measure_command: str | None = None) -> PredictedLatency:
        """The prediction as a run result keeps it (results.PredictedLatency)."""
        return PredictedLatency(
            per_layer_us=self.per_layer_us, low_us=self.low_us, high_us=self.high_us,
            parts=self.bands,
            overlaps=tuple(PredictedOverlap(o.first, o.second, o.measured, o.first_us, o.second_us, o.crowded)
                           for o in self.overlaps),
            overlaps_line=self.overlaps_line(),
            moved=tuple(MovedNode(m.node, m.us, m.moved_us, m.moved_from) for m in self.moved),
            measure_command=measure_command)


def measure_command(scenarios: list[str], profile: DeviceProfile) -> str:
    """The command that measures the overlaps these layouts create and the profile lacks."""
    source = profile.origin if profile.origin and "/sim/profiles/" not in profile.origin else profile.name
    return (f"streamlab calibrate --measure --for {' '.join(scenarios)} --profile {source} "
            f"--out {profile.name}-more-pairs.yaml")


def layout_overlaps(layer: Layer, program: Program, profile: DeviceProfile, layers: int = 4) -> tuple[Overlap, ...]:
    """Every pair of compute kernels the layout runs side by side on this profile, in the order the
    engine treats them (first: the one that keeps its pace), each flagged measured or not."""
    return run(layer, program, profile, layers).overlaps


def missing_pairs(layer: Layer, program: Program, profile: DeviceProfile, layers: int = 4) -> list[tuple[str, str]]:
    """The ordered pairs (first on the stream forked from, second on the other) the layout creates at
    the layer's batch that the profile has not measured there: what `calibrate --for` measures.
    Pairs that also ran beside a third kernel are left out (a pair measurement does not settle
    them). Measuring them changes the simulated replay, which may then create other overlaps:
    call again after adding them until it returns nothing."""
    return [(o.first, o.second) for o in layout_overlaps(layer, program, profile, layers)
            if not o.measured and not o.crowded]


def predict(scen: Scenario, profile: DeviceProfile, *, layers: int | None = None,
            other_model: bool = False) -> Prediction:
    """The scenario simulated on `profile`, with its interval (module docstring). `other_model`:
    the user asked for a model the profile was not calibrated on (`sim --model`)."""
    if scen.program.budgets:
        check_budgets(scen, device_units(profile), f"the {profile.name} profile's device")
    return predict_layer(scen.name, scen.layer, scen.program, profile, layers=layers or scen.measure.layers,
                         other_model=other_model)


def predict_layer(name: str, layer: Layer, program: Program, profile: DeviceProfile, *, layers: int,
                  other_model: bool = False) -> Prediction:
    """`predict` for a layer and program of one's own (the dense layers of a decode step)."""
    key = ("checked", layer.dims, layer.variant, layer.dense, other_model)
    if key not in profile.cache:
        check_profile_for(profile, layer, other_model=other_model)
        profile.cache[key] = True
    sim = run(layer, program, profile, layers)
    return Prediction(name, profile.name, layer.dims.tokens, layers, sim.per_layer_us,
                      bands(sim, profile, layer), sim.overlaps,
                      tuple(x for x in node_costs(layer, profile).latency if x.extrapolated), sim)


def bands(sim: Replay, profile: DeviceProfile, layer: Layer) -> tuple[IntervalPart, ...]:
    """The interval's parts for one simulated replay (module docstring)."""
    batch, g, c = layer.dims.tokens, sim.graph, sim.costs
    multi = g.multi
    noise = profile.calibration_noise.at(batch)
    out = [IntervalPart("calibration noise", noise * sim.per_layer_us,
                f"{noise:.2%} of the layer: {profile.calibration_noise.source}")]
    kernels = sum(c.kernels)
    gap = profile.lane_gap(multi)
    out.append(IntervalPart("launch gap", gap.spread_at(batch) * kernels,
                    f"+-{gap.spread_at(batch):.3g} us x {kernels} kernels per layer: {gap.source}"))
    if multi:
        cross = sum(1 for i, ps in enumerate(g.parents) for p in ps if g.lane[p] != g.lane[i]) / g.layers
        out.append(IntervalPart("fence", profile.fence_us.spread_at(batch) * cross,
                        f"+-{profile.fence_us.spread_at(batch):.3g} us x {cross:g} cross-lane edges per layer: "
                        f"{profile.fence_us.source}"))
        entry = profile.multi_stream_graph_entry_us
        out.append(IntervalPart("graph entry", entry.spread / g.layers,
                        f"+-{entry.spread:.3g} us per replay / {g.layers} layers: {entry.source}"))
        layer_entry = profile.multi_stream_entry_us
        out.append(IntervalPart("layer entry", layer_entry.spread_at(batch),
                        f"+-{layer_entry.spread_at(batch):.3g} us per layer: {layer_entry.source}"))
        wait = profile.queue_wait_kernel_us
        paying = sum(k for k, op in zip(c.kernels, c.ops) if op not in QUEUE_WAIT_EXEMPT)
        out.append(IntervalPart("queue wait", wait.spread_at(batch) * paying,
                        f"+-{wait.spread_at(batch):.3g} us x {paying} kernels per layer: {wait.source}"))
        ar = profile.ar_concurrency_factor
        ar_us = sum(us for us, coll in zip(c.alone_us, c.collective) if coll)
        out.append(IntervalPart("all-reduce factor", ar.spread * ar_us,
                        f"+-{ar.spread:.3g} x {ar_us:.1f} us of all-reduce per layer: {ar.source}"))
    q = profile.overlap_model_spread
    unmeasured = [o for o in sim.overlaps if not o.measured]
    beside = sum(o.shorter_us for o in unmeasured)
    out.append(IntervalPart("unmeasured overlaps", q.value * beside,
                    f"{len(unmeasured)} pairs, {beside:.1f} us of the shorter kernels' work beside the other "
                    f"x {q.value:.2f}: {q.source}"))
    b = sim.budget
    if b is not None:
        budgeted = sum(sms is not None for sms in b.budgets)
        alone = sum(us * (k - 1) for us, k, sms in zip(c.alone_us, b.stretch, b.budgets) if sms is not None)
        effect = sim.per_layer_us - run_graph(g, c, profile.name).per_layer_us
        out.append(IntervalPart("SM budgets", max(abs(effect), alone),
                        f"{budgeted} budgeted nodes: {effect:+.1f} us per layer against the same layout without "
                        f"budgets, {alone:.1f} us slower alone, +- the larger: modelled from their Triton grids "
                        f"on {b.units} SMs / CUs (sim/costs.py BudgetCosts), not measured by the profile"))
    moved = [x for x in c.latency if x.extrapolated]
    if moved:
        kappa, how = shape_spread(profile)
        total = sum(abs(x.moved_us) for x in moved)
        out.append(IntervalPart("shape", kappa * total, f"{len(moved)} nodes moved {total:.1f} us from their calibrated "
                        f"points x {kappa:.2f}: {how}"))
    return tuple(b for b in out if b.us > 0 or b.name == "calibration noise")
