"""Roofline per kernel: what a node's kernels achieved against the device's ceilings.

Only where the work is known. A streamlab run's kernels carry their DAG node, and the layer's
nodes carry the bytes and FLOPs of their work at the run's shape: the scenario named in the
trace's source, at the batch in the trace's file name (`<scenario>-b<batch>`, as `streamlab run`
names it), other shape values as the scenario sets them. Kernels of other traces (a GEMM or an
attention kernel recognised by name) carry no shapes in Kineto, so they get no row and the
result says "no shape". Ceilings: models.hardware (matched on the trace's device name), and the
one floor function there (`Hardware.floor_us`).

Per node: in-graph time (median over its occurrences of the sum of its kernels), achieved
bandwidth (bytes / time) and FLOP rate (FLOPs / time), each as a share of the ceiling, and the
floor / time: 1.0 means at the roofline.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from streamlab.analysis import Summary
from streamlab.layer import Layer
from streamlab.models.hardware import HARDWARE, Hardware
from streamlab.timeline import Timeline
from streamlab.trace.deps import SCENARIOS

_DEVICES = (("h100", re.compile(r"H100")), ("h200", re.compile(r"H200")),
            ("mi355x", re.compile(r"MI355")))
_BATCH = re.compile(r"-b(\d+)(?:[-.]|$)")


@dataclass(frozen=True)
class NodeRate:
    node: str
    time_us: float  # in-graph median per occurrence
    bytes: float
    flops: float
    floor_us: float
    bound: str  # memory | compute: which ceiling sets the floor

    @property
    def gbs(self) -> float:
        return self.bytes / (self.time_us * 1e3) if self.time_us > 0 else 0.0

    @property
    def tflops(self) -> float:
        return self.flops / (self.time_us * 1e6) if self.time_us > 0 else 0.0

    @property
    def of_roofline(self) -> float:
        """floor / time: 1.0 at the roofline."""
        return self.floor_us / self.time_us if self.time_us > 0 else 0.0

    def to_json(self, hw: Hardware, peak: float) -> dict:
        return {"node": self.node, "time_us": self.time_us, "bytes": self.bytes,
                "flops": self.flops, "achieved_gbs": self.gbs, "of_bandwidth": self.gbs / hw.hbm_gbs,
                "achieved_tflops": self.tflops, "of_peak_flops": self.tflops / peak,
                "floor_us": self.floor_us, "of_roofline": self.of_roofline, "bound": self.bound}


@dataclass(frozen=True)
class Roofline:
    hardware: Hardware | None
    rows: tuple[NodeRate, ...]
    peaks: tuple[float, ...]  # per row: the FLOP ceiling that applies (TFLOP/s)
    note: str  # where the shapes and ceilings came from, or why there are none

    def to_json(self) -> dict:
        return {"note": self.note,
                "hardware": None if self.hardware is None else {
                    "name": self.hardware.name, "hbm_gbs": self.hardware.hbm_gbs,
                    "bf16_tflops": self.hardware.bf16_tflops, "fp8_tflops": self.hardware.fp8_tflops,
                    "source": self.hardware.source},
                "nodes": [r.to_json(self.hardware, p) for r, p in zip(self.rows, self.peaks)]}


def hardware_of(device: str) -> Hardware | None:
    for name, rx in _DEVICES:
        if rx.search(device):
            return HARDWARE[name]
    return None


def layer_of(timeline: Timeline, path: str | Path, scenarios: Path = SCENARIOS) -> tuple[Layer | None, str]:
    """The layer (nodes with bytes and FLOPs) a streamlab trace ran, or None and why not."""
    from streamlab.errors import Failure
    from streamlab.scenario import load

    name = timeline.source.detail.get("scenario")
    if not name:
        return None, "no shape: the trace names no scenario (kernels of other tools carry no shapes)"
    m = _BATCH.search(Path(path).name)
    if m is None:
        return None, "no shape: the file name does not say the batch (<scenario>-b<batch>)"
    file = scenarios / f"{name}.yaml"
    try:
        scen = load(file).override(batch=int(m.group(1)))
    except Failure as e:
        return None, f"no shape: {e}"
    shape = scen.shape
    return scen.layer, (f"{file.name} at batch {shape.batch}, context {shape.context}, tp {shape.tp}"
                        " (batch from the file name)")


def roofline(summary: Summary, layer: Layer | None, hardware: Hardware | None, note: str) -> Roofline:
    """A row per node of `layer` with kernels in the summary (collectives excluded: their time
    is the network's); none when the layer or the ceilings are unknown."""
    if layer is None or hardware is None:
        why = note if layer is None else f"no ceilings for device {summary.source.device!r}"
        return Roofline(hardware, (), (), why)
    rows, peaks = [], []
    for node in layer.nodes:
        stats = summary.nodes.get(node.name)
        if stats is None or node.is_collective or (node.bytes == 0 and node.flops == 0):
            continue
        mem = node.bytes / (hardware.hbm_gbs * 1e3)
        rows.append(NodeRate(node.name, stats.median, node.bytes, node.flops,
                             hardware.floor_us(node), "memory" if mem >= hardware.floor_us(node)
                             else "compute"))
        peaks.append(hardware.peak_tflops(node))
    return Roofline(hardware, tuple(rows), tuple(peaks),
                    f"{note}; ceilings {hardware.name}: {hardware.source}")
