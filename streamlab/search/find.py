"""`streamlab search` as one function: every batch, every variant, ranked, placed and explained.

`find(request)` checks its input before any work (the profile must have measured every node of
a searched variant; there must be room for overlap), enumerates each variant's space once (the
space depends on the DAG only, not on the batch), runs the branch and bound of `rank` at each
batch, places every shipped scenario in the space, and explains the top layouts, the best
shipped one and serial from their simulated Timelines.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import streamlab
from streamlab.errors import EXIT_BAD_INPUT, Failure
from streamlab.layer import Variant
from streamlab.models import MODELS, RankDims, Shape
from streamlab.results import LayoutExplanation
from streamlab.scenario import Scenario, ScenarioError, load
from streamlab.schedule.graph import capture
from streamlab.search.bound import Costs, captured_graph, lower_bound
from streamlab.search.budgets import BudgetTally, budget_pass
from streamlab.search.enumerate import Limits, assemble, place, region_layouts
from streamlab.search.explain import explain
from streamlab.search.layout import Layout, build_program
from streamlab.search.predict import (
    Predicted,
    Simulator,
    default_workers,
    layer_at,
    predict,
)
from streamlab.search.rank import BatchSearch, Candidate, Tally, VariantSpace
from streamlab.search.space import MAX_STREAMS, Space
from streamlab.sim import DeviceProfile, kernel_warning, load_profile
from streamlab.sim.costs import device_units
from streamlab.sim.profile import variant_key
from streamlab.sim.profile_file import check_profile_for

SHIPPED = Path(streamlab.__file__).resolve().parent.parent / "scenarios"
VARIANT_FLAGS = ("fused_rope_cat_cache", "shared_expert_fused")  # flags that change the DAG


@dataclass(frozen=True)
class Request:
    model: str = "glm5"
    shape: Shape = field(default_factory=Shape)  # its batch is replaced by each of `batches`
    batches: tuple[int, ...] = (4,)
    profile: str = "h200"  # a shipped profile's name or a YAML path
    variant: Variant | None = None  # None: every variant whose nodes the profile measured
    limits: Limits = field(default_factory=Limits)
    layers: int = 4
    top: int = 5
    budget_s: float | None = None  # per batch
    workers: int = field(default_factory=default_workers)
    shipped: Path | None = SHIPPED  # folder of scenarios to place in the space
    budgets: tuple[float, ...] = ()  # shares of the SMs to try on overlapped pairs (search/budgets.py)


@dataclass(frozen=True)
class Ranked:
    """A simulated layout as reported: rank among everything simulated at its batch (1 = best)."""

    rank: int
    candidate: Candidate
    explanation: LayoutExplanation | None  # None for serial itself
    may_overlap: tuple[tuple[str, str], ...]  # node pairs on different lanes with nothing ordering them


@dataclass(frozen=True)
class Placed:
    """Where a shipped scenario lies in the space."""

    name: str
    path: str
    predicted: Predicted | None  # its own program simulated; None when its variant is not searched
    where: str  # in words
    serial: bool = False  # one stream
    candidate: int | None = None  # the rank of the candidate it is, when it was simulated
    explanation: LayoutExplanation | None = None


@dataclass(frozen=True)
class BatchOutcome:
    batch: int
    top: tuple[Ranked, ...]
    serial: Ranked
    shipped: tuple[Placed, ...]
    tally: Tally
    programs: int  # every way to write the layer on <= streams streams (exact waits, no barriers)
    budget: BudgetTally | None = None  # the budget pass, when --sm-budgets asked for one

    @property
    def best(self) -> Ranked:
        return self.top[0]

    @property
    def gap_us(self) -> float:
        """How much better than the best found a layout the search did not simulate could be."""
        return max(0.0, self.best.candidate.predicted.us - self.tally.floor)

    def best_shipped(self) -> Placed | None:
        placed = [p for p in self.shipped if p.predicted is not None and not p.serial]
        return min(placed, key=lambda p: p.predicted.us) if placed else None


@dataclass(frozen=True)
class SearchResult:
    request: Request
    profile: DeviceProfile
    variants: tuple[Variant, ...]
    skipped: tuple[tuple[Variant, str], ...]  # variants left out, and why
    warning: str | None  # the profile's kernels are not the installed ones (sim.kernel_warning)
    batches: tuple[BatchOutcome, ...]
    spaces: dict[Variant, VariantSpace]


Progress = Callable[[str, int | None, int], None]  # (what, total or None to add to it, advance)


def check_request(req: Request) -> None:
    if not 1 <= req.limits.streams <= MAX_STREAMS:
        raise Failure(f"--streams {req.limits.streams}: a layout runs on 1 to {MAX_STREAMS} streams",
                      EXIT_BAD_INPUT)
    if req.top < 1:
        raise Failure(f"--top {req.top}: give how many layouts to report, 1 or more", EXIT_BAD_INPUT)
    if req.layers < 1:
        raise Failure(f"--layers {req.layers}: give 1 or more layers per simulated graph", EXIT_BAD_INPUT)
    if req.limits.max_waits < 0 or req.limits.max_barriers < 0:
        raise Failure("--max-waits and --barriers take 0 or more", EXIT_BAD_INPUT)
    if req.budget_s is not None and req.budget_s <= 0:
        raise Failure(f"--budget {req.budget_s}: give seconds above 0", EXIT_BAD_INPUT)
    if not req.batches or min(req.batches) <= 0:
        raise Failure(f"--batch needs positive batch sizes, got {list(req.batches)}", EXIT_BAD_INPUT)
    try:
        RankDims(MODELS[req.model], req.shape)
    except ValueError as e:
        raise Failure(f"--model {req.model} at --tp {req.shape.tp}: {e}; pick a --tp that divides it",
                      EXIT_BAD_INPUT) from None


def variants(req: Request, profile: DeviceProfile) -> tuple[list[Variant], list[tuple[Variant, str]]]:
    """The variants to search: the one asked for, or every DAG variant the profile can simulate
    (`sim.profile_file.check_profile_for`: a measured profile must have measured every node of
    the variant; a profile of another model is scaled to this one, as `--model` asks)."""
    shape = replace(req.shape, batch=req.batches[0])
    if req.variant is not None:
        wanted = [req.variant]
    else:
        base = Variant()
        wanted = [replace(base, **dict(zip(VARIANT_FLAGS, flags)))
                  for flags in ((True, True), (True, False), (False, True), (False, False))]
    other = req.model != profile.provenance.shape.model
    keep, skipped = [], []
    for v in wanted:
        try:
            check_profile_for(profile, layer_at(req.model, shape, v), other_model=other)
        except Failure as e:
            skipped.append((v, str(e)))
            continue
        keep.append(v)
    if not keep:
        raise Failure(skipped[0][1] + ("" if len(skipped) == 1 else
                                       f" (and {len(skipped) - 1} more variants: none can be searched)"),
                      EXIT_BAD_INPUT)
    return keep, skipped


def room_for_overlap(req: Request, spaces: dict[Variant, VariantSpace]) -> None:
    """Fail when every searched space holds the serial layout alone."""
    for vs in spaces.values():
        for rs in vs.regions:
            if rs is None or len(rs) > 1:
                return
    why = (f"--streams {req.limits.streams}" if req.limits.streams == 1 else
           f"--max-waits {req.limits.max_waits}" if req.limits.max_waits < 2 else
           "no two nodes of the layer can run at the same time")
    raise Failure(f"no room for overlap: {why}, so serial is the only layout of {req.model}; "
                  "nothing to search (use --streams 2 or more)", EXIT_BAD_INPUT)


def find(req: Request, progress: Progress | None = None) -> SearchResult:
    check_request(req)
    profile = load_profile(req.profile)
    if req.budgets:
        device_units(profile)  # budgets need the device's SM count: fail before any work
    keep, skipped = variants(req, profile)
    note = progress or (lambda what, total, advance: None)
    t0 = time.perf_counter()
    spaces = {}
    for v in keep:
        note(f"enumerating {variant_key(v)}", None, 0)
        spaces[v] = VariantSpace.of(layer_at(req.model, replace(req.shape, batch=req.batches[0]), v), req.limits)
    enumerate_s = time.perf_counter() - t0
    room_for_overlap(req, spaces)
    # The listed spaces are millions of objects that live as long as the search: kept out of the
    # collector's passes, which would otherwise walk them again and again (a third of the time
    # spent simulating went to that).
    gc.freeze()
    sim = Simulator(req.model, req.shape, req.profile, req.layers, req.workers)
    try:
        outcomes = []
        for batch in req.batches:
            shape = replace(req.shape, batch=batch)
            deadline = time.monotonic() + (req.budget_s if req.budget_s is not None else math.inf)
            search = BatchSearch(req.model, shape, profile, list(spaces.values()), req.layers, req.top,
                                 deadline, sim, on_simulated=lambda n, b=batch: note(f"batch {b}", 0, n),
                                 on_total=lambda n, b=batch: note(f"batch {b}", n, 0))
            ranked = search.run()
            budget = None
            if req.budgets:
                note(f"batch {batch}: SM budgets", 0, 0)
                budget = budget_pass(search, ranked, req.budgets)
                ranked = search.board.ranked()
            search.tally.enumerate_s = enumerate_s
            outcomes.append(replace(_outcome(req, profile, search, ranked, spaces), budget=budget))
    finally:
        sim.close()
        gc.unfreeze()
    return SearchResult(req, profile, tuple(keep), tuple(skipped), kernel_warning(profile.provenance, profile.name),
                        tuple(outcomes), spaces)


def _outcome(req: Request, profile: DeviceProfile, search: BatchSearch, ranked: list[Candidate],
             spaces: dict[Variant, VariantSpace]) -> BatchOutcome:
    shape = search.shape
    default = next(iter(spaces))
    serial_space = search.space(default)
    serial_layout = Layout(default, (0,) * serial_space.size, tuple(range(serial_space.size)))
    position = {c.layout: i + 1 for i, c in enumerate(ranked)}
    serial_c = search.board.seen.get(serial_layout) or search.evaluate(serial_space, [spaces[default].serial()])[0]
    serial_p, serial_tl = predict("serial", serial_space.layer, build_program(serial_space, serial_layout), profile,
                                  req.layers)
    serial_c = replace(serial_c, predicted=serial_p)

    def ranked_entry(c: Candidate) -> Ranked:
        space = search.space(c.layout.variant)
        program = build_program(space, c.layout)
        p, timeline = predict(c.name, space.layer, program, profile, req.layers)
        return Ranked(position.get(c.layout, 0), replace(c, predicted=p), explain(timeline, serial_tl),
                      may_overlap(space, program))

    top = tuple(ranked_entry(c) for c in ranked[:req.top])
    serial = Ranked(position.get(serial_c.layout, 0), serial_c, None, ())
    shipped = tuple(_place_shipped(req, profile, search, spaces, position, serial_tl))
    space = Space.of(layer_at(req.model, shape, default))
    return BatchOutcome(shape.batch, top, serial, shipped, search.tally, space.programs(req.limits.streams))


def may_overlap(space: Space, program) -> tuple[tuple[str, str], ...]:
    """Node pairs on different streams with nothing ordering them: what the layout may run side by
    side, so what a profile must have measured for its prediction to rest on measurements."""
    g = capture(program, 1)
    index = {n: i for i, n in enumerate(space.names)}
    anc = {}
    for k in g.nodes:
        mask = 0
        for p in g.parents[k]:
            mask |= (1 << index[p[1]]) | anc[p]
        anc[k] = mask
    keys = list(g.nodes)
    out = []
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            if g.stream_of[a] != g.stream_of[b] and not anc[b] >> index[a[1]] & 1 and not anc[a] >> index[b[1]] & 1:
                out.append((a[1], b[1]))
    return tuple(out)


def shipped_scenarios(folder: Path | None) -> list[Path]:
    return sorted(folder.glob("*.yaml")) if folder is not None and folder.is_dir() else []


def _place_shipped(req: Request, profile: DeviceProfile, search: BatchSearch, spaces: dict[Variant, VariantSpace],
                   position: dict[Layout, int], serial_tl) -> list[Placed]:
    shape = search.shape
    out = []
    for path in shipped_scenarios(req.shipped):
        try:
            scen: Scenario = load(path).override(model=req.model, **vars(shape))
        except ScenarioError as e:
            out.append(Placed(path.stem, str(path), None, f"does not load at this shape: {e}"))
            continue
        if scen.variant not in spaces:
            out.append(Placed(scen.name, str(path), None, f"variant {variant_key(scen.variant)} not searched"))
            continue
        vs = spaces[scen.variant]
        space = search.space(scen.variant)
        predicted, timeline = predict(scen.name, scen.layer, scen.program, profile, req.layers)
        parts, problems = place(space, scen.program, vs.limits)
        explanation = explain(timeline, serial_tl)
        one = len(scen.program.streams) == 1
        if problems:
            out.append(Placed(scen.name, str(path), predicted, "outside the space: " + "; ".join(problems),
                              one, explanation=explanation))
            continue
        found = [_member(space, vs, r, p) for r, p in enumerate(parts)]
        if not all(found):
            out.append(Placed(scen.name, str(path), predicted, "outside the space: its waits order more than "
                              f"exact waits and {vs.limits.max_barriers} barrier(s) per region can", one,
                              explanation=explanation))
            continue
        layout, _ = assemble(space, found)
        rank = position.get(layout)
        exact = captured_graph(space.layer, build_program(space, layout), profile, req.layers)
        bound = lower_bound(Costs.of(space.layer, profile, multi_lane=exact.multi_lane), exact)
        threshold = search.board.threshold()
        where = (f"candidate {rank}" if rank else
                 f"in the space, left out by its bound {bound:.1f} us >= {threshold:.1f} us, the slowest of the top {req.top}"
                 if bound >= threshold else
                 "in the space, not simulated as such: it combines region layouts that were each beaten "
                 "in their own region" if len(found) > 1 else
                 "in the space, not simulated: the --budget ran out first")
        out.append(Placed(scen.name, str(path), predicted, where, one, rank, explanation))
    return out


def _member(space: Space, vs: VariantSpace, r: int, part):
    """The enumerated region layout with the same class as `part`, or None."""
    listed = vs.regions[r]
    if listed is None:  # a walked region: walk only the stream assignment in question
        listed = region_layouts(space, r, vs.limits,
                                prune=lambda j, streams, _: streams[j] != part.streams[j])
    return next((rl for rl in listed if rl.key == part.key), None)
