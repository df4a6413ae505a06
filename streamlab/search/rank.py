"""Rank the layout space on a device profile: branch and bound over the simulator.

For each variant, regions are searched one at a time, the others held at their best so far
(regions never overlap, so a region's best does not depend on the others': `combine` checks it
on the best combinations). Within a region every class the profile can tell apart is bounded
from below (`bound.lower_bound`) and simulated in order of its bound, until the next bound is
no better than the K-th best prediction so far: nothing left can enter the top K. A time budget
may stop the walk earlier; the gap to the smallest bound left is then reported.

Classes the profile cannot tell apart: on CUDA lanes the simulator reads the dispatch order of
two kernels released together only where the profile measured that pair, so classes that differ
only in other release orders share one simulation. On HIP the order picks the queues, so every
class is simulated (after an exact bound on its own queues, computed where it is simulated).

The simulations go through `predict.Simulator` (`predict.rank_us`: the engine's replay).
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, replace

from streamlab.layer import Layer, Variant
from streamlab.models import Shape
from streamlab.search.bound import (
    Costs,
    LaneGraph,
    LaneModel,
    RegionBound,
    lower_bound,
)
from streamlab.search.enumerate import Limits, RegionLayout, assemble, region_layouts
from streamlab.search.layout import Layout, build_program
from streamlab.search.predict import Predicted, Simulator, lane_model, layer_at, rank_us
from streamlab.search.space import Space, partitions
from streamlab.sim import DeviceProfile

CHUNK = 24  # layouts per task sent to a worker


@dataclass(frozen=True)
class Candidate:
    layout: Layout
    name: str
    predicted: Predicted
    bound: float  # the lower bound the search ranked it by


@dataclass
class Tally:
    """What one batch's search did."""

    classes: int = 0  # equivalence classes in the space (product over regions); when not
    pruned: int = 0   # `complete`, only those the walk reached. pruned: dominated (P2)
    complete: bool = True  # every region's classes were listed (else walked with pruning)
    considered: int = 0  # layouts bounded or simulated: one per class the profile tells apart,
    # region by region (the others held), plus serial and the combinations of the regions' best
    simulated: int = 0
    bounded: int = 0  # not simulated: their bound is no better than the K-th best
    cut: int = 0  # subtrees of a pruned walk cut by their partial bound
    unvisited: int = 0  # listed but not simulated: the time budget ran out first
    stopped: bool = False  # the time budget ran out
    floor: float = float("inf")  # no layout the search did not simulate predicts below this
    enumerate_s: float = 0.0
    bound_s: float = 0.0
    engine_s: float = 0.0  # CPU seconds inside the simulator, summed over workers
    wall_s: float = 0.0
    combine_error_us: float = 0.0  # largest |sum of region gains - simulated combination|


COMPLETE = 300_000  # stream assignments of a region up to which its classes are listed in full
_LISTED: dict[tuple, tuple[RegionLayout, ...]] = {}  # listed regions, by their DAG and limits


@dataclass(frozen=True)
class VariantSpace:
    """One variant's space: the classes of each region listed in full where the region is small
    enough (`COMPLETE` stream assignments), else walked with pruning at search time (None)."""

    variant: Variant
    limits: Limits
    regions: tuple[tuple[RegionLayout, ...] | None, ...]
    serial_parts: tuple[RegionLayout, ...]

    @classmethod
    def of(cls, layer: Layer, limits: Limits) -> VariantSpace:
        space = Space.of(layer)
        regions, serial = [], []
        for r, nodes in enumerate(space.regions):
            if assignments(len(nodes), limits.streams) <= COMPLETE:
                key = (r, nodes, tuple(space.parents[v] for v in nodes), limits)  # the same in another variant
                if key not in _LISTED:
                    _LISTED[key] = tuple(region_layouts(space, r, limits))
                regions.append(_LISTED[key])
            else:
                regions.append(None)
            serial.append(next(region_layouts(space, r, limits, prune=lambda j, streams, _: streams[j] != 0)))
        return cls(layer.variant, limits, tuple(regions), tuple(serial))

    @property
    def complete(self) -> bool:
        return all(rs is not None for rs in self.regions)

    def serial(self) -> list[RegionLayout]:
        return list(self.serial_parts)


def assignments(m: int, streams: int) -> int:
    """Stream assignments of a region's m nodes, streams numbered by first use and main free:
    the set partitions of m + 1 elements (main's block holds the extra one)."""
    return partitions(m + 1, streams)


class Board:
    """Every prediction made (by layout), and the K best."""

    def __init__(self, top: int) -> None:
        self.top = top
        self.seen: dict[Layout, Candidate] = {}
        self._best: list[float] = []  # max-heap (negated) of the K best predictions

    def add(self, c: Candidate) -> None:
        if c.layout in self.seen:
            return
        self.seen[c.layout] = c
        heapq.heappush(self._best, -c.predicted.us)
        if len(self._best) > self.top:
            heapq.heappop(self._best)

    def ranked(self) -> list[Candidate]:
        return sorted(self.seen.values(), key=lambda c: (c.predicted.us, c.bound))

    def threshold(self) -> float:
        """A layout must predict below this to enter the top K."""
        return -self._best[0] if len(self._best) == self.top else float("inf")


