"""Fit a device profile from measured runs (result JSONs of `streamlab run` on a GPU).

Only single-stream evidence is used, so dual-stream layouts stay a held-out test of the model:
node latencies are the serial layout's in-graph medians per batch; the launch gap is what the
serial layer's latency leaves after its kernels, per kernel. Cross-stream costs (fence, sharing)
cannot be seen in a serial run: they take the values given, labelled as not calibrated.
"""

from __future__ import annotations

import json
from pathlib import Path

from streamlab.analysis import percentiles
from streamlab.errors import EXIT_BAD_INPUT, Failure
from streamlab.sim.profile import Param, Profile


def _load(paths: list[Path]) -> list[dict]:
    runs = []
    for path in paths:
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise Failure(f"{path}: cannot read: {e}", EXIT_BAD_INPUT) from None
        for r in doc if isinstance(doc, list) else doc.get("runs", [doc]):
            if isinstance(r, dict) and "measured" in r:
                runs.append(r)
    if not runs:
        raise Failure("no measured runs in " + ", ".join(map(str, paths)), EXIT_BAD_INPUT)
    return runs


def calibrate(paths: list[Path], name: str, serial: str = "serial", fence_us: float = 1.0,
              concurrency_slowdown: float = 0.1) -> Profile:
    runs = [r for r in _load(paths) if r["scenario"] == serial]
    if not runs:
        raise Failure(f"no measured run of the {serial!r} layout to calibrate from", EXIT_BAD_INPUT)
    device = runs[0]["device"]
    node_us: dict[str, dict[int, float]] = {}
    kernels: dict[str, int] = {}
    gaps, copy = [], []
    for r in runs:
        m, batch = r["measured"], r["shape"]["batch"]
        inside = 0.0
        for node, n in m["nodes"].items():
            t = n["in_graph_us"]["median"]
            node_us.setdefault(node, {})[batch] = t
            kernels[node] = n["kernels"]
            inside += t
        gaps.append((m["per_layer_us"]["median"] - inside) / m["kernels_per_layer"])
        copy.append(m["ceilings"]["copy_gbs"])
    # a node only in another variant (the unfused shared expert) keeps its isolated latency
    for r in _load(paths):
        for node, n in r["measured"]["nodes"].items():
            node_us.setdefault(node, {}).setdefault(r["shape"]["batch"], n["isolated_us"])
            kernels.setdefault(node, n["kernels"])
    batches = sorted({r["shape"]["batch"] for r in runs})
    src = f"measured: {serial} layout on {device}, batches {batches}"
    return Profile(
        name=name, streams="hip" if "AMD" in device or "MI" in device else "cuda",
        hbm_gbs=Param(percentiles(copy)[1], f"measured: device-to-device copy on {device}"),
        launch_gap_us=Param(max(0.0, percentiles(gaps)[1]), f"{src}: (layer latency - node times) / kernels"),
        fence_us=Param(fence_us, "not calibrated: a serial run has no cross-stream edge"),
        graph_entry_us=Param(0.0, "included in the launch gap"),
        ar_concurrency_factor=Param(1.0, "one GPU: the all-reduce is emulated by a spin kernel"),
        multi_stream_entry_us=Param(0.0, "not calibrated"),
        concurrency_slowdown=Param(concurrency_slowdown, "not calibrated: a serial run has no concurrency"),
        node_us=node_us, node_kernels=kernels, node_source=f"{src}: in-graph median per node (isolated for nodes serial lacks)")
