"""A node's latency alone at any shape, from the profile's calibrated points.

At the calibration shape (provenance.shape) and inside the measured batches, the latency is the
measurement, interpolated linearly in log(batch). Anywhere else (another batch outside the
measured range, context, tp, page size, kv-cache dtype or model) the node moves from its nearest
calibrated point by its own roofline floor, max(bytes / copy bandwidth, FLOPs / peak)
(models/hardware.py):

    us = us_calibrated + slope * (floor(shape) - floor(calibrated point))

`slope` is what one more us of floor has cost the node across its measured batches (the
least-squares slope of latency over floor, kept between 1 and 1 / MIN_EFFICIENCY: a kernel
does not move bytes faster than the copy bandwidth, nor, we assume, slower than a quarter of
it); where its floor did not move enough across them, 1 / the op's efficiency. The result never
goes below the node's floor (below floor x its calibrated ratio, for a node whose calibrated
point already ran under its stated floor: the routed experts' floor assumes uniform routing).

How far such a move can be off: the same rule predicting each node's smallest and largest
measured batch from the others misses by `shape_spread` of the move it makes (sum of misses /
sum of moves over nodes); a profile measured at one batch has no such test and takes 1 (the
move itself is the uncertainty). The prediction interval widens by that much of every move.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache

from streamlab.layer import DENSE_ONLY, Layer, Node, Variant, build_layer
from streamlab.models import MODELS, RankDims, Shape
from streamlab.sim.profile import BatchTable, DeviceProfile, interpolate

MIN_EFFICIENCY = 0.25
MIN_FLOOR_SPAN = 0.1  # the floors of the measured batches must span this much (relative) to fit a slope
DEFAULT_EFFICIENCY = 0.6
NO_SHAPE_TEST = 1.0


@dataclass(frozen=True)
class NodeLatency:
    """A node alone at the layer's shape: `us`, and, when the profile did not measure it there,
    the calibrated point it moved from and why."""

    node: str
    us: float
    moved_from: str = ""  # empty: measured (or interpolated between measured batches) at this shape
    moved_us: float = 0.0  # us - the calibrated point's latency

    @property
    def extrapolated(self) -> bool:
        return bool(self.moved_from)


def node_latencies(layer: Layer, profile: DeviceProfile) -> tuple[NodeLatency, ...]:
    """Every node of `layer` alone on `profile` (see the module docstring)."""
    return tuple(node_latency(layer, profile, node) for node in layer.nodes)


def node_latency(layer: Layer, profile: DeviceProfile, node: Node) -> NodeLatency:
    name = node.name
    table = profile.latency_table(name, layer.variant)
    if not table and name in DENSE_ONLY:  # a dense layer's MLP: no MoE-layer calibration measures it
        name, table = _nearest_of_op(profile, layer, node)
    if not table:
        us = profile.fit_us(node)
        return NodeLatency(node.name, us, "never measured: the op's roofline fit", us)
    batch = layer.dims.tokens
    lo, hi = min(table), max(table)
    ref_batch = min(max(batch, lo), hi)
    if name == node.name and _calibration_dims(profile, ref_batch) == layer.dims:
        return NodeLatency(node.name, interpolate(table, batch))  # measured, or between measured batches
    ref_us = interpolate(table, ref_batch)
    variant = _variant_with(name, layer.variant)
    ref = _layer(_calibration_dims(profile, ref_batch), variant).node(name)
    hw = profile.ceilings
    floor, ref_floor = hw.floor_us(node), hw.floor_us(ref)
    us = ref_us + slope(profile, name, variant, table) * (floor - ref_floor)
    least = floor * min(1.0, ref_us / ref_floor) if ref_floor > 0 else floor
    us = max(us, least)
    why = _described(profile, ref_batch, layer.dims)
    if name != node.name:
        why = f"{node.name} from {name}'s latency (same op, nearest size)" + (f", {why}" if why else "")
    return NodeLatency(node.name, us, why, us - ref_us)


def _nearest_of_op(profile: DeviceProfile, layer: Layer, node: Node) -> tuple[str, BatchTable | None]:
    """The measured node of `node`'s op whose floor at the calibration shape is nearest (in ratio)
    to `node`'s own: the dense MLP's gate_up scales from a GEMM of its size, not the shared
    expert's six times smaller one."""
    hw = profile.ceilings
    batch = min(max(layer.dims.tokens, min(profile.provenance.batches)), max(profile.provenance.batches))
    want = max(hw.floor_us(node), 1e-9)
    best: tuple[float, str, BatchTable] | None = None
    for tables in (profile.node_us, *profile.variant_node_us.values()):
        for name, table in tables.items():
            ref = _layer(_calibration_dims(profile, batch), _variant_with(name, layer.variant)).by_name.get(name)
            if ref is None or ref.op != node.op:
                continue
            distance = abs(math.log(max(hw.floor_us(ref), 1e-9) / want))
            if best is None or distance < best[0]:
                best = (distance, name, table)
    return (best[1], best[2]) if best else (node.name, None)