@dataclass
class BatchSearch:
    """Branch and bound over every searched variant's space at one batch."""

    model: str
    shape: Shape
    profile: DeviceProfile
    spaces: Sequence[VariantSpace]
    layers: int
    top: int
    deadline: float
    sim: Simulator
    on_simulated: Callable[[int], None] = lambda n: None
    on_total: Callable[[int], None] = lambda n: None

    def __post_init__(self) -> None:
        self.board = Board(self.top)
        self.tally = Tally()
        self.lanes = lane_model(self.profile)
        self.pairs = frozenset(tuple(k.split("|", 1)) for k in self.profile.pair_excess)
        self.best_parts: dict[Variant, list[RegionLayout]] = {}
        self.pass_results: dict[tuple[Variant, int], list[tuple[RegionLayout, Candidate]]] = {}
        self.pass_base: dict[tuple[Variant, int], float] = {}  # each pass's layout with its region serial

    def space(self, variant: Variant) -> Space:
        return Space.of(layer_at(self.model, self.shape, variant))

    def run(self) -> list[Candidate]:
        t0 = time.perf_counter()
        for vs in self.spaces:
            if vs.complete:
                classes = kept = 1
                for rs in vs.regions:
                    classes *= len(rs)
                    kept *= sum(not r.dominated for r in rs)
                self.tally.classes += classes
                self.tally.pruned += classes - kept
            else:
                self.tally.complete = False
        for vs in self.spaces:
            space = self.space(vs.variant)
            parts = vs.serial()
            for r in sorted(range(len(space.regions)), key=lambda r: -len(space.regions[r])):
                self.pass_base[(vs.variant, r)] = self.evaluate(space, [parts])[0].predicted.us
                if vs.regions[r] is None and vs.limits.streams > 2:  # seed the board: two streams
                    two = Limits(2, min(vs.limits.max_waits, Limits().max_waits), vs.limits.max_barriers)
                    if assignments(len(space.regions[r]), 2) <= COMPLETE:
                        self.region_pass(space, r, parts, tuple(region_layouts(space, r, two)), two)
                results = self.region_pass(space, r, parts, vs.regions[r], vs.limits)
                self.pass_results[(vs.variant, r)] = results
                if results:
                    parts = list(parts)
                    parts[r] = results[0][0]
            self.best_parts[vs.variant] = parts
            if len(vs.regions) > 1:
                self.combine(space, vs)
        # everything left out had a bound at or above the K-th best when it was left out
        self.tally.floor = min(self.tally.floor, self.board.threshold())
        self.tally.wall_s = time.perf_counter() - t0
        return self.board.ranked()

    def prediction_key(self, rl: RegionLayout, space: Space) -> tuple:
        return prediction_key(rl, space, self.pairs, self.lanes)

    def costs(self, space: Space) -> dict[bool, Costs]:
        costs = {m: Costs.of(space.layer, self.profile, multi_lane=m) for m in (False, True)}
        if self.lanes.kind == "hip":  # a bound for any queues: every lane edge at its cheaper cost
            cheap = min(costs[True].gap, costs[True].fence)
            costs[True] = replace(costs[True], gap=cheap, fence=cheap)
        return costs

    def region_pass(self, space: Space, r: int, parts: list[RegionLayout],
                    listed: tuple[RegionLayout, ...] | None, limits: Limits) -> list[tuple[RegionLayout, Candidate]]:
        """Branch and bound over region r, the other regions held at `parts`: over the listed
        classes in order of their bound, or over a walk of the region pruned by `RegionBound`."""
        costs = self.costs(space)
        seen: set[tuple] = set()
        results: list[tuple[RegionLayout, Candidate]] = []
        scored: list[tuple[float, RegionLayout, Layout]] = []

        def score(rl: RegionLayout) -> None:
            if rl.dominated:
                return
            key = self.prediction_key(rl, space)
            if key in seen:
                return
            seen.add(key)
            trial = list(parts)
            trial[r] = rl
            layout, graph = assemble(space, trial)
            if layout not in self.board.seen:
                scored.append((lower_bound(costs[graph.multi_lane], graph, self.layers), rl, layout))

        def flush() -> None:
            scored.sort(key=lambda s: s[0])
            self.tally.considered += len(scored)
            self.on_total(len(scored))
            results.extend(self.walk(space, scored))
            scored.clear()

        t0 = time.perf_counter()
        if listed is not None:
            for rl in listed:
                score(rl)
            self.tally.bound_s += time.perf_counter() - t0
            flush()
        else:
            trial = list(parts)
            trial[r] = next(region_layouts(space, r, limits, prune=lambda j, streams, _: streams[j] != 0))
            bound = RegionBound(space, r, costs[True], assemble(space, trial)[1], self.layers)

            def prune(j: int, streams: list[int], parents: list[int]) -> bool:
                value = bound(j, streams, parents)
                if any(streams[:j + 1]) and value >= self.board.threshold():
                    self.tally.cut += 1
                    return True
                return False

            for rl in region_layouts(space, r, limits, prune=prune):
                self.tally.classes += 1
                self.tally.pruned += rl.dominated
                score(rl)
                if len(scored) >= 4 * CHUNK * self.sim.workers:
                    flush()
                if time.monotonic() > self.deadline:
                    self.tally.stopped = True
                    break
            flush()
            if self.tally.stopped:  # subtrees never walked: only the bound of every layout holds
                self.tally.floor = min(self.tally.floor, self.universal_bound(space))
        results.sort(key=lambda rc: rc[1].predicted.us)
        return results

    def universal_bound(self, space: Space) -> float:
        """Below every layout of several lanes: each node on a lane of its own, waits for free."""
        costs = replace(self.costs(space)[True], fence=0.0)
        parents = tuple(space.parents)
        graph = LaneGraph(tuple(range(space.size)), tuple(range(space.size)), parents, space.size)
        return lower_bound(costs, graph, self.layers)

    def walk(self, space: Space, scored: list[tuple[float, RegionLayout, Layout]]) -> list[tuple[RegionLayout, Candidate]]:
        """Simulate in order of bound until the next bound cannot enter the top K."""
        results: list[tuple[RegionLayout, Candidate]] = []
        pending: dict[Future, list[tuple[float, RegionLayout, Layout]]] = {}
        i = 0
        stop = None
        while i < len(scored) or pending:
            while i < len(scored) and len(pending) < 2 * self.sim.workers and stop is None:
                if time.monotonic() > self.deadline:
                    stop = "budget"
                    break
                threshold = self.board.threshold()
                if scored[i][0] >= threshold:
                    stop = "bound"
                    break
                chunk = scored[i:i + (CHUNK if self.lanes.kind == "cuda" else 4 * CHUNK)]
                pending[self.sim.submit(self.shape.batch, [(layout, threshold) for _, _, layout in chunk])] = chunk
                i += len(chunk)
            if not pending:
                break
            done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            for f in done:
                chunk = pending.pop(f)
                for (bound, rl, layout), (us, exact, engine_s) in zip(chunk, f.result()):
                    self.tally.engine_s += engine_s
                    if us is None:
                        self.tally.bounded += 1
                        continue
                    c = Candidate(layout, layout.describe(space), Predicted(us), max(bound, exact or bound))
                    self.board.add(c)
                    results.append((rl, c))
                    self.tally.simulated += 1
                self.on_simulated(len(chunk))
        left = scored[i:]
        if stop == "budget":
            self.tally.stopped = True
            self.tally.unvisited += len(left)
            if left:
                self.tally.floor = min(self.tally.floor, left[0][0])
        else:
            self.tally.bounded += len(left)
        self.on_simulated(len(left))
        return results

    def evaluate(self, space: Space, parts_list: list[list[RegionLayout]]) -> list[Candidate]:
        """Simulate whole layouts here (no bound)."""
        out = []
        for parts in parts_list:
            layout, graph = assemble(space, parts)
            if layout not in self.board.seen:
                t0 = time.process_time()
                predicted = Predicted(rank_us(space.layer, build_program(space, layout), self.profile, self.layers))
                self.tally.engine_s += time.process_time() - t0
                self.tally.simulated += 1
                self.tally.considered += 1
                bound = lower_bound(self.costs(space)[graph.multi_lane], graph, self.layers)
                self.board.add(Candidate(layout, layout.describe(space), predicted, bound))
            out.append(self.board.seen[layout])
        return out

    def combine(self, space: Space, vs: VariantSpace) -> None:
        """Simulate the combinations of each region's top layouts, and measure how far each
        combination's prediction is from its regions' gains added up."""
        serial = vs.serial()
        tops, gains = [], []
        for r in range(len(vs.regions)):
            results = self.pass_results.get((vs.variant, r), [])
            tops.append([rl for rl, _ in results[:self.top]] or [serial[r]])
            base = self.pass_base[(vs.variant, r)]
            gains.append({rl: c.predicted.us - base for rl, c in results})
        base_us = self.evaluate(space, [serial])[0].predicted.us
        combos = [list(p) for p in itertools.product(*tops)]
        for parts, c in zip(combos, self.evaluate(space, combos)):
            if all(rl.serial or rl in g for rl, g in zip(parts, gains)):
                added = base_us + sum(g.get(rl, 0.0) for rl, g in zip(parts, gains))
                self.tally.combine_error_us = max(self.tally.combine_error_us, abs(added - c.predicted.us))


def prediction_key(rl: RegionLayout, space: Space, pairs: frozenset[tuple[str, str]], lanes: LaneModel) -> tuple:
    """What the profile can tell apart: on CUDA lanes the dispatch order of kernels released
    together matters to the simulator only for pairs it measured (`pairs`), so the other release
    orders drop out; on HIP every release order may pick other queues."""
    if lanes.kind == "hip":
        return rl.key
    names = space.names
    measured = tuple(g for g in rl.releases if any((names[rl.nodes[a]], names[rl.nodes[b]]) in pairs
                                                   for a in g for b in g if a != b))
    return (rl.streams, rl.ancestors, measured)
