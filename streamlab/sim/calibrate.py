"""Fit a device profile from measured runs (result JSONs of `streamlab run` on a GPU, or a bench
matrix.json) and, optionally, the pairwise micro-benchmark (the cross-stream stage of
`streamlab calibrate --measure`, which runs this fit on what it measured: streamlab/calibration/).

The dual-stream layouts stay a held-out test of the model, so only this evidence is used:
- the serial layout: node latencies (in-graph means per layer, per batch) and the launch gap
  per batch (what the serial layer's latency leaves after its kernels, per kernel);
- a node that is a different kernel in another variant (the routed experts without the fused
  shared expert, the shared expert itself): its in-graph latency in that variant's single-stream
  layout (scenarios/serial_moe_unfused.yaml) where measured, else that variant's isolated
  latency (each node alone in its own graph, from any run) scaled to the in-graph level the
  serial layout shows;
- pairwise.json (streamlab.sim.pairwise): fence cost, the idle of a graph with branches, the
  overlap excess of every measured node pair (with SM demands fitted to the pairs for the
  combinations never measured), and the all-reduce's slowdown beside another kernel.
Without pairwise.json the cross-stream costs take the values given, labelled as not calibrated,
with wide stated priors as their spreads (the prediction interval widens by them). The profile
records the calibration's run noise per batch (`check.run_noise` of the serial runs) and its
provenance (device, versions, shape, batches, command, the kernels' hash).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field, replace
from pathlib import Path

from streamlab.analysis import percentiles
from streamlab.errors import EXIT_BAD_INPUT, Failure
from streamlab.layer import Layer, Variant, build_layer
from streamlab.models import MODELS, RankDims
from streamlab.models.hardware import HARDWARE
from streamlab.results import NodeTime, RunResult, load_runs
from streamlab.schedule.graph import HIP_QUEUES
from streamlab.sim.pairwise import PairwiseFit, fit_pairwise, load_pairwise, pair_note
from streamlab.sim.profile import (
    BatchTable,
    DeviceProfile,
    Param,
    per_batch,
    variant_key,
)
from streamlab.sim.provenance import MEASURED, CalibrationShape, Provenance
from streamlab.sim.provenance import kernel_hash as installed_kernel_hash


def _load(paths: list[Path]) -> list[RunResult]:
    runs = [r for path in paths for r in load_runs(path) if r.measured]
    if not runs:
        raise Failure("no measured runs in " + ", ".join(map(str, paths)), EXIT_BAD_INPUT)
    return runs


def layer_mean_us(stat: NodeTime) -> float:
    """A node's mean time per layer: as measured where the result has it, else estimated from its
    in-graph p20, median and p80 (equal weights: the midpoint rule over thirds of its quantile
    function). A replay timed with events averages its layers, and a node can
    differ by layer: at H100 batch 64 the routed experts of one layer in four (its routing) take
    320 us against ~265 us, so their median reads ~10 us under their mean (p80 310 us) in the
    fused variant, not in the unfused one (p80 273 us). In the profiled traces of
    traces/h100-2026-11-21/ the estimate is within 3.1 us of every node's mean over its 20
    layers, the median up to 9.8 us off."""
    if stat.mean is not None:
        return stat.mean
    return (stat.p20 + stat.median + stat.p80) / 3


@dataclass
class SerialFit:
    """What the serial layout's runs say: node latencies, kernels per node, launch gap, HBM."""

    device: str
    variant: dict
    node_us: dict[str, BatchTable] = field(default_factory=dict)
    isolated_us: dict[str, BatchTable] = field(default_factory=dict)
    kernels: dict[str, int] = field(default_factory=dict)
    copy_gbs: list[float] = field(default_factory=list)
    layer_us: BatchTable = field(default_factory=dict)  # the serial layer's latency
    inside_us: dict[int, tuple[float, int]] = field(default_factory=dict)  # batch -> (node time sum, kernels)
    noise: BatchTable = field(default_factory=dict)  # batch -> check.run_noise of the serial run

    @property
    def batches(self) -> list[int]:
        return sorted({b for t in self.node_us.values() for b in t})

    @property
    def gaps(self) -> BatchTable:
        """Per kernel: (layer latency - node times) / kernels."""
        return {b: (self.layer_us[b] - inside) / k for b, (inside, k) in self.inside_us.items()}


