"""Device profiles for the simulator: what one kernel costs alone, and what sharing costs.

A profile is YAML. Every parameter carries the source it came from (`measured ...`,
`published ...`, `estimate ...`), and `streamlab sim` prints them with the result.
"""

from __future__ import annotations

import itertools
import math
import statistics
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from streamlab.errors import EXIT_BAD_INPUT, Failure
from streamlab.layer import Node, Variant

BatchTable = dict[int, float]  # batch -> value


@dataclass(frozen=True)
class Param:
    """A parameter and where it came from. `by_batch`: its value at each measured batch, for a
    per-layer constant that the measurements show changing with the batch; `value` is then the
    median over the batches (what a one-line summary prints)."""

    value: float
    source: str
    by_batch: BatchTable | None = None

    def at(self, batch: int) -> float:
        """The value at `batch`: interpolated as node latencies are, or the one value."""
        return interpolate(self.by_batch, batch) if self.by_batch else self.value


def per_batch(table: BatchTable, source: str) -> Param:
    """A parameter measured at each batch in `table`."""
    return Param(statistics.median(table.values()), source, dict(sorted(table.items())))


UNMODELLED = Param(0.0, "not modelled for this device")


def variant_key(variant: Variant) -> str:
    """A variant as profile YAML keys it: every flag, so a table can never match the wrong one."""
    return ",".join(f"{k}={'true' if v else 'false'}" for k, v in sorted(vars(variant).items()))


def interpolate(table: BatchTable, batch: int) -> float:
    """Linear in log(batch) between measured batches; the nearest measurement outside them."""
    pts = sorted(table.items())
    if batch <= pts[0][0]:
        return pts[0][1]
    for (b0, t0), (b1, t1) in itertools.pairwise(pts):
        if b0 <= batch <= b1:
            w = (math.log(batch) - math.log(b0)) / (math.log(b1) - math.log(b0))
            return t0 + w * (t1 - t0)
    return pts[-1][1]