def _variant_with(name: str, variant: Variant) -> Variant:
    """`variant`, or the one whose layer has the node (the shared expert needs fusion off)."""
    if name in _layer(RankDims(MODELS["tiny"], Shape(1, 256, 1)), variant).by_name:
        return variant
    return replace(variant, shared_expert_fused=False)


def slope(profile: DeviceProfile, name: str, variant: Variant, table: BatchTable) -> float:
    """us of latency per us of floor, from the node's measured batches (module docstring)."""
    key = ("slope", name, variant)
    if key not in profile.cache:
        profile.cache[key] = _slope(profile, name, variant, table)
    return profile.cache[key]


def _slope(profile: DeviceProfile, name: str, variant: Variant, table: BatchTable) -> float:
    hw = profile.ceilings
    pts = [(hw.floor_us(_layer(_calibration_dims(profile, b), variant).node(name)), t) for b, t in table.items()]
    floors = [f for f, _ in pts]
    if len(pts) < 2 or max(floors) - min(floors) < MIN_FLOOR_SPAN * max(max(floors), 1e-9):
        op = _layer(_calibration_dims(profile, min(table)), variant).node(name).op
        eff = profile.op_efficiency[op].value if op in profile.op_efficiency else DEFAULT_EFFICIENCY
        return 1.0 / eff
    mf, mt = sum(floors) / len(pts), sum(t for _, t in pts) / len(pts)
    fitted = sum((f - mf) * (t - mt) for f, t in pts) / sum((f - mf) ** 2 for f in floors)
    return min(max(fitted, 1.0), 1.0 / MIN_EFFICIENCY)


def shape_spread(profile: DeviceProfile) -> tuple[float, str]:
    """(how far a move misses, in units of the move; how that was measured): each node's
    smallest and largest measured batch predicted from its other batches (module docstring)."""
    if "shape_spread" not in profile.cache:
        profile.cache["shape_spread"] = _shape_spread(profile)
    return profile.cache["shape_spread"]


def _shape_spread(profile: DeviceProfile) -> tuple[float, str]:
    tables = [(name, Variant(), t) for name, t in profile.node_us.items()]
    missed = moved = 0.0
    cases = 0
    for name, variant, table in tables:
        if len(table) < 3:
            continue
        for held in (min(table), max(table)):
            rest = {b: t for b, t in table.items() if b != held}
            near = min(rest, key=lambda b: abs(b - held))
            hw = profile.ceilings
            node = _layer(_calibration_dims(profile, held), variant).node(name)
            ref = _layer(_calibration_dims(profile, near), variant).node(name)
            floor, ref_floor = hw.floor_us(node), hw.floor_us(ref)
            pred = rest[near] + _slope(profile, name, variant, rest) * (floor - ref_floor)
            pred = max(pred, floor * min(1.0, rest[near] / ref_floor) if ref_floor > 0 else floor)
            missed += abs(pred - table[held])
            moved += abs(pred - rest[near])
            cases += 1
    if not cases or moved <= 0:
        return NO_SHAPE_TEST, "prior: no node measured at 3 batches or more to test the rule on; +-100% of each move"
    return missed / moved, (f"each node's smallest and largest measured batch predicted from its others: "
                            f"{cases} predictions miss by {missed / moved:.0%} of the move they make")


def _calibration_dims(profile: DeviceProfile, batch: int) -> RankDims:
    s = profile.provenance.shape
    return RankDims(MODELS[s.model], Shape(batch, s.context, s.tp, s.page_size, s.kv_cache))


@lru_cache(maxsize=128)
def _layer(dims: RankDims, variant: Variant) -> Layer:
    return build_layer(dims, variant)


def _described(profile: DeviceProfile, ref_batch: int, dims: RankDims) -> str:
    """What differs from the calibrated point, e.g. `context 65536 (calibrated 8192)`."""
    s, d = profile.provenance.shape, dims.shape
    diffs = [f"{k} {getattr(d, k)} (calibrated {getattr(s, k)})" for k in ("context", "tp", "page_size", "kv_cache")
             if getattr(d, k) != getattr(s, k)]
    if dims.model.name != s.model:
        diffs.insert(0, f"model {dims.model.name} (calibrated {s.model})")
    if d.batch != ref_batch:
        diffs.append(f"batch {d.batch} (measured {min(profile.provenance.batches)} to {max(profile.provenance.batches)})")
    return ", ".join(diffs)