def fit_serial(runs: list[RunResult]) -> SerialFit:
    fit = SerialFit(runs[0].device, vars(runs[0].variant))
    for r in runs:
        batch = r.batch
        inside = 0.0
        for node, n in r.nodes.items():
            if n.in_graph_us is None:
                raise Failure(f"{r.scenario} batch {batch}: node {node} has no in-graph latency (a simulated run, "
                              "or a file cut short); calibrate fits measured runs", EXIT_BAD_INPUT)
            t = layer_mean_us(n.in_graph_us)
            fit.node_us.setdefault(node, {})[batch] = t
            fit.isolated_us.setdefault(node, {})[batch] = n.isolated_us
            fit.kernels[node] = n.kernels
            inside += t
        fit.inside_us[batch] = (inside, r.budget.kernels)
        fit.layer_us[batch] = r.latency.median
        fit.noise[batch] = r.latency.noise
        fit.copy_gbs.append(r.ceilings.copy_gbs)
    return fit


def _layer_of(run: RunResult, variant: dict) -> Layer | None:
    """The run's layer built for `variant`; None when the run does not say its model."""
    model = MODELS.get(run.model)
    if model is None:
        return None
    return build_layer(RankDims(model, run.shape), Variant(**variant))


def in_graph_scale(serial: SerialFit, batch: int, node: str) -> float:
    """In-graph / isolated latency of the serial layout: of the same node where serial has it,
    else the median over serial's nodes at that batch. Isolated runs are timed with L2 flushed in
    a graph of one node, so they read higher than the same kernel between its neighbours."""
    def ratio(name: str) -> float | None:
        g, i = serial.node_us.get(name, {}).get(batch), serial.isolated_us.get(name, {}).get(batch)
        return g / i if g and i else None
    own = ratio(node)
    if own is not None:
        return own
    ratios = [r for r in map(ratio, serial.node_us) if r is not None]
    return percentiles(ratios)[1] if ratios else 1.0


def fit_variants(runs: list[RunResult], serial: SerialFit, variant_serials: tuple[str, ...] = ()
                 ) -> tuple[dict[str, dict[str, BatchTable]], dict[str, int]]:
    """Latencies of nodes that another variant runs as a different kernel than serial does.

    A node counts as the same kernel when its definition (op, tensors, attributes, work) is equal
    in both variants. Its latency is its in-graph median in that variant's own single-stream
    layout (a scenario named in `variant_serials`) where one was measured at the batch; otherwise
    that variant's isolated measurement (the median over its runs at the batch) times
    `in_graph_scale`, which misses by up to ~8% (the routed experts without the shared expert,
    H100 batch 16)."""
    samples: dict[str, dict[str, dict[int, list[float]]]] = {}
    direct: dict[str, dict[str, dict[int, float]]] = {}
    kernels: dict[str, int] = {}
    for r in runs:
        variant = vars(r.variant)
        if variant == serial.variant:
            continue
        layer, base = _layer_of(r, variant), _layer_of(r, serial.variant)
        if layer is None or base is None:
            continue
        batch, key = r.batch, variant_key(r.variant)
        for node in layer.nodes:
            if base.by_name.get(node.name) == node or node.name not in r.nodes:
                continue
            n = r.nodes[node.name]
            if r.scenario in variant_serials and n.in_graph_us:
                direct.setdefault(key, {}).setdefault(node.name, {})[batch] = layer_mean_us(n.in_graph_us)
            est = n.isolated_us * in_graph_scale(serial, batch, node.name)
            samples.setdefault(key, {}).setdefault(node.name, {}).setdefault(batch, []).append(est)
            kernels.setdefault(node.name, n.kernels)
    tables = {key: {node: {b: direct.get(key, {}).get(node, {}).get(b, percentiles(v)[1])
                           for b, v in sorted(per.items())}
                    for node, per in nodes.items()} for key, nodes in samples.items()}
    return tables, kernels


