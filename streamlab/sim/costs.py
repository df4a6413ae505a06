"""What a layer's nodes cost on a device profile, before any schedule: computed once per (layer
shape, variant, profile) and reused by every layout simulated there, which is what lets a schedule
search rank thousands of layouts a second.

Per node: its latency alone at the layer's shape, its kernel count, its HBM and SM demand, and the
work the engine runs it for in a graph of one lane and in a graph of several (the launch gap
differs); per ordered node pair: the measured overlap excess at the layer's batch.
"""

from __future__ import annotations

from dataclasses import dataclass

from streamlab.layer import Layer
from streamlab.sim.profile import DeviceProfile
from streamlab.sim.shape import NodeLatency, node_latencies

# Kernels that do not pay `queue_wait_kernel_us`: on MI355X, with the alt stream on, the indexer's
# memory-bound kernels ran +0.5..2.4 us each and its FP8 GEMMs ~+0 (reference section 5); the
# all-reduce has its own factor.
QUEUE_WAIT_EXEMPT = frozenset({"fp8_linear", "bmm_fp8", "fused_moe", "allreduce"})


@dataclass(frozen=True)
class LaneCosts:
    """Costs that depend on whether the graph has one lane or several."""

    work: tuple[float, ...]  # us of standalone work per node: latency + launch gaps inside it
    hbm: tuple[float, ...]  # share of the HBM bandwidth the node uses alone at that work
    solo: tuple[float, ...]  # progress rate of the node running alone (the fluid model with one kernel)
    gap: float  # idle after each kernel (>= 0)
    graph_entry: float  # idle at the start of every replay
    layer_entry: float  # idle before each layer's first kernel


@dataclass(frozen=True)
class NodeCosts:
    """A layer's nodes on a profile, indexed as `layer.nodes`."""

    names: tuple[str, ...]
    ops: tuple[str, ...]
    collective: tuple[bool, ...]
    latency: tuple[NodeLatency, ...]  # alone at the layer's shape, and whether moved from a calibrated point
    alone_us: tuple[float, ...]
    kernels: tuple[int, ...]
    sm: tuple[float, ...]
    pairs: dict[tuple[int, int], float]  # (dispatched first, second) -> measured excess at this batch
    measured_pairs: frozenset[tuple[int, int]]  # those measured at batches around this one (not only beside it)
    fence: float
    concurrency_slowdown: float
    ar_factor: float
    ar_graph_scope: bool  # the all-reduce slows in any multi-lane graph, not only beside a kernel
    single: LaneCosts
    multi: LaneCosts

    def lane(self, multi: bool) -> LaneCosts:
        return self.multi if multi else self.single


def node_costs(layer: Layer, profile: DeviceProfile) -> NodeCosts:
    """The layer's costs on `profile`, cached on the profile (which is immutable)."""
    key = (layer.dims, layer.variant, layer.dense)
    cached = profile.cache.get(key)
    if cached is None:
        cached = profile.cache[key] = _costs(layer, profile)
    return cached


def _costs(layer: Layer, profile: DeviceProfile) -> NodeCosts:
    batch = layer.dims.tokens
    names = tuple(n.name for n in layer.nodes)
    latency = node_latencies(layer, profile)
    alone = tuple(x.us for x in latency)
    kernels = tuple(profile.kernels(n) for n in layer.nodes)
    sm = tuple(profile.node_sm_demand(n, batch) for n in names)
    index = {n: i for i, n in enumerate(names)}

    def lane(multi: bool) -> LaneCosts:
        per_kernel = profile.lane_gap_us(multi, batch)
        gap, trim = max(0.0, per_kernel), min(0.0, per_kernel)  # idle after each kernel; or each runs shorter
        wait = profile.queue_wait_kernel_us.at(batch) if multi else 0.0
        work = tuple(max(0.0, a + (k - 1) * gap + k * trim) + (0.0 if n.op in QUEUE_WAIT_EXEMPT else k * wait)
                     for a, k, n in zip(alone, kernels, layer.nodes))
        hbm = tuple(profile.bandwidth_demand(n, w) for n, w in zip(layer.nodes, work))
        ar = 1.0 / profile.ar_concurrency_factor.value if multi and profile.ar_scope == "graph" else 1.0
        solo = tuple(ar if n.is_collective else min(1.0 / max(1.0, h, s), 1.0)
                     for n, h, s in zip(layer.nodes, hbm, sm))
        entry = profile.graph_entry_us.value + (profile.multi_stream_graph_entry_us.value if multi else 0.0)
        return LaneCosts(work, hbm, solo, gap, entry, profile.multi_stream_entry_us.value if multi else 0.0)

    pairs = {(index[a], index[b]): e for (a, b), e in profile.pairs_at(batch).items() if a in index and b in index}
    around = {tuple(k.split("|", 1)) for k, t in profile.pair_excess.items() if min(t) <= batch <= max(t)}
    return NodeCosts(
        names=names, ops=tuple(n.op for n in layer.nodes), collective=tuple(n.is_collective for n in layer.nodes),
        latency=latency, alone_us=alone, kernels=kernels, sm=sm,
        pairs=pairs, measured_pairs=frozenset((index[a], index[b]) for a, b in around if a in index and b in index),
        fence=profile.fence_us.at(batch), concurrency_slowdown=profile.concurrency_slowdown.value,
        ar_factor=profile.ar_concurrency_factor.value, ar_graph_scope=profile.ar_scope == "graph",
        single=lane(False), multi=lane(True))
