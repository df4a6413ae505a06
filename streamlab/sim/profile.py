"""Device profiles for the simulator: what one kernel costs alone, and what sharing costs.

A profile is YAML. Every parameter carries the source it came from (`measured ...`,
`published ...`, `estimate ...`), and `streamlab sim` prints them with the result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from streamlab.errors import EXIT_BAD_INPUT, Failure
from streamlab.layer import Node


@dataclass(frozen=True)
class Param:
    value: float
    source: str


@dataclass
class Profile:
    """Per-device costs.

    node_us: isolated latency of a node at a batch size: {node: {batch: us}}; between measured
    batches latency is interpolated on log(batch), outside them, and for nodes never measured,
    the op's roofline fit `overhead + bytes / (bw * efficiency)` is used.
    """

    name: str
    streams: str  # "hip" (depth-first queue rule) or "cuda" (one lane per capture stream)
    hbm_gbs: Param
    launch_gap_us: Param  # idle time between back-to-back kernels of one stream inside a graph
    fence_us: Param  # extra wait on a cross-stream edge (signal + wait)
    graph_entry_us: Param  # per replay: idle at the start of the graph
    ar_concurrency_factor: Param  # all-reduce duration multiplier (see ar_scope)
    multi_stream_entry_us: Param  # idle before each layer's first kernel in a graph of several lanes
    concurrency_slowdown: Param  # each extra concurrent kernel slows the others by this fraction
    ar_scope: str = "concurrent"  # "concurrent": while another lane runs; "graph": any multi-lane graph
    hip_queues: int = 4
    op_overhead_us: dict[str, Param] = field(default_factory=dict)
    op_efficiency: dict[str, Param] = field(default_factory=dict)
    node_us: dict[str, dict[int, float]] = field(default_factory=dict)
    node_kernels: dict[str, int] = field(default_factory=dict)  # kernels per node, as measured
    node_source: str = ""
    reference: dict = field(default_factory=dict)  # published numbers this profile reproduces

    def isolated_us(self, node: Node, batch: int, fit_at=None) -> float:
        """Measured latency at `batch` (log-interpolated between measured batches); outside
        them, the nearest measurement scaled by the roofline fit (`fit_at(b)` gives the fit of
        this node at batch b); never measured: the fit itself."""
        fit = self.fit_us(node)
        table = self.node_us.get(node.name)
        if not table:
            return fit
        pts = sorted(table.items())
        if batch <= pts[0][0] or batch >= pts[-1][0]:
            b, t = pts[0] if batch <= pts[0][0] else pts[-1]
            return t * fit / fit_at(b) if fit_at is not None and b != batch else t
        for (b0, t0), (b1, t1) in zip(pts, pts[1:]):
            if b0 <= batch <= b1:
                w = (math.log(batch) - math.log(b0)) / (math.log(b1) - math.log(b0))
                return t0 + w * (t1 - t0)
        return pts[-1][1]

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
        for key in ("hbm_gbs", "launch_gap_us", "fence_us", "graph_entry_us",
                    "ar_concurrency_factor", "multi_stream_entry_us", "concurrency_slowdown"):
            p: Param = getattr(self, key)
            rows.append((key, f"{p.value:g}", p.source))
        rows.append(("node_us", f"{len(self.node_us)} nodes", self.node_source or "roofline fit"))
        return rows


def _param(raw, key: str, path: str) -> Param:
    v = raw.get(key)
    if not isinstance(v, dict) or "value" not in v or "source" not in v:
        raise Failure(f"{path}: {key} needs {{value: ..., source: ...}}", EXIT_BAD_INPUT)
    return Param(float(v["value"]), str(v["source"]))


def load_profile(name_or_path: str) -> Profile:
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
    return Profile(
        name=str(raw.get("name", path.stem)), streams=str(raw.get("streams", "cuda")),
        hbm_gbs=_param(raw, "hbm_gbs", p), launch_gap_us=_param(raw, "launch_gap_us", p),
        fence_us=_param(raw, "fence_us", p), graph_entry_us=_param(raw, "graph_entry_us", p),
        ar_concurrency_factor=_param(raw, "ar_concurrency_factor", p),
        multi_stream_entry_us=_param(raw, "multi_stream_entry_us", p),
        concurrency_slowdown=_param(raw, "concurrency_slowdown", p),
        ar_scope=str(raw.get("ar_scope", "concurrent")), hip_queues=int(raw.get("hip_queues", 4)),
        op_overhead_us={k: Param(float(v["value"]), v["source"]) for k, v in raw.get("op_overhead_us", {}).items()},
        op_efficiency={k: Param(float(v["value"]), v["source"]) for k, v in raw.get("op_efficiency", {}).items()},
        node_us={n: {int(b): float(t) for b, t in bs.items()} for n, bs in raw.get("node_us", {}).items()},
        node_kernels={n: int(k) for n, k in raw.get("node_kernels", {}).items()},
        node_source=str(raw.get("node_source", "")), reference=raw.get("reference", {}))


def dump_profile(profile: Profile) -> str:
    def par(p: Param) -> dict:
        return {"value": round(p.value, 4), "source": p.source}
    doc = {
        "name": profile.name, "streams": profile.streams, "hip_queues": profile.hip_queues,
        "ar_scope": profile.ar_scope,
        **{k: par(getattr(profile, k)) for k in ("hbm_gbs", "launch_gap_us", "fence_us",
                                                 "graph_entry_us", "ar_concurrency_factor",
                                                 "multi_stream_entry_us", "concurrency_slowdown")},
        "op_overhead_us": {k: par(v) for k, v in profile.op_overhead_us.items()},
        "op_efficiency": {k: par(v) for k, v in profile.op_efficiency.items()},
        "node_source": profile.node_source,
        "node_us": {n: {b: round(t, 3) for b, t in sorted(bs.items())} for n, bs in profile.node_us.items()},
        "node_kernels": profile.node_kernels,
    }
    if profile.reference:
        doc["reference"] = profile.reference
    return yaml.safe_dump(doc, sort_keys=False, width=120)
