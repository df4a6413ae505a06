"""What a layer's nodes cost on a device profile, before any schedule: computed once per (layer
shape, variant, profile) and reused by every layout simulated there, which is what lets a schedule
search rank thousands of layouts a second.

Per node: its latency alone at the layer's shape, its kernel count, its HBM and SM demand, and the
work the engine runs it for in a graph of one lane and in a graph of several (the launch gap
differs); per ordered node pair: the measured overlap excess at the layer's batch.

SM / CU budgets (a scenario's `sms:`, `Launch.sms`) are modelled, never measured by the profile
(`budget_costs`, computed once per layer shape and set of budgets). The model reads the grids
the Triton kernels launch, planned for the profile's device (kernels/triton/targets.py
`work_grids`: the same planner the kernels run, on meta tensors), and assumes one program per
SM at a time:
- alone, a kernel of W programs takes ceil(W / U) waves on the device's U units and
  ceil(W / b) under a budget of b; the node's standalone work stretches by the largest ratio
  of its kernels (never below 1: fewer SMs are never faster). Its HBM demand falls by the same
  factor (the same bytes over a longer time);
- beside other kernels, a node claims min(W, U) / U of the units alone (its widest kernel) and
  at most b / U under its budget; its SM demand in the fluid model is capped at b / U. What
  kernels running together contend for is the part of their claims past the whole device
  (sum - 1); a budget shrinks it, and both the measured overlap excess of a pair and the
  per-kernel `concurrency_slowdown` apply in proportion to what is left of it (`relief`;
  unchanged where the unbudgeted claims did not exceed the device: that slowdown is not over
  SMs).
Memory-bound kernels whose SMs can pull more than their share of bandwidth may lose less than
the wave count says, and two programs sharing an SM halve its waves: what the GPU measurement
of a budgeted layout against the same layout unbudgeted checks (bench/budgets/).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from streamlab.errors import EXIT_BAD_INPUT, Failure
from streamlab.layer import Layer
from streamlab.models.hardware import HARDWARE
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


@dataclass(frozen=True)
class BudgetCosts:
    """A layout's SM / CU budgets on a profile, per layer node (module docstring); unbudgeted
    nodes have stretch 1 and claim their occupancy."""

    units: int
    budgets: tuple[int | None, ...]
    stretch: tuple[float, ...]  # standalone work under the budget / without it (>= 1)
    occupancy: tuple[float, ...]  # share of the units the node claims alone, unbudgeted
    claim: tuple[float, ...]  # ... under its budget

    def lane(self, lc: LaneCosts, sm: tuple[float, ...], collective: tuple[bool, ...]
             ) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
        """(work, hbm, sm, solo) of a lane's costs with the budgets applied."""
        work, hbm, dem, solo = list(lc.work), list(lc.hbm), list(sm), list(lc.solo)
        for n, b in enumerate(self.budgets):
            if b is None or collective[n]:
                continue
            k = self.stretch[n]
            work[n], hbm[n] = work[n] * k, hbm[n] / k
            dem[n] = min(dem[n], b / self.units)
            solo[n] = min(1.0 / max(1.0, hbm[n], dem[n]), 1.0)
        return tuple(work), tuple(hbm), tuple(dem), tuple(solo)

    def relief(self, nodes: list[int]) -> float:
        """What is left, under the budgets, of the contention of `nodes` running together: the
        part of their claims past the whole device, budgeted over unbudgeted (1 when the
        unbudgeted claims fit the device)."""
        over = sum(self.occupancy[n] for n in nodes) - 1.0
        if over <= 1e-9:
            return 1.0
        return max(0.0, sum(self.claim[n] for n in nodes) - 1.0) / over


def device_units(profile: DeviceProfile) -> int:
    """The SMs (CUs) of the profile's device (models/hardware.py)."""
    hw = HARDWARE.get(profile.hardware) or HARDWARE.get(profile.name)
    if hw is None:
        raise Failure(f"profile {profile.origin or profile.name}: SM / CU budgets need the device's SM count; "
                      f"set `hardware:` to one of {', '.join(HARDWARE)}", EXIT_BAD_INPUT)
    return hw.units


def budget_costs(layer: Layer, profile: DeviceProfile, budgets: Mapping[str, int]) -> BudgetCosts:
    """`budgets` (node -> SMs / CUs) on `profile` (module docstring), cached on the profile."""
    key = ("budgets", layer.dims, layer.variant, layer.dense, tuple(sorted(budgets.items())))
    cached = profile.cache.get(key)
    if cached is None:
        cached = profile.cache[key] = _budget_costs(layer, profile, budgets)
    return cached


def _budget_costs(layer: Layer, profile: DeviceProfile, budgets: Mapping[str, int]) -> BudgetCosts:
    units = device_units(profile)
    for node, b in budgets.items():
        if type(b) is not int or not 1 <= b <= units:
            raise Failure(f"sms: {b!r} on {node}: the {profile.name} profile's device has {units} SMs / CUs; "
                          f"give 1 to {units}", EXIT_BAD_INPUT)
    grids_key = ("grids", layer.dims, layer.variant, layer.dense, units)
    grids = profile.cache.get(grids_key)
    if grids is None:
        # Triton is imported only for a layout with budgets
        from streamlab.kernels.triton.targets import work_grids
        grids = profile.cache[grids_key] = work_grids(layer, units)
    stretch, occupancy, claim, given = [], [], [], []
    for node in layer.nodes:
        g = grids.get(node.name, ())
        b = budgets.get(node.name)
        if b is not None and not g:
            raise Failure(f"sms: {b} on {node.name}: it launches no Triton kernel, so no budget applies to it",
                          EXIT_BAD_INPUT)
        occ = min(max(g, default=0), units) / units
        given.append(b)
        occupancy.append(occ)
        if b is None:
            stretch.append(1.0)
            claim.append(occ)
        else:
            stretch.append(max(math.ceil(w / b) / math.ceil(w / units) for w in g))
            claim.append(min(occ, b / units))
    return BudgetCosts(units, tuple(given), tuple(stretch), tuple(occupancy), tuple(claim))
