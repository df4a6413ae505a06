"""What `streamlab calibrate --measure` runs, derived from the layouts a profile must cover, never
from a list in code:

- the variants: those the layouts run (every variant the profile will be asked to simulate);
- the serial stages: for each variant, the single-stream layout among the layouts (one kernel
  at a time: node latencies, the launch gap, each node alone), at every batch; the base is the
  one of the variant most layouts run, the others enter as that variant's own node latencies;
- the pairs: the ordered node pairs the layouts' schedules make run side by side on the profile
  fitted so far, which it has not measured (`sim.predict.missing_pairs`), at every batch; they run
  in one variant (a profile keeps one `pair_variant`): the profile's own once it has pairs, else
  the first variant whose layer has every node of them.
Each stage comes with an estimate of its seconds, for the time left the progress display shows.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from streamlab.calibration.pairbench import FENCE_UNITS, PairAt, PairProtocol
from streamlab.errors import EXIT_BAD_INPUT, Failure
from streamlab.layer import Variant
from streamlab.scenario import Scenario, load
from streamlab.sim.predict import missing_pairs
from streamlab.sim.profile import DeviceProfile, variant_key
from streamlab.sim.profile_file import check_profile_for
from streamlab.sim.provenance import CalibrationShape

__all__ = [
    "FIRST_RUN_S",
    "RUN_S",
    "Layouts",
    "SerialStage",
    "derive_pairs",
    "estimate_pairs_s",
    "layouts",
    "load_layouts",
    "pair_variant",
    "serial_stages",
    "single_stream",
]

# Seconds, for the time left (the display rescales them by how the finished stages compared):
RUN_S = 18.0  # a measured run in a fresh process (H100: 14-24 s; bench/results/h100-2026-11-22/matrix.json)
FIRST_RUN_S = 20.0  # more for the first run at a batch: it compiles the Triton kernels (H100: 39 s)
PAIRS_PROCESS_S = 8.0  # a pairs stage's process: start, import torch
PAIRS_BATCH_S = 3.0  # a layer's buffers and one eager run, per batch
GRAPH_REPLAY_US = 400.0  # a unit graph's replay, rough (8 units of decode kernels)
PAIRS_GUESS = 12  # pairs per batch before the first fit says (the shipped layouts: 10-13 at 4, 64)


def single_stream(scen: Scenario) -> bool:
    """Every kernel on one stream: a layout that measures each node without any overlap."""
    return len({launch.stream for launch in scen.program.launches}) == 1


@dataclass(frozen=True)
class Layouts:
    """The layouts a profile must cover and the single-stream ones it is calibrated from."""

    all: tuple[Scenario, ...]
    base: Scenario  # the single-stream layout of the variant most layouts run
    variant_serials: tuple[Scenario, ...]  # those of the other variants
    shape: CalibrationShape

    @property
    def serials(self) -> tuple[Scenario, ...]:
        return (self.base, *self.variant_serials)

    def of_variant(self, variant: Variant) -> Scenario | None:
        """A layout of `variant` (its single-stream one where there is one)."""
        return next((s for s in (*self.serials, *self.all) if s.variant == variant), None)


def load_layouts(folder: Path) -> list[Scenario]:
    """Every scenario in `folder` (*.yaml, by name)."""
    paths = sorted(Path(folder).glob("*.yaml"))
    if not paths:
        raise Failure(f"{folder}: no scenario YAML files; --scenarios names the folder of the layouts the "
                      "profile must cover (the repository's scenarios/)", EXIT_BAD_INPUT)
    return [load(p) for p in paths]


def layouts(scens: list[Scenario]) -> Layouts:
    """The layouts, their calibration shape (one for all), and a single-stream layout per variant."""
    first = scens[0]
    shape = _shape(first)
    for s in scens[1:]:
        if _shape(s) != shape:
            raise Failure(f"{s.path}: shape {_shape(s)} differs from {first.path}'s {shape}: a profile is "
                          "calibrated at one shape (batches aside); give layouts of one model and shape",
                          EXIT_BAD_INPUT)
    variants = Counter(variant_key(s.variant) for s in scens)
    serial: dict[str, Scenario] = {}
    for s in scens:
        if single_stream(s):
            serial.setdefault(variant_key(s.variant), s)
    lacking = [k for k in variants if k not in serial]
    if lacking:
        users = [s.name for s in scens if variant_key(s.variant) == lacking[0]]
        raise Failure(f"no single-stream layout of variant {lacking[0]} (run by {', '.join(users)}) among the "
                      "layouts: its node latencies are measured one kernel at a time; add a scenario with every "
                      "node on one stream in that variant (as scenarios/serial_moe_unfused.yaml is)", EXIT_BAD_INPUT)
    base_key = max(variants, key=lambda k: (variants[k], -list(variants).index(k)))
    return Layouts(tuple(scens), serial[base_key], tuple(s for k, s in serial.items() if k != base_key), shape)


def _shape(scen: Scenario) -> CalibrationShape:
    s = scen.shape
    return CalibrationShape(scen.model.name, s.context, s.tp, s.page_size, s.kv_cache)


def at_shape(scen: Scenario, shape: CalibrationShape, batch: int) -> Scenario:
    """The layout at a profile's calibration shape and `batch` (its model stays its own)."""
    return scen.override(batch=batch, context=shape.context, tp=shape.tp, page_size=shape.page_size,
                         kv_cache=shape.kv_cache)


