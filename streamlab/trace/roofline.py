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
from pathlib import Path

from streamlab.analysis import Summary
from streamlab.layer import Layer
from streamlab.models.hardware import HARDWARE, Hardware
from streamlab.results import NodeRate, Roofline
from streamlab.timeline import Timeline
from streamlab.trace.deps import SCENARIOS

__all__ = ["hardware_of", "layer_of", "roofline"]

_DEVICES = (("h100", re.compile(r"H100")), ("h200", re.compile(r"H200")),
            ("mi355x", re.compile(r"MI355")))
_BATCH = re.compile(r"-b(\d+)(?:[-.]|$)")


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
        return Roofline(why, hardware, ())
    rows = []
    for node in layer.nodes:
        stats = summary.nodes.get(node.name)
        if stats is None or node.is_collective or (node.bytes == 0 and node.flops == 0):
            continue
        floor = hardware.floor_us(node)
        mem = node.bytes / (hardware.hbm_gbs * 1e3)
        rows.append(NodeRate(node.name, stats.median, node.bytes, node.flops, floor,
                             "memory" if mem >= floor else "compute", hardware.hbm_gbs,
                             hardware.peak_tflops(node)))
    return Roofline(f"{note}; ceilings {hardware.name}: {hardware.source}", hardware, tuple(rows))
