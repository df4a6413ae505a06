"""Device profiles for the simulator: what one kernel costs alone, what sharing costs, and how
sure each number is.

Every parameter carries the source it came from (`measured ...`, `published ...`, `prior ...`)
and, where the calibration measured it, its spread: how far the value the model uses may lie
from what the evidence at a batch says. The prediction interval (sim/predict.py) is built from
those spreads, the calibration's own run noise, and the spread of the fitted overlap and shape
models over what they were fitted to. The file format, its validation and its provenance are in
sim/profile_file.py and sim/provenance.py.
"""

from __future__ import annotations

import itertools
import math
import statistics
from dataclasses import dataclass, field, replace

from streamlab.layer import Node, Variant
from streamlab.models.hardware import HARDWARE, Hardware
from streamlab.sim.provenance import Provenance

BatchTable = dict[int, float]  # batch -> value


@dataclass(frozen=True)
class Param:
    """A parameter and where it came from. `by_batch`: its value at each measured batch, for a
    per-layer constant that the measurements show changing with the batch; `value` is then the
    median over the batches (what a one-line summary prints). `spread` (`spread_by_batch`): how
    far the true value may lie from the one used, in the same unit, as the calibration saw it."""

    value: float
    source: str
    by_batch: BatchTable | None = None
    spread: float = 0.0
    spread_by_batch: BatchTable | None = None

    def at(self, batch: int) -> float:
        """The value at `batch`: interpolated as node latencies are, or the one value."""
        return interpolate(self.by_batch, batch) if self.by_batch else self.value

    def spread_at(self, batch: int) -> float:
        return interpolate(self.spread_by_batch, batch) if self.spread_by_batch else self.spread


def per_batch(table: BatchTable, source: str, spread: BatchTable | None = None) -> Param:
    """A parameter measured at each batch in `table`."""
    return Param(statistics.median(table.values()), source, dict(sorted(table.items())),
                 statistics.median(spread.values()) if spread else 0.0,
                 dict(sorted(spread.items())) if spread else None)


UNMODELLED = Param(0.0, "not modelled for this device")
NO_OVERLAP_DATA = 1.0  # the overlap spread without measured pairs: anywhere from free to serialized


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
class PairMeasure:
    """Two nodes forked onto two streams at one batch, `first` dispatched first (on the stream
    the fork came from): each one's latency beside an empty kernel in the same harness, and the
    makespan of both (all net of the harness). What the pairwise benchmark measures and
    `calibrate --for` adds."""

    batch: int
    first: str
    second: str
    first_us: float
    second_us: float
    together_us: float

    @property
    def key(self) -> str:
        return f"{self.first}|{self.second}"

    @property
    def excess(self) -> float:
        """0: the pair overlaps for free; 1: it takes as long as one after the other."""
        return (self.together_us - max(self.first_us, self.second_us)) / min(self.first_us, self.second_us)


