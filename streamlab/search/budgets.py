"""SM / CU budgets in the search (`streamlab search --sm-budgets`): after the stream layouts are
ranked, each of the top layouts is tried again with budgets.

For a ranked layout, its simulated replay says which compute kernels ran side by side
(`Overlap`); for each such pair and each share asked (`--sm-budgets half` = 0.5, or fractions such
as 0.25,0.5,0.75), the node with less standalone work gets that share of the device's SMs (CUs)
as its budget (`Layout.options`, a scenario's `sms:`), so that the larger one keeps the rest, as
SGLang gives DeepGEMM half the SMs in its dual-stream indexer. Every budgeted variant is
simulated (the budget model: sim/costs.py `BudgetCosts`) and ranked with the rest on the same
board, so it wins only where the model predicts it faster than every plain layout.

What this leaves out, said where the result is reported: budgets on layouts outside the top K
of the plain search, budgets on both nodes of a pair, and budgets on a node whose overlap only
a budget would create. Each budgeted variant keeps its layout's lower bound (a budget never
makes a node faster alone, so the plain layout's bound still holds).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from streamlab.errors import EXIT_BAD_INPUT, Failure
from streamlab.search.layout import Layout, build_program
from streamlab.search.predict import Predicted, rank_overlaps, rank_us
from streamlab.search.rank import BatchSearch, Candidate
from streamlab.search.space import Space
from streamlab.sim import DeviceProfile
from streamlab.sim.costs import device_units, node_costs

NAMED = {"half": (0.5,), "thirds": (1 / 3, 2 / 3), "quarters": (0.25, 0.5, 0.75)}


def parse_shares(text: str | None) -> tuple[float, ...]:
    """`--sm-budgets`: a name (half, thirds, quarters) or comma-separated fractions in (0, 1)."""
    if text is None:
        return ()
    if text in NAMED:
        return NAMED[text]
    try:
        shares = tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        shares = ()
    if not shares or not all(0 < f < 1 for f in shares):
        raise Failure(f"--sm-budgets {text!r}: give {', '.join(NAMED)} or fractions of the device's SMs between 0 "
                      "and 1, comma-separated (e.g. 0.33,0.5)", EXIT_BAD_INPUT)
    return tuple(sorted(set(shares)))


def budget_sms(share: float, units: int) -> int:
    """A share of `units` SMs as a budget: at least 1, short of the whole device."""
    return min(units - 1, max(1, round(share * units)))


@dataclass(frozen=True)
class BudgetTally:
    """What the budget pass did at one batch."""

    shares: tuple[float, ...]
    units: int
    tried: int  # budgeted layouts simulated
    layouts: int  # plain layouts they came from


def budget_variants(space: Space, layout: Layout, profile: DeviceProfile, shares: tuple[float, ...],
                    layers: int) -> list[Layout]:
    """The layout with one budget each: for every pair its replay overlaps, the node with less
    standalone work at each share (module docstring)."""
    units = device_units(profile)
    _, overlaps = rank_overlaps(space.layer, build_program(space, layout), profile, layers)
    costs = node_costs(space.layer, profile)
    alone = dict(zip(costs.names, costs.alone_us))
    index = {name: i for i, name in enumerate(space.names)}
    smaller = dict.fromkeys(min((o.first, o.second), key=lambda n: alone[n]) for o in overlaps)
    out = []
    for name in smaller:
        for share in shares:
            options = dict(layout.options)
            options[index[name]] = tuple(sorted({**dict(options.get(index[name], ())),
                                                 "sms": budget_sms(share, units)}.items()))
            out.append(replace(layout, options=tuple(sorted(options.items()))))
    return list(dict.fromkeys(out))


def budget_pass(search: BatchSearch, ranked: list[Candidate], shares: tuple[float, ...]) -> BudgetTally:
    """Budgeted variants of the top K plain layouts of `search` simulated onto its board."""
    tried = 0
    bases = [c for c in ranked[:search.top] if not c.layout.options]
    for c in bases:
        space = search.space(c.layout.variant)
        for layout in budget_variants(space, c.layout, search.profile, shares, search.layers):
            if layout in search.board.seen:
                continue
            us = rank_us(space.layer, build_program(space, layout), search.profile, search.layers)
            search.board.add(Candidate(layout, layout.describe(space), Predicted(us), c.bound))
            tried += 1
    search.tally.simulated += tried
    search.tally.considered += tried
    return BudgetTally(shares, device_units(search.profile), tried, len(bases))
