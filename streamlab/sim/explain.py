"""Where a layout's simulated cost goes, against the serial layout on the same profile: the
per-layer difference split into the parts the published MI355X analysis names (reference
section 5), each beside the published figure where the profile carries one, and the profile
parameters each part comes from.

    total     per-layer latency (graph time / layers)
    bubble    all-stream-idle time per layer (>= 2 us stalls listed apart)
    AR        all-reduce time per layer (per call x calls)
    MoE       MoE block wall per layer: first MoE kernel's start to the last one's end
    indexer   indexer chain wall per layer: first indexer kernel's start to the last one's end
    rest      total - bubble, AR, MoE and indexer: overlap saved elsewhere, slower kernels elsewhere

On a HIP profile the total's parameters also say how many of the layout's branches the HIP walk
puts on the launch stream's queue (schedule/graph.py), where they run after the main branch
instead of beside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from streamlab.analysis import summarize
from streamlab.scenario import Scenario, load
from streamlab.schedule.graph import captured, hip_queue_ids
from streamlab.sim.predict import Prediction, predict
from streamlab.sim.profile import UNMODELLED, DeviceProfile
from streamlab.timeline import Timeline

SCENARIOS = Path(__file__).resolve().parent.parent.parent / "scenarios"
ADDITIVE = ("bubble_us", "allreduce_us", "moe_us", "indexer_us")  # the published decomposition of the difference
PARTS = ("layer_us", "bubble_us", "stall_us", "allreduce_us", "moe_us", "indexer_us")
LABELS = {"layer_us": "total per layer", "bubble_us": "all-stream-idle bubble", "stall_us": "  of it >= 2 us stalls",
          "allreduce_us": "all-reduce (per call x calls)", "moe_us": "MoE block wall", "indexer_us": "indexer chain wall"}
SOURCES = {  # the profile parameters each part comes from (the sources are in `streamlab sim`'s table)
    "layer_us": ("launch_gap_us", "hip_queues"),
    "bubble_us": ("fence_us", "multi_stream_entry_us", "multi_stream_launch_gap_us", "hip_queues"),
    "stall_us": ("fence_us", "multi_stream_entry_us", "hip_queues"),
    "allreduce_us": ("ar_concurrency_factor",),
    "moe_us": ("queue_wait_kernel_us", "pair_measures", "fence_us", "hip_queues"),
    "indexer_us": ("queue_wait_kernel_us", "concurrency_slowdown"),
}


@dataclass(frozen=True)
class Anatomy:
    """One simulated layout's parts, per layer (mean over the graph's layers)."""

    layer_us: float
    bubble_us: float
    stall_us: float
    allreduce_us: float
    moe_us: float
    indexer_us: float


def anatomy(prediction: Prediction, scen: Scenario) -> Anatomy:
    tl = prediction.timeline
    s = summarize(tl)
    n = len(s.layers)
    groups = scen.layer.groups
    return Anatomy(
        layer_us=prediction.per_layer_us,
        bubble_us=sum(ls.bubble for ls in s.layers) / n,
        stall_us=sum(ls.bubble_by_class["stall"] for ls in s.layers) / n,
        allreduce_us=sum(sum(ls.allreduce) for ls in s.layers) / n,
        moe_us=_window(tl, set(groups["moe"])),
        indexer_us=_window(tl, set(groups["indexer"])))


def _window(tl: Timeline, nodes: set[str]) -> float:
    """Mean over layers of (last end - first start) of the nodes' kernels."""
    spans: dict[int, tuple[float, float]] = {}
    for iv in tl.intervals:
        if iv.node in nodes and iv.layer is not None:
            lo, hi = spans.get(iv.layer, (iv.start, iv.end))
            spans[iv.layer] = (min(lo, iv.start), max(hi, iv.end))
    return sum(hi - lo for lo, hi in spans.values()) / len(spans) if spans else 0.0


@dataclass(frozen=True)
class Part:
    """One part of the difference: the baseline's and the layout's simulated values, and the
    published difference when the profile carries it."""

    name: str
    baseline_us: float
    layout_us: float
    published_us: float | None
    parameters: str  # the profile parameters it comes from, with their values

    @property
    def difference_us(self) -> float:
        return self.layout_us - self.baseline_us

    @property
    def off(self) -> float | None:
        """(simulated - published) / published difference."""
        if self.published_us is None or abs(self.published_us) < 1.0:
            return None
        return (self.difference_us - self.published_us) / self.published_us


def breakdown(scen: Scenario, profile: DeviceProfile, baseline: str = "serial", layers: int = 16) -> list[Part]:
    """The layout against `baseline` (a shipped scenario at the same shape), part by part, over
    `layers` layers (enough for the HIP queue rule to cycle through its queues)."""
    base = load(SCENARIOS / f"{baseline}.yaml").override(
        model=scen.model.name, **{k: getattr(scen.shape, k) for k in vars(scen.shape)})
    a, b = (anatomy(predict(s, profile, layers=layers), s) for s in (scen, base))
    published = profile.reference.get("layouts", {})
    pub_a, pub_b = published.get(scen.name, {}), published.get(baseline, {})
    queues = ""
    if profile.streams == "hip":
        on, branches = launch_queue_branches(scen, profile, layers)
        queues = f" ({on} of {branches} branches on the launch stream's queue)"
    parts = []
    for part in PARTS:
        pub = pub_a[part] - pub_b[part] if part in pub_a and part in pub_b else None
        params = ", ".join(f"{k} {_value(profile, k)}" + (queues if part == "layer_us" and k == "hip_queues" else "")
                           for k in SOURCES.get(part, ()) if _shown(profile, k))
        parts.append(Part(LABELS[part], getattr(b, part), getattr(a, part), pub, params))
    named = sum(p.difference_us for p, key in zip(parts, PARTS) if key in ADDITIVE)
    have = all(k in pub_a and k in pub_b for k in ("layer_us", *ADDITIVE))
    rest_pub = pub_a["layer_us"] - pub_b["layer_us"] - sum(pub_a[k] - pub_b[k] for k in ADDITIVE) if have else None
    parts.append(Part("rest: total - bubble, all-reduce, MoE, indexer (overlap saved, other kernels slowed)",
                      0.0, parts[0].difference_us - named, rest_pub, ""))
    return parts


def launch_queue_branches(scen: Scenario, profile: DeviceProfile, layers: int) -> tuple[int, int]:
    """(branches on id 0, branches) over `layers` layers under the HIP walk: a branch is a run of
    launches on one side stream, in dispatch order; on id 0, the launch stream's queue, it runs in
    dispatch order with the main branch (every AQL dispatch carries the barrier bit)."""
    c = captured(scen.program, layers)
    ids = hip_queue_ids(c, profile.hip_queues)
    main = scen.program.main
    starts = [i for i, s in enumerate(c.streams) if s != main and (i == 0 or c.streams[i - 1] != s)]
    return sum(ids[i] == 0 for i in starts), len(starts)


def _shown(profile: DeviceProfile, key: str) -> bool:
    if key == "hip_queues":
        return profile.streams == "hip"
    return getattr(profile, key) != UNMODELLED


def _value(profile: DeviceProfile, key: str) -> str:
    p = getattr(profile, key)
    if isinstance(p, int):
        return str(p)
    if isinstance(p, tuple):
        return f"({len(profile.pair_excess)} pairs)"
    return f"{p.value:g}" if p.by_batch is None else "per batch"