VARIANT_SERIALS = ("serial_moe_unfused",)  # in scenarios/ (calibrate --measure derives them from the layouts)


def calibrate(paths: list[Path], name: str, *, serial: str = "serial",
              variant_serials: tuple[str, ...] = VARIANT_SERIALS, fence_us: float = 1.0,
              concurrency_slowdown: float = 0.1, pairwise: Path | None = None, pairwise_state: str | None = None, command: str = "", date: str | None = None,
              driver: str = "", kernel_hash: str | None = None, hip_queues: int = HIP_QUEUES) -> DeviceProfile:
    """A profile from measured runs (and the pairwise benchmark). `serial`: the single-stream
    layout of the base variant; `variant_serials`: those of other variants (`fit_variants`).
    `kernel_hash`: of the kernels the runs measured (default: the installed ones, right for a
    calibration run where it was measured); `command`, `date`, `driver` go to its provenance;
    `hip_queues`: the queues a HIP graph spreads its streams over where it was measured."""
    runs = _load(paths)
    serial_runs = [r for r in runs if r.scenario == serial]
    if not serial_runs:
        raise Failure(f"no measured run of the {serial!r} layout to calibrate from", EXIT_BAD_INPUT)
    fit = fit_serial(serial_runs)
    variants, variant_kernels = fit_variants(runs, fit, variant_serials)
    direct = sorted({r.scenario for r in runs if r.scenario in variant_serials})
    device = fit.device
    src = f"measured: {serial} layout on {device}, batches {fit.batches}"
    first = serial_runs[0]
    shape = {k: v for k, v in vars(first.shape).items() if k != "batch"}
    prov = Provenance(
        basis=MEASURED, device=device, shape=CalibrationShape(model=first.model, **shape),
        batches=tuple(fit.batches), date=date or datetime.date.today().isoformat(),
        command=command or "streamlab calibrate " + " ".join(map(str, paths)), driver=driver,
        versions={str(k): str(v) for k, v in first.versions.items()},
        kernel_hash=kernel_hash or installed_kernel_hash())
    gap = per_batch(fit.gaps, f"{src}: (layer latency - node times) / kernels, per batch; "
                    "below 0 the profiled node times read longer than the kernels run")
    prof = DeviceProfile(
        name=name, streams="hip" if "AMD" in device or "MI" in device else "cuda", provenance=prov,
        hip_queues=hip_queues,
        hardware=next((h for h in HARDWARE if h.upper() in device.upper()), ""),
        hbm_gbs=Param(percentiles(fit.copy_gbs)[1], f"measured: device-to-device copy on {device}"),
        launch_gap_us=gap,
        multi_stream_launch_gap_us=replace(gap, source=f"prior: not calibrated (no pairwise data): the "
                                           f"single-stream launch gap, +-{BRANCHED_GAP_PRIOR_US} us per kernel: "
                                           "graphs with branches ran their kernels 0.3 us further apart on H100 "
                                           "(bench/results/h100-2026-11-22/pairwise.json)",
                                           spread=BRANCHED_GAP_PRIOR_US),
        fence_us=Param(fence_us, "prior: not calibrated, a serial run has no cross-stream edge",
                       spread=fence_us),
        graph_entry_us=Param(0.0, "included in the launch gap"),
        multi_stream_graph_entry_us=Param(0.0, f"prior: not calibrated, +-{GRAPH_ENTRY_PRIOR_US} us per replay: "
                                          "an H100 graph with branches stalled ~9 us after its first kernel "
                                          "(traces/h100-2026-11-22)", spread=GRAPH_ENTRY_PRIOR_US),
        ar_concurrency_factor=Param(1.0, "not calibrated: one GPU, the all-reduce is emulated by a spin kernel"),
        multi_stream_entry_us=Param(0.0, "not calibrated"),
        concurrency_slowdown=Param(concurrency_slowdown, "not calibrated: a serial run has no concurrency"),
        calibration_noise=per_batch(fit.noise, f"measured: {serial} layout on {device}: the larger of the "
                                    "repeat spread and half the drift (streamlab.check.run_noise), per batch"),
        node_us=fit.node_us, node_kernels={**variant_kernels, **fit.kernels},
        node_source=f"{src}: mean per layer of each node's in-graph time (`layer_mean_us`)",
        variant_node_us=variants,
        variant_source=(f"measured on {device}: in-graph mean per layer in that variant's single-stream "
                        f"layout ({', '.join(direct)}) where measured, else " if direct else
                        f"measured on {device}: ") + ("isolated latency in that variant's runs x the "
                        "serial layout's in-graph / isolated ratio (of the node, else the median)")
        if variants else "")
    if pairwise is not None:
        pw = load_pairwise(pairwise)
        pf = fit_pairwise(pw, prof, pairwise_state)
        prof = apply_pairwise(prof, pf, branched_gap(fit, pw.layers, pf.state, pf.source), pw.variant)
    return prof


