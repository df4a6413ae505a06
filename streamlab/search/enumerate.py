"""Every layout of the space, one per equivalence class, region by region.

The space (see `streamlab.search` for the rules in one place):

- each node of a region runs on one of `streams` streams, numbered by first use in the region;
  sequential nodes run on main (P1);
- each stream runs its nodes in the layer's reference order (R1);
- synchronisation is exact (`layout.build_program`) plus up to `max_barriers` barriers per
  region; at most `max_waits` cross-stream waits per region (R2: the edges between streams in
  the reduced captured graph, barriers' included, each a fence on the device);
- the dispatch order: every order in which a completion may release the kernels it unblocks on
  several streams, consistent with the rest (which kernel goes first, `key` item 4).

Regions never overlap (every stream is joined between them), so a layer's layout is one region
layout per region, and the region layouts are enumerated independently. Within a region the
depth-first walk assigns streams in reference order; happens-before is a bitmask of region
positions per node, so two barrier sets that order the same pairs are one class. Pruning P2: a
stream whose every node can run beside nothing but nodes of the same stream is the same
happens-before on main minus its fences; such region layouts are marked `dominated`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from streamlab.schedule.graph import capture
from streamlab.schedule.program import Program
from streamlab.search.bound import LaneGraph
from streamlab.search.layout import Layout
from streamlab.search.space import MAX_STREAMS, Space, bits

ENTRY = -1  # the sequential node before a region (or the layer's start): it releases the heads


@dataclass(frozen=True)
class Limits:
    streams: int = 2
    max_waits: int = 4
    max_barriers: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.streams <= MAX_STREAMS:
            raise ValueError(f"streams must be 1..{MAX_STREAMS}")


@dataclass(frozen=True)
class RegionLayout:
    """How one region runs. Positions are indices into `nodes` (the region, reference order)."""

    region: int
    nodes: tuple[int, ...]
    streams: tuple[int, ...]  # per position
    order: tuple[int, ...]  # positions in dispatch order
    barriers: tuple[int, ...]  # positions p: everything before p happens before everything after
    ancestors: tuple[int, ...]  # per position: bitmask of positions that happen before it
    parents: tuple[tuple[int, ...], ...]  # per position: its parents in the reduced graph
    releases: tuple[tuple[int, ...], ...]  # reduced children on several streams, in dispatch order
    waits: int  # cross-stream edges of the reduced graph, the region's entry and exit included
    dominated: bool  # P2

    @property
    def serial(self) -> bool:
        return not any(self.streams)

    @property
    def key(self) -> tuple:
        """Streams, happens-before and release orders: the class within the region."""
        return (self.streams, self.ancestors, self.releases)


def assemble(space: Space, parts: list[RegionLayout]) -> tuple[Layout, LaneGraph]:
    """The layer's layout from one region layout per region, with its lane graph on capture
    streams: sequential nodes on main, each region's heads released by the node before it,
    the node after it waiting for its tails."""
    n = space.size
    streams, parents = [0] * n, [()] * n
    order: list[int] = []
    barriers: list[int] = []
    starts = {r.nodes[0]: r for r in parts}
    before: tuple[int, ...] = ()
    i = 0
    while i < n:
        r = starts.get(i)
        if r is None:
            parents[i] = before
            order.append(i)
            before = (i,)
            i += 1
            continue
        below = 0
        for j, v in enumerate(r.nodes):
            streams[v] = r.streams[j]
            parents[v] = tuple(r.nodes[k] for k in r.parents[j]) or before
            below |= r.ancestors[j]
        order += [r.nodes[p] for p in r.order]
        barriers += [r.nodes[p] for p in r.barriers]
        before = tuple(v for k, v in enumerate(r.nodes) if not below >> k & 1)
        i = r.nodes[-1] + 1
    layout = Layout(space.layer.variant, tuple(streams), tuple(order), tuple(barriers))
    at = {v: i for i, v in enumerate(order)}
    return layout, LaneGraph(layout.order, tuple(streams[v] for v in order),
                             tuple(tuple(at[p] for p in parents[v]) for v in order), n)


def region_layouts(space: Space, region: int, limits: Limits,
                   prune: Prune | None = None) -> Iterator[RegionLayout]:
    """Every class of the region within `limits`, lazily, depth first (the all-main one first).
    `prune(j, streams, parents)`, called once position j has its stream (positions up to j set:
    their streams and reduced parents, each a bitmask of positions), cuts the subtree when it
    returns True."""
    nodes = space.regions[region]
    local = {v: j for j, v in enumerate(nodes)}
    parents = [tuple(local[p] for p in space.parents[v] if p in local) for v in nodes]
    for streams, anc, reduced, cuts, waits in _assignments(parents, limits, prune):
        dominated = _dominated(streams, anc)
        groups = _groups(reduced)
        for order in _orders(anc, groups):
            rank = {p: i for i, p in enumerate(order)}
            releases = tuple(sorted(tuple(sorted(g, key=rank.get)) for g in groups))
            yield RegionLayout(region, nodes, streams, order, cuts, anc, reduced, releases, waits, dominated)


Prune = Callable[[int, list[int], list[int]], bool]  # (position, streams, reduced parents as bitmasks)


def _assignments(parents: list[tuple[int, ...]], limits: Limits, prune: Prune | None):
    """(streams, ancestors, reduced parents, barriers, waits) per distinct happens-before.

    Sets of positions are bitmasks: a node's candidate parents (its data parents, its stream's
    last node, the nodes a barrier closes), their closure (ancestors), and the reduced parents:
    the candidates no other candidate has as an ancestor."""
    m, S, W, K = len(parents), limits.streams, limits.max_waits, limits.max_barriers
    pmask = [sum(1 << p for p in ps) for ps in parents]
    streams = [0] * m
    anc = [0] * m
    red = [0] * m  # reduced parents, as a bitmask
    on = [0] * S  # positions on each stream
    last: list[int | None] = [None] * S
    seen: set[tuple] = set()

    def walk(j: int, used: int, waits: int, cuts: tuple[int, ...], cutmask: int, tops: int):
        if j == m:
            below = 0
            for a in anc:
                below |= a
            waits += sum(1 for k in range(m) if streams[k] and not below >> k & 1)  # joins at the exit
            key = (tuple(streams), tuple(anc))
            if waits <= W and key not in seen:
                seen.add(key)
                yield key[0], key[1], tuple(tuple(bits(r)) for r in red), cuts, waits
            return
        options = [(cuts, cutmask, tops)]
        if j and len(cuts) < K:
            covered = 0
            for k in range(j):
                covered |= anc[k]
            options.append((cuts + (j,), (1 << j) - 1, ((1 << j) - 1) & ~covered))
        for cuts_, cutmask_, tops_ in options:
            base = pmask[j] | (tops_ if cutmask_ else 0)
            for s in range(min(S, used + 2)):
                lane = last[s]
                cands = base | (1 << lane) if lane is not None else base
                a, covered, rest = cutmask_ | cands, 0, cands
                k = 0
                while rest:
                    if rest & 1:
                        a |= anc[k]
                        covered |= anc[k]
                    rest >>= 1
                    k += 1
                reduced = cands & ~covered
                added = (reduced & ~on[s]).bit_count() + (1 if s and not reduced else 0)
                if waits + added > W:
                    continue
                streams[j], anc[j], red[j], last[s] = s, a, reduced, j
                on[s] |= 1 << j
                if prune is None or not prune(j, streams, red):
                    yield from walk(j + 1, max(used, s), waits + added, cuts_, cutmask_, tops_)
                on[s] &= ~(1 << j)
                last[s] = lane
        streams[j], anc[j], red[j] = 0, 0, 0

    yield from walk(0, 0, 0, (), 0, 0)


def _descendants(anc: tuple[int, ...]) -> list[int]:
    desc = [0] * len(anc)
    for j, a in enumerate(anc):
        k = 0
        while a:
            if a & 1:
                desc[k] |= 1 << j
            a >>= 1
            k += 1
    return desc


def closed_streams(streams: tuple[int, ...], anc: tuple[int, ...]) -> set[int]:
    """Streams other than main whose nodes only ever run beside nodes of the same stream: on
    main they keep the same happens-before and lose their fences (pruning rule P2)."""
    m = len(streams)
    everyone = (1 << m) - 1
    desc = _descendants(anc)
    closed = set()
    for s in set(streams) - {0}:
        mine = sum(1 << j for j in range(m) if streams[j] == s)
        if all((everyone & ~anc[j] & ~desc[j] & ~(1 << j)) & ~mine == 0
               for j in range(m) if streams[j] == s):
            closed.add(s)
    return closed


def _dominated(streams: tuple[int, ...], anc: tuple[int, ...]) -> bool:
    return bool(closed_streams(streams, anc))


def _tops(anc: tuple[int, ...], j: int) -> int:
    """The reduced parents of position j: its ancestors that are nobody else's ancestor there."""
    covered = 0
    for k in bits(anc[j]):
        covered |= anc[k]
    return anc[j] & ~covered


