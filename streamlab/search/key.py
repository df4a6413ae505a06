"""When two layouts are the same layout: the equivalence the search deduplicates by.

Two stream programs of one layer are equivalent when they capture the same graph:

1. the same variant (the same kernels);
2. the same lanes: each node on the same stream up to renaming the streams within each region
   (regions start and end with every stream joined, so a stream's name carries nothing across
   them). Lanes are what the device runs: the capture streams on CUDA, the hardware queues the
   HIP depth-first rule assigns on ROCm (`schedule.graph.hip_streams`), where dispatch order
   picks the queue;
3. the same happens-before: the same edges after transitive reduction (an edge that another path
   already implies orders nothing);
4. the same dispatch order wherever one completion releases kernels on several lanes: each
   node's children in the reduced graph, in the order they were dispatched (which of two kernels
   released together is dispatched first: the one that keeps its pace on NVIDIA, the one that
   keeps the queue on HIP).

Any other difference in dispatch order (two kernels on different lanes that no single completion
releases together) changes nothing the graph records. `prediction_key` is coarser: it keeps the
dispatch order of item 4 only where the profile measured that pair of kernels together, since
nowhere else can a simulated prediction depend on it.
"""

from __future__ import annotations

from dataclasses import dataclass

from streamlab.schedule.graph import capture, hip_streams
from streamlab.schedule.program import Program
from streamlab.search.space import Space
from streamlab.sim.profile import variant_key


@dataclass(frozen=True)
class LaneModel:
    """How capture streams become lanes: "cuda" (a lane per capture stream) or "hip" (queues)."""

    kind: str = "cuda"
    queues: int = 4


@dataclass(frozen=True)
class LayoutKey:
    variant: str
    lanes: tuple[int, ...]  # per node in reference order, renamed by first use in each region
    edges: frozenset[tuple[str, str]]  # transitive reduction
    releases: frozenset[tuple[str, ...]]  # reduced children on several lanes, in dispatch order

    def coarsened(self, pairs: frozenset[tuple[str, str]]) -> LayoutKey:
        """Only the release orders among `pairs` (measured together, either way round) kept."""
        kept = frozenset(r for r in self.releases
                         if any((a, b) in pairs for a in r for b in r if a != b))
        return LayoutKey(self.variant, self.lanes, self.edges, kept)


def layout_key(space: Space, program: Program, lanes: LaneModel) -> LayoutKey:
    g = capture(program, 1)
    if lanes.kind == "hip":
        lane_of = {k[1]: str(q) for k, q in hip_streams(g, lanes.queues).items()}
    else:
        lane_of = {k[1]: s for k, s in g.stream_of.items()}
    names = [k[1] for k in g.nodes]
    index = {n: i for i, n in enumerate(names)}
    parents = {k[1]: [p[1] for p in g.parents[k]] for k in g.nodes}
    anc: dict[str, int] = {}
    reduced: dict[str, list[str]] = {}
    for n in names:
        mask = 0
        for p in parents[n]:
            mask |= (1 << index[p]) | anc[p]
        anc[n] = mask
        reduced[n] = [p for p in parents[n]
                      if not any(q != p and anc[q] >> index[p] & 1 for q in parents[n])]
    children: dict[str, list[str]] = {n: [] for n in names}
    for n in names:  # dispatch order: each child list comes out in the order it was dispatched
        for p in reduced[n]:
            children[p].append(n)
    releases = frozenset(tuple(c) for c in children.values()
                         if len({lane_of[x] for x in c}) > 1)
    edges = frozenset((p, n) for n in names for p in reduced[n])
    return LayoutKey(variant_key(space.layer.variant), _lanes(space, names, lane_of), edges, releases)


def _lanes(space: Space, dispatched: list[str], lane_of: dict[str, str]) -> tuple[int, ...]:
    """Lane numbers renamed by first use in dispatch order within each region; the first node's
    lane (main) is 0 everywhere."""
    main = lane_of[dispatched[0]]
    region = {space.names[i]: r for r, nodes in enumerate(space.regions) for i in nodes}
    names: dict[tuple[int | None, str], int] = {}
    used: dict[int | None, int] = {}
    for n in dispatched:
        r = region.get(n)
        key = (r, lane_of[n])
        if lane_of[n] == main:
            names[key] = 0
        elif key not in names:
            used[r] = used.get(r, 0) + 1
            names[key] = used[r]
    return tuple(names[(region.get(n), lane_of[n])] for n in space.names)