@dataclass(frozen=True)
class DeviceProfile:
    """Per-device costs.

    node_us: isolated latency of a node at a batch size: {node: {batch: us}}; between measured
    batches latency is interpolated on log(batch), outside them, and for nodes never measured,
    the op's roofline fit `overhead + bytes / (bw * efficiency)` is used.
    variant_node_us: {variant_key: {node: {batch: us}}} for nodes that are a different kernel in
    another variant (the routed experts without the fused shared expert); it wins over node_us
    for a layer of that variant, since the same name is not the same work there.
    pair_excess: {"first|second": {batch: e}}, the measured overlap excess of two nodes started
    together, `first` dispatched first (0: free overlap, 1: as slow as serial); the engine uses it
    whenever exactly those two run. sm_demand: {node: {batch: fraction}}, the share of the SMs /
    CUs a node keeps busy alone, fitted to the same pairs, for combinations never measured:
    concurrent kernels whose demands add up past 1 share the device in proportion.
    `default_sm_demand` covers nodes never paired.
    """

    name: str
    streams: str  # "hip" (depth-first queue rule) or "cuda" (one lane per capture stream)
    hbm_gbs: Param
    launch_gap_us: Param  # per kernel of one stream inside a graph: idle after it (< 0: it runs shorter)
    fence_us: Param  # extra wait on a cross-stream edge (signal + wait)
    graph_entry_us: Param  # per replay: idle at the start of the graph
    ar_concurrency_factor: Param  # all-reduce duration multiplier (see ar_scope)
    multi_stream_entry_us: Param  # idle before each layer's first kernel in a graph of several lanes
    concurrency_slowdown: Param  # each extra concurrent kernel slows the others by this fraction
    ar_scope: str = "concurrent"  # "concurrent": while another lane runs; "graph": any multi-lane graph
    multi_stream_graph_entry_us: Param = UNMODELLED  # per replay: idle of a graph of several lanes
    multi_stream_launch_gap_us: Param = UNMODELLED  # launch gap in a graph of several lanes (unset: launch_gap_us)
    default_sm_demand: Param = UNMODELLED  # for nodes without a fitted sm_demand
    hip_queues: int = 4
    op_overhead_us: dict[str, Param] = field(default_factory=dict)
    op_efficiency: dict[str, Param] = field(default_factory=dict)
    node_us: dict[str, dict[int, float]] = field(default_factory=dict)
    node_kernels: dict[str, int] = field(default_factory=dict)  # kernels per node, as measured
    node_source: str = ""
    variant_node_us: dict[str, dict[str, BatchTable]] = field(default_factory=dict)
    variant_source: str = ""
    sm_demand: dict[str, BatchTable] = field(default_factory=dict)
    sm_source: str = ""
    pair_excess: dict[str, BatchTable] = field(default_factory=dict)
    pair_source: str = ""
    reference: dict = field(default_factory=dict)  # published numbers this profile reproduces
    cache: dict = field(default_factory=dict, init=False, compare=False, repr=False)  # sim/costs.py, per shape

    def latency_table(self, name: str, variant: Variant | None = None) -> BatchTable | None:
        """The node's measured latencies: the variant's own where it has them, else the base."""
        own = self.variant_node_us.get(variant_key(variant), {}) if variant is not None else {}
        return own.get(name) or self.node_us.get(name)

    def isolated_us(self, node: Node, batch: int, fit_at=None, variant: Variant | None = None) -> float:
        """Measured latency at `batch` (log-interpolated between measured batches); outside
        them, the nearest measurement scaled by the roofline fit (`fit_at(b)` gives the fit of
        this node at batch b); never measured: the fit itself."""
        fit = self.fit_us(node)
        table = self.latency_table(node.name, variant)
        if not table:
            return fit
        lo, hi = min(table), max(table)
        if fit_at is not None and (batch < lo or batch > hi):
            b = lo if batch < lo else hi
            return table[b] * fit / fit_at(b)
        return interpolate(table, batch)

    def lane_gap_us(self, multi_lane: bool, batch: int) -> float:
        """What each kernel of a lane costs beyond its node latency at `batch`; a graph with
        branches has its own. Below 0 where the node latencies (timed under the profiler)
        read longer than the kernels run in a replay timed with events."""
        if multi_lane and self.multi_stream_launch_gap_us != UNMODELLED:
            return self.multi_stream_launch_gap_us.at(batch)
        return self.launch_gap_us.at(batch)

    def pairs_at(self, batch: int) -> dict[tuple[str, str], float]:
        """Measured overlap excess of (first, second) node pairs at `batch`."""
        return {tuple(k.split("|", 1)): interpolate(t, batch) for k, t in self.pair_excess.items()}

    def node_sm_demand(self, name: str, batch: int) -> float:
        table = self.sm_demand.get(name)
        return interpolate(table, batch) if table else self.default_sm_demand.value

    def kernels(self, node: Node) -> int:
        return self.node_kernels.get(node.name, node.launches)

    def fit_us(self, node: Node) -> float:
        overhead = self.op_overhead_us.get(node.op, Param(2.0, "default")).value
        eff = self.op_efficiency.get(node.op, Param(0.6, "default")).value
        return overhead + node.bytes / (self.hbm_gbs.value * 1e3 * eff)

    def bandwidth_demand(self, node: Node, duration_us: float) -> float:
        """Fraction of the device's HBM bandwidth the node uses when it runs alone."""
        return min(1.0, node.bytes / (max(duration_us, 1e-3) * self.hbm_gbs.value * 1e3))

    def describe(self) -> list[tuple[str, str, str]]:
        rows = []
        for key in PARAMS:
            p: Param = getattr(self, key)
            shown = ", ".join(f"{v:.3g} at b{b}" for b, v in p.by_batch.items()) if p.by_batch else f"{p.value:g}"
            rows.append((key, shown, p.source))
        rows.append(("node_us", f"{len(self.node_us)} nodes", self.node_source or "roofline fit"))
        if self.variant_node_us:
            n = sum(len(t) for t in self.variant_node_us.values())
            rows.append(("variant_node_us", f"{n} nodes in {len(self.variant_node_us)} variants",
                         self.variant_source))
        if self.pair_excess:
            rows.append(("pair_excess", f"{len(self.pair_excess)} node pairs", self.pair_source))
        if self.sm_demand:
            rows.append(("sm_demand", f"{len(self.sm_demand)} nodes", self.sm_source))
        return rows


PARAMS = ("hbm_gbs", "launch_gap_us", "multi_stream_launch_gap_us", "fence_us", "graph_entry_us",
          "ar_concurrency_factor", "multi_stream_entry_us", "multi_stream_graph_entry_us",
          "concurrency_slowdown", "default_sm_demand")
OPTIONAL_PARAMS = ("multi_stream_launch_gap_us", "multi_stream_graph_entry_us", "default_sm_demand")