@dataclass(frozen=True)
class SerialStage:
    """One single-stream layout measured at one batch, in a process of its own."""

    layout: str
    path: str
    batch: int
    estimate_s: float

    @property
    def name(self) -> str:
        return f"serial {self.layout} b{self.batch}"

    @property
    def folder(self) -> str:
        return f"runs/{self.layout}-b{self.batch}"


def serial_stages(lay: Layouts, batches: Iterable[int]) -> list[SerialStage]:
    """Every single-stream layout at every batch, batch by batch (the first run at a batch pays
    for compiling its kernels)."""
    out = []
    for b in batches:
        for i, s in enumerate(lay.serials):
            out.append(SerialStage(s.name, s.path, b, RUN_S + (FIRST_RUN_S if i == 0 else 0.0)))
    return out


def derive_pairs(scens: Iterable[Scenario], profile: DeviceProfile, batches: Iterable[int]) -> tuple[PairAt, ...]:
    """The ordered pairs the layouts create at each batch on `profile` that it has not measured
    there (`sim.predict.missing_pairs`: those beside a third kernel left out), sorted. A layout
    the profile cannot simulate (another model, a variant it lacks) is one Failure."""
    shape = profile.provenance.shape
    found = set()
    for scen in scens:
        for b in batches:
            s = at_shape(scen, shape, b)
            check_profile_for(profile, s.layer)
            found |= {PairAt(b, first, second) for first, second in
                      missing_pairs(s.layer, s.program, profile, s.measure.layers)}
    return tuple(sorted(found))


def pair_variant(profile: DeviceProfile, pairs: Iterable[PairAt], scens: Iterable[Scenario]) -> Variant:
    """The variant the pairs run in: the profile's `pair_variant` once it has pairs (add_pairs
    keeps one), else the first of the layouts' variants whose layer has every node of them."""
    if profile.pair_measures:
        return Variant(**profile.pair_variant)
    nodes = {n for p in pairs for n in (p.first, p.second)}
    for s in scens:
        if nodes <= set(s.layer.names):
            return s.variant
    raise Failure("no layout's variant has every node of the pairs " + ", ".join(sorted(nodes)), EXIT_BAD_INPUT)


def estimate_pairs_s(pairs: int, batches: int, protocol: PairProtocol, *, cross_stream: bool) -> float:
    """A pairs stage: its process, a layer per batch (two with the serial layer), and every graph
    timed (the empty harness, both nodes alone and the pair: about three per pair)."""
    graphs = 1 + 3 * pairs + (2 * len(FENCE_UNITS) + 2 * batches if cross_stream else 0)
    per_graph = protocol.rounds * (protocol.replays + protocol.lead_in) * GRAPH_REPLAY_US * 1e-6
    return (PAIRS_PROCESS_S + PAIRS_BATCH_S * batches * (2 if cross_stream else 1) + protocol.settle_s
            + graphs * per_graph)
