"""Communication in a trace: how much of each collective call other device work hid, and, with
several ranks' traces, how far apart the ranks arrived at each collective.

A call is the kernels of one collective node in one layer (our runs: the all-reduce kernel and
its copy), or one collective kernel where nodes are unknown; collectives are what
analysis.kernel_class calls allreduce / allgather / reducescatter / alltoall. *Exposed* is the
part of the call's time during which no other (non-collective) device work ran on any stream:
the time the step waits on communication alone; *hidden* is the rest.

Rank skew. A collective returns on all ranks together; a rank that arrives early waits inside
the collective kernel for the last one. So on each rank, the k-th call's duration minus the
shortest duration of that call over the ranks is how long that rank waited: the last rank to
arrive is the one with the shortest call, and the spread of arrivals is the longest duration
minus the shortest. This needs no common clock (each trace is rebased to its own first kernel),
but it assumes the calls' own work takes the same time on every rank (it does for an
all-reduce of one size on a symmetric topology). Calls are matched by their order in each
trace; traces whose collective sequences differ are compared on their common prefix, and
the result says so.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np

from streamlab.analysis import COLLECTIVE_CLASSES, Stat, busy_union, kernel_class
from streamlab.results import (
    Arrival,
    CollectiveRow,
    ExposedCommunication,
    RankSkew,
    RankWait,
)
from streamlab.timeline import Interval, Timeline
from streamlab.trace.deps import DepGraph

__all__ = ["CollectiveCall", "collective_calls", "exposed_comm", "is_collective", "rank_skew"]


@dataclass(frozen=True)
class CollectiveCall:
    """One collective call: the kernels of one collective node in one layer, or one kernel."""

    name: str  # node, else kernel name
    cls: str
    layer: int | None
    step: int
    start: float
    duration: float  # the call's own busy time (union of its kernels)
    exposed: float

    @property
    def hidden(self) -> float:
        return self.duration - self.exposed


def is_collective(iv: Interval) -> bool:
    return kernel_class(iv) in COLLECTIVE_CLASSES


def collective_calls(timeline: Timeline, step_of: np.ndarray | None = None) -> list[CollectiveCall]:
    """Every collective call of the timeline in time order, with its exposed time (`step_of`:
    DepGraph.step_of, per interval; None: all in step 0)."""
    ivs = timeline.intervals
    comm = [is_collective(iv) for iv in ivs]
    other = busy_union([iv for iv, c in zip(ivs, comm) if not c])
    starts = [s for s, _ in other]
    groups: dict[object, list[int]] = {}
    for i in (i for i, c in enumerate(comm) if c):
        iv = ivs[i]
        key = (iv.layer, iv.node) if iv.node is not None and iv.layer is not None else i
        groups.setdefault(key, []).append(i)
    out = []
    for members in groups.values():
        own = busy_union([ivs[i] for i in members])
        first = ivs[members[0]]
        out.append(CollectiveCall(
            name=first.node or first.name, cls=kernel_class(first), layer=first.layer,
            step=int(step_of[members[0]]) if step_of is not None else 0, start=own[0][0],
            duration=sum(e - s for s, e in own),
            exposed=sum(_uncovered(s, e, other, starts) for s, e in own)))
    return sorted(out, key=lambda c: c.start)


def _uncovered(s: float, e: float, busy: list[tuple[float, float]], starts: list[float]) -> float:
    """Length of [s, e) outside the (sorted, disjoint) busy periods."""
    k = max(bisect.bisect_right(starts, s) - 1, 0)
    covered = 0.0
    while k < len(busy) and busy[k][0] < e:
        covered += max(0.0, min(e, busy[k][1]) - max(s, busy[k][0]))
        k += 1
    return (e - s) - covered


def exposed_comm(graph: DepGraph) -> ExposedCommunication | None:
    """Exposed and hidden time of every collective call (None when the trace has none);
    the rows and per-layer totals cover the steady layers when the timeline has them."""
    calls = collective_calls(graph.timeline, graph.step_of)
    if not calls:
        return None
    layered = [c for c in calls if c.layer is not None]
    counted = layered or calls
    by_name: dict[tuple[str, str], list[CollectiveCall]] = {}
    for c in counted:
        by_name.setdefault((c.name, c.cls), []).append(c)
    rows = tuple(CollectiveRow(
        name=name, kernel_class=cls, calls=len(cs), duration_us=Stat.of([c.duration for c in cs]),
        exposed_us=Stat.of([c.exposed for c in cs]),
        exposed_share=sum(c.exposed for c in cs) / max(sum(c.duration for c in cs), 1e-12))
        for (name, cls), cs in by_name.items())
    per_layer: dict[int, float] = {iv.layer: 0.0 for iv in graph.timeline.intervals
                                   if iv.layer is not None}
    for c in layered:
        per_layer[c.layer] += c.exposed
    per_step = [0.0] * max(graph.steps, 1)
    for c in calls:
        if c.step >= 0:
            per_step[c.step] += c.exposed
    return ExposedCommunication(rows, Stat.of(list(per_layer.values())) if per_layer else None,
                                Stat.of(per_step))


# --- several ranks ----------------------------------------------------------------------------

def rank_skew(traces: list[tuple[str, Timeline]]) -> RankSkew | None:
    """Arrival skew at each collective over several ranks' traces (see the module doc); None
    when fewer than two traces or no collective in one of them."""
    if len(traces) < 2:
        return None
    seqs = [collective_calls(tl) for _, tl in traces]
    n = min(len(s) for s in seqs)
    if n == 0:
        return None
    names = [[c.name for c in s] for s in seqs]
    agree = n
    for k in range(n):
        if len({ns[k] for ns in names}) > 1:
            agree = k
            break
    lengths = sorted({len(s) for s in seqs})
    note = (f"{n} calls on every rank, same names in order" if len(lengths) == 1 and agree == n
            else f"collective sequences differ (calls per rank {', '.join(map(str, lengths))}; "
                 f"names agree for the first {agree}): the first {agree} compared")
    arrivals = []
    for k in range(agree):
        durations = [s[k].duration for s in seqs]
        shortest = min(durations)
        arrivals.append(Arrival(k, seqs[0][k].name, tuple(d - shortest for d in durations),
                                durations.index(shortest)))
    if not arrivals:
        return None
    ranks = tuple(name for name, _ in traces)
    per_rank = tuple(RankWait(rank, sum(a.last_rank == r for a in arrivals),
                              Stat.of([a.wait_us[r] for a in arrivals])) for r, rank in enumerate(ranks))
    return RankSkew(ranks, note, Stat.of([a.spread_us for a in arrivals]), per_rank, tuple(arrivals))