def _groups(reduced: tuple[tuple[int, ...], ...]) -> list[tuple[int, ...]]:
    """Reduced children of each node (and of the region's entry), where more than one.

    They are on distinct streams (two on one stream would be ordered by it), so a group is a
    choice of which stream's kernel is dispatched first."""
    children: dict[int, list[int]] = {}
    for j, ps in enumerate(reduced):
        for p in ps or (ENTRY,):
            children.setdefault(p, []).append(j)
    return list(dict.fromkeys(tuple(c) for c in children.values() if len(c) > 1))


def _orders(anc: tuple[int, ...], groups: list[tuple[int, ...]]) -> Iterator[tuple[int, ...]]:
    """A dispatch order for every consistent choice of release orders (ties: reference order)."""
    m = len(anc)
    for choice in itertools.product(*(itertools.permutations(g) for g in groups)):
        after = [0] * m  # extra constraints: positions that must be dispatched before j
        for perm in choice:
            for a, b in itertools.pairwise(perm):
                after[b] |= 1 << a
        order = _topological(anc, after)
        if order is not None:
            yield order


def _topological(anc: tuple[int, ...], after: list[int]) -> tuple[int, ...] | None:
    need = [a | b for a, b in zip(anc, after)]
    pending, done, out = list(range(len(anc))), 0, []
    while pending:
        for i, j in enumerate(pending):
            if need[j] & ~done == 0:
                break
        else:
            return None  # the release orders contradict each other or the happens-before
        del pending[i]
        done |= 1 << j
        out.append(j)
    return tuple(out)