@dataclass(frozen=True)
class DeviceProfile:
    """Per-device costs.

    node_us: latency of a node alone at a batch size: {node: {batch: us}}, at the calibration
    shape (provenance.shape); sim/shape.py interpolates it on log(batch) and scales it to other
    shapes by the node's bytes and FLOPs. Nodes never measured (a published profile only) take
    the op's roofline fit `overhead + bytes / (bw * efficiency)`.
    variant_node_us: {variant_key: {node: {batch: us}}} for nodes that are a different kernel in
    another variant (the routed experts without the fused shared expert); it wins over node_us
    for a layer of that variant, since the same name is not the same work there.
    pair_measures: every node pair the pairwise benchmark (or `calibrate --for`) measured, in
    the variant `pair_variant`; `pair_excess` derives the overlap excess the engine uses whenever
    exactly those two run. sm_demand: {node: {batch: fraction}}, the share of the SMs / CUs a
    node keeps busy alone, fitted to the same pairs, for combinations never measured: concurrent
    kernels whose demands add up past 1 share the device in proportion; `default_sm_demand`
    covers nodes never paired. overlap_model_spread: how far that demand model's excess lands
    from a measured one it was not fitted to (leave-one-out, in units of the shorter kernel).
    calibration_noise: how far a fresh run of the calibration's serial layer lands, as a
    fraction of it (`check.run_noise`), per batch.
    """

    name: str
    streams: str  # "hip" (depth-first queue rule) or "cuda" (one lane per capture stream)
    provenance: Provenance
    hbm_gbs: Param
    launch_gap_us: Param  # per kernel of one stream inside a graph: idle after it (< 0: it runs shorter)
    fence_us: Param  # extra wait on a cross-stream edge (signal + wait)
    graph_entry_us: Param  # per replay: idle at the start of the graph
    ar_concurrency_factor: Param  # all-reduce duration multiplier (see ar_scope)
    multi_stream_entry_us: Param  # idle before each layer's first kernel in a graph of several lanes
    concurrency_slowdown: Param  # each extra concurrent kernel slows the others by this fraction
    calibration_noise: Param  # fraction of the layer a fresh run could land away
    ar_scope: str = "concurrent"  # "concurrent": while another lane runs; "graph": any multi-lane graph
    multi_stream_graph_entry_us: Param = UNMODELLED  # per replay: idle of a graph of several lanes
    multi_stream_launch_gap_us: Param = UNMODELLED  # launch gap in a graph of several lanes (unset: launch_gap_us)
    default_sm_demand: Param = UNMODELLED  # for nodes without a fitted sm_demand
    queue_wait_kernel_us: Param = UNMODELLED  # per kernel (not FP8 GEMMs) in a graph of several queues
    overlap_model_spread: Param = Param(NO_OVERLAP_DATA, "prior: no pair measured, an unmeasured overlap may "
                                        "cost anything from nothing to the shorter kernel's whole latency")
    hardware: str = ""  # models/hardware.py entry for the compute peaks of roofline floors
    hip_queues: int = 4  # stream ids a HIP graph spreads its branches over (DEBUG_HIP_FORCE_GRAPH_QUEUES)
    hip_source: str = ""  # where the HIP queue rule and count come from
    op_overhead_us: dict[str, Param] = field(default_factory=dict)
    op_efficiency: dict[str, Param] = field(default_factory=dict)
    node_us: dict[str, BatchTable] = field(default_factory=dict)
    node_kernels: dict[str, int] = field(default_factory=dict)  # kernels per node, as measured
    node_source: str = ""
    variant_node_us: dict[str, dict[str, BatchTable]] = field(default_factory=dict)
    variant_source: str = ""
    sm_demand: dict[str, BatchTable] = field(default_factory=dict)
    sm_source: str = ""
    pair_measures: tuple[PairMeasure, ...] = ()
    pair_variant: dict[str, bool] = field(default_factory=dict)
    pair_source: str = ""
    reference: dict = field(default_factory=dict)  # published numbers this profile reproduces
    origin: str = field(default="", compare=False)  # the file it was read from, for messages
    cache: dict = field(default_factory=dict, init=False, compare=False, repr=False)  # per layer shape

    def latency_table(self, name: str, variant: Variant | None = None) -> BatchTable | None:
        """The node's measured latencies: the variant's own where it has them, else the base."""
        own = self.variant_node_us.get(variant_key(variant), {}) if variant is not None else {}
        return own.get(name) or self.node_us.get(name)

    def lane_gap_us(self, multi_lane: bool, batch: int) -> float:
        """What each kernel of a lane costs beyond its node latency at `batch`; a graph with
        branches has its own. Below 0 where the node latencies (timed under the profiler)
        read longer than the kernels run in a replay timed with events."""
        return self.lane_gap(multi_lane).at(batch)

    def lane_gap(self, multi_lane: bool) -> Param:
        if multi_lane and self.multi_stream_launch_gap_us != UNMODELLED:
            return self.multi_stream_launch_gap_us
        return self.launch_gap_us

    @property
    def pair_excess(self) -> dict[str, BatchTable]:
        """"first|second" -> batch -> measured excess; below 0 (noise, or a pair that ran faster
        than its longer node alone) reads as 0: concurrency is never modelled as a speed-up."""
        out: dict[str, BatchTable] = {}
        for p in self.pair_measures:
            out.setdefault(p.key, {})[p.batch] = max(0.0, p.excess)
        return out

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

    @property
    def ceilings(self) -> Hardware:
        """Roofline ceilings for node floors: the profile's own copy bandwidth, the device's
        compute peaks (models/hardware.py)."""
        hw = HARDWARE.get(self.hardware) or HARDWARE.get(self.name)
        if hw is None:
            return Hardware(self.name, self.hbm_gbs.value, 1000.0, 2000.0, 0,
                            "profile copy bandwidth; compute peaks unknown (1 / 2 PFLOP/s assumed)")
        return replace(hw, hbm_gbs=self.hbm_gbs.value)

    def describe(self) -> list[tuple[str, str, str]]:
        """(parameter, value, source) rows, as `streamlab sim` prints them."""
        rows = []
        for key in PARAMS:
            p: Param = getattr(self, key)
            shown = ", ".join(f"{v:.3g} at b{b}" for b, v in p.by_batch.items()) if p.by_batch else f"{p.value:g}"
            if p.spread_by_batch:
                shown += " (+-" + ", ".join(f"{v:.2g}" for v in p.spread_by_batch.values()) + ")"
            elif p.spread:
                shown += f" (+-{p.spread:.2g})"
            rows.append((key, shown, p.source))
        if self.streams == "hip":
            rows.append(("hip_queues", f"{self.hip_queues} per graph", self.hip_source
                         or "default of DEBUG_HIP_FORCE_GRAPH_QUEUES; clr's depth-first walk (schedule/graph.py)"))
        rows.append(("node_us", f"{len(self.node_us)} nodes", self.node_source or "roofline fit"))
        if self.variant_node_us:
            n = sum(len(t) for t in self.variant_node_us.values())
            rows.append(("variant_node_us", f"{n} nodes in {len(self.variant_node_us)} variants",
                         self.variant_source))
        if self.pair_measures:
            rows.append(("pair_measures", f"{len(self.pair_excess)} node pairs", self.pair_source))
        if self.sm_demand:
            rows.append(("sm_demand", f"{len(self.sm_demand)} nodes", self.sm_source))
        return rows


PARAMS = ("hbm_gbs", "launch_gap_us", "multi_stream_launch_gap_us", "fence_us", "graph_entry_us",
          "ar_concurrency_factor", "multi_stream_entry_us", "multi_stream_graph_entry_us",
          "concurrency_slowdown", "queue_wait_kernel_us", "default_sm_demand", "calibration_noise",
          "overlap_model_spread")