def _param(raw, key: str, path: str) -> Param:
    v = raw.get(key)
    if v is None and key in OPTIONAL_PARAMS:
        return UNMODELLED
    if isinstance(v, dict) and "source" in v and isinstance(v.get("by_batch"), dict) and v["by_batch"]:
        try:
            table = {int(b): float(x) for b, x in v["by_batch"].items()}
        except (TypeError, ValueError):
            raise Failure(f"{path}: {key}.by_batch must map batch sizes to numbers, got "
                          f"{v['by_batch']!r}", EXIT_BAD_INPUT) from None
        return per_batch(table, str(v["source"]))
    if not isinstance(v, dict) or "value" not in v or "source" not in v:
        raise Failure(f"{path}: {key} needs {{value: ..., source: ...}} or {{by_batch: {{batch: value}}, "
                      "source: ...}", EXIT_BAD_INPUT)
    return Param(float(v["value"]), str(v["source"]))


def load_profile(name_or_path: str) -> DeviceProfile:
    path = Path(name_or_path)
    if not path.suffix:
        path = Path(str(resources.files("streamlab.sim") / "profiles" / f"{name_or_path}.yaml"))
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError:
        known = sorted(p.stem for p in (Path(str(resources.files("streamlab.sim"))) / "profiles").glob("*.yaml"))
        raise Failure(f"no simulator profile {name_or_path!r}; shipped: {', '.join(known)}",
                      EXIT_BAD_INPUT) from None
    except yaml.YAMLError as e:
        raise Failure(f"{path}: not valid YAML: {e}", EXIT_BAD_INPUT) from None
    if not isinstance(raw, dict):
        raise Failure(f"{path}: a profile is a mapping", EXIT_BAD_INPUT)
    p = str(path)
    return DeviceProfile(
        name=str(raw.get("name", path.stem)), streams=str(raw.get("streams", "cuda")),
        **{k: _param(raw, k, p) for k in PARAMS},
        ar_scope=str(raw.get("ar_scope", "concurrent")), hip_queues=int(raw.get("hip_queues", 4)),
        op_overhead_us={k: Param(float(v["value"]), v["source"]) for k, v in raw.get("op_overhead_us", {}).items()},
        op_efficiency={k: Param(float(v["value"]), v["source"]) for k, v in raw.get("op_efficiency", {}).items()},
        node_us=_tables(raw.get("node_us", {})),
        node_kernels={n: int(k) for n, k in raw.get("node_kernels", {}).items()},
        node_source=str(raw.get("node_source", "")),
        variant_node_us={v: _tables(t) for v, t in raw.get("variant_node_us", {}).items()},
        variant_source=str(raw.get("variant_source", "")),
        sm_demand=_tables(raw.get("sm_demand", {})), sm_source=str(raw.get("sm_source", "")),
        pair_excess=_tables(raw.get("pair_excess", {})), pair_source=str(raw.get("pair_source", "")),
        reference=raw.get("reference", {}))


def _tables(raw: dict) -> dict[str, BatchTable]:
    return {n: {int(b): float(t) for b, t in bs.items()} for n, bs in raw.items()}


def _rounded(tables: dict[str, BatchTable], digits: int = 3) -> dict:
    return {n: {b: round(t, digits) for b, t in sorted(bs.items())} for n, bs in tables.items()}


def dump_profile(profile: DeviceProfile) -> str:
    def par(p: Param) -> dict:
        if p.by_batch:
            return {"by_batch": {b: round(v, 4) for b, v in p.by_batch.items()}, "source": p.source}
        return {"value": round(p.value, 4), "source": p.source}
    doc = {
        "name": profile.name, "streams": profile.streams, "hip_queues": profile.hip_queues,
        "ar_scope": profile.ar_scope,
        **{k: par(getattr(profile, k)) for k in PARAMS},
        "op_overhead_us": {k: par(v) for k, v in profile.op_overhead_us.items()},
        "op_efficiency": {k: par(v) for k, v in profile.op_efficiency.items()},
        "node_source": profile.node_source,
        "node_us": _rounded(profile.node_us),
        "node_kernels": profile.node_kernels,
    }
    if profile.variant_node_us:
        doc["variant_source"] = profile.variant_source
        doc["variant_node_us"] = {v: _rounded(t) for v, t in profile.variant_node_us.items()}
    if profile.pair_excess:
        doc["pair_source"] = profile.pair_source
        doc["pair_excess"] = _rounded(profile.pair_excess)
    if profile.sm_demand:
        doc["sm_source"] = profile.sm_source
        doc["sm_demand"] = _rounded(profile.sm_demand)
    if profile.reference:
        doc["reference"] = profile.reference
    return yaml.safe_dump(doc, sort_keys=False, width=120)