BRANCHED_GAP_PRIOR_US = 0.5
GRAPH_ENTRY_PRIOR_US = 9.0


def branched_gap(fit: SerialFit, serial_us: dict[str, dict[int, float]], state: str, source: str) -> Param | None:
    """The launch gap once graphs with branches run: the serial layout's own launch gap at each
    batch plus how much further apart its kernels sit after graphs with branches ran in the
    process (the cross-stream stage times the serial layer so, in `state`) than in a fresh one (the
    matrix), per kernel, median over batches. On H100 a process's first graph runs its kernels
    ~0.1 us apart, and any graph once branched graphs have run ~0.4 us apart, whatever the batch;
    a graph with branches always sees the latter (bench/results/h100-2026-11-21/first_run.txt).
    The pairwise run's two process states disagree by up to 0.16 us per kernel at one batch
    (batch 64: 598 vs 603 us per layer), as much as any trend over batches, so the difference is
    one number. Its spread at a batch: how far that batch's own evidence, in every state, lies
    from the number used."""
    def extra(per: dict[int, float]) -> dict[int, float]:
        return {b: (per[b] - fit.layer_us[b]) / k for b, (_, k) in fit.inside_us.items() if b in per}
    used = extra(serial_us.get(state, {}))
    if not used:
        return None
    more = percentiles(list(used.values()))[1]
    evidence = [extra(per) for per in serial_us.values()]
    spread = {b: max(abs(e[b] - more) for e in evidence if b in e) for b in used}
    return per_batch({b: g + more for b, g in fit.gaps.items()},
                     f"launch gap + {more:.3f} us: {source}: serial layer timed after graphs with branches - "
                     "the same in a fresh process (matrix), per kernel, median over batches; spread: the "
                     "farthest process state at each batch", spread)


def apply_pairwise(prof: DeviceProfile, pf: PairwiseFit, gap_branched: Param | None,
                   variant: dict[str, bool]) -> DeviceProfile:
    """The profile with its uncalibrated cross-stream parameters replaced by the pairwise benchmark's."""
    gap = gap_branched or prof.launch_gap_us
    default, spread = pf.overlap.params()
    fence = pf.fence_extra_us
    return replace(
        prof, multi_stream_launch_gap_us=gap_branched or prof.multi_stream_launch_gap_us,
        fence_us=per_batch({b: max(0.0, g) + fence.value for b, g in gap.by_batch.items()},
                           f"multi-stream launch gap (its idle part) + {fence.value:.3f} us: {fence.source}; "
                           "spread: the extra's between consecutive unit counts",
                           {b: fence.spread for b in gap.by_batch}),
        multi_stream_graph_entry_us=pf.graph_entry_us,
        concurrency_slowdown=Param(0.0, "superseded by pair_measures and sm_demand (pairwise)"),
        pair_measures=tuple(pf.pairs), pair_variant=dict(variant), pair_source=pair_note(pf.source, pf.pairs),
        ar_concurrency_factor=pf.ar_factor, sm_demand=pf.overlap.sm_demand, sm_source=pf.overlap.note,
        default_sm_demand=default, overlap_model_spread=spread)