def place(space: Space, program: Program, limits: Limits) -> tuple[list[RegionLayout], list[str]]:
    """Any program of the layer (a shipped scenario's) in the space's terms: its region layouts,
    and what keeps it outside the space (nothing when it is inside).

    This is the equivalence the search deduplicates by: two programs are one layout when `place`
    gives them the same region keys, i.e. when they capture the same graph: the same stream for
    every node up to renaming the streams within each region, the same happens-before (edges
    after transitive reduction), and, wherever one completion releases kernels on several
    streams, the same order of dispatching them. Any other difference in dispatch order changes
    nothing the captured graph records. (On HIP the queues follow from the captured graph by the
    depth-first rule, `schedule.graph.hip_streams`, so they are a prediction, not part of the key.)"""
    g = capture(program, 1)
    index = {n: i for i, n in enumerate(space.names)}
    dispatched = [index[k[1]] for k in g.nodes]
    lane = {index[k[1]]: s for k, s in g.stream_of.items()}
    anc = [0] * space.size
    for k in g.nodes:
        for p in g.parents[k]:
            anc[index[k[1]]] |= (1 << index[p[1]]) | anc[index[p[1]]]
    main = lane[dispatched[0]]
    problems = [f"{space.names[v]} runs on stream {lane[v]}, not {main}: nothing can run beside it (P1)"
                for v in sorted(space.sequential) if lane[v] != main]
    rank = {v: i for i, v in enumerate(dispatched)}
    parts = []
    for r, nodes in enumerate(space.regions):
        names: dict[str, int] = {main: 0}
        for v in nodes:  # numbered by first use in reference order, as the walk numbers them
            names.setdefault(lane[v], len(names))
        streams = tuple(names[lane[v]] for v in nodes)
        if len(names) > limits.streams:
            problems.append(f"it uses {len(names)} streams in region {r} (--streams {limits.streams})")
        local = tuple(sum(1 << j for j, u in enumerate(nodes) if anc[v] >> u & 1) for v in nodes)
        for s in set(streams):
            mine = sorted((j for j in range(len(nodes)) if streams[j] == s), key=lambda j: rank[nodes[j]])
            if mine != sorted(mine):
                problems.append(f"stream {s} of region {r} does not run its nodes in reference order (R1)")
        reduced = tuple(tuple(bits(_tops(local, j))) for j in range(len(nodes)))
        order = tuple(sorted(range(len(nodes)), key=lambda j: rank[nodes[j]]))
        pos = {p: i for i, p in enumerate(order)}
        releases = tuple(sorted(tuple(sorted(c, key=pos.get)) for c in _groups(reduced)))
        below = 0
        for a in local:
            below |= a
        waits = sum(1 for j, ps in enumerate(reduced) for p in ps if streams[p] != streams[j])
        waits += sum(1 for j, ps in enumerate(reduced) if not ps and streams[j])
        waits += sum(1 for j in range(len(nodes)) if streams[j] and not below >> j & 1)
        if waits > limits.max_waits:
            problems.append(f"it needs {waits} cross-stream waits in region {r} (--max-waits {limits.max_waits})")
        parts.append(RegionLayout(r, nodes, streams, order, (), local, reduced, releases, waits,
                                  _dominated(streams, local)))
    return parts, problems
