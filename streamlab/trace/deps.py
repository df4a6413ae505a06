"""Who waited for whom: the dependency graph of a Timeline's device work.

Every interval waits for the one before it on its stream (a stream runs its work in order). On
top of that, what the source knows:

- a streamlab run replays a captured graph whose edges come from the scenario (schedule.graph
  `capture`): `schedule.graph.capture_edges` turns them into Timeline edges, kernel to kernel;
  measured and simulated runs record them (exec.measure, session.run) and the Chrome trace
  carries them as flow events. A trace written before runs recorded them gets the same edges
  from its scenario file (`scenarios/<name>.yaml`, named in its source) when the trace's
  (layer, node) intervals match that scenario's graph; replay r + 1 waits for all of replay r
  (a graph launch waits for the previous one on its stream: `launch` edges);
- a Kineto trace from CUPTI records each cudaStreamWaitEvent as a `cuda_sync` event (kind
  "Stream Wait Event": the waiting `stream`, `wait_on_stream`, and the correlation id of the
  cudaEventRecord it waits for); with the correlation ids of the device operations (which
  increase in launch order) that is an edge from the last operation enqueued on the recorded
  stream before the record to the first one enqueued on the waiting stream after the wait.
  The loader reads them in its one pass over the file and resolves them to operations
  (kineto, assemble: `TraceInfo.event_edges`); here they are edges.
  roctracer's HIP calls carry no stream or event arguments, and a graph replay's event waits
  happened at capture, so there only stream order is known; `DepGraph.note` says so.

`DepGraph.steps` groups intervals into decode steps: graph replays (launch edges, or the
loader's replay windows, outside which an operation belongs to no step), else the whole trace is
one step.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from streamlab.errors import EXIT_BAD_INPUT, Failure
from streamlab.schedule.graph import capture_edges
from streamlab.timeline import Edge, Timeline
from streamlab.trace.loaded import TraceInfo

STREAM = "stream"  # the kind of a stream-order dependency (Edge kinds cover the rest)
SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"


class Dep(NamedTuple):
    """A dependency (a named tuple: a trace has one per device operation, a million at times)."""

    before: int  # index of the interval waited for
    kind: str  # stream | graph | event | launch


@dataclass(frozen=True)
class DepGraph:
    """What every interval of `timeline` waited for (same indices), and where that came from.
    Kept compact (a trace has a million operations at times): the stream predecessor of each
    interval as an array, the other edges by waiting interval; `deps(i)` joins them."""

    timeline: Timeline
    stream_pred: np.ndarray  # per interval: the one before it on its stream, -1 for none
    edges: dict[int, tuple[Dep, ...]]  # waiting interval -> its other dependencies
    origin: str  # recorded | scenario | events | stream
    note: str  # what the edges are, in words (printed with every result that uses them)
    step_of: np.ndarray  # per interval: its step (graph replay), 0.. in time order; -1 none
    steps: int

    @property
    def edges_known(self) -> bool:
        """Whether cross-stream waits are known (else only stream order is)."""
        return self.origin != "stream"

    def deps(self, i: int) -> tuple[Dep, ...]:
        """Interval i's dependencies; an edge from its stream predecessor replaces the stream
        dependency (it says more)."""
        extra = self.edges.get(i, ())
        p = int(self.stream_pred[i])
        if p >= 0 and all(d.before != p for d in extra):
            return (Dep(p, STREAM), *extra)
        return extra

    @functools.cached_property
    def members(self) -> tuple[tuple[int, ...], ...]:
        """Intervals of each step, in time order."""
        if self.steps == 0:
            return ()
        order = np.argsort(self.step_of, kind="stable")
        counts = np.bincount(self.step_of[self.step_of >= 0], minlength=self.steps)
        inside = order[int(np.count_nonzero(self.step_of < 0)):]
        return tuple(tuple(m.tolist()) for m in np.split(inside, np.cumsum(counts)[:-1]))


# --- building the graph -------------------------------------------------------------------

def for_trace(timeline: Timeline, info: TraceInfo) -> DepGraph:
    """The dependency graph of a loaded trace's timeline (see the module doc for what is known
    from which trace)."""
    streams = len({iv.stream for iv in timeline.intervals})
    if timeline.edges:
        return dependency_graph(timeline, origin="recorded",
                                note=f"stream order and the {len(timeline.edges)} graph edges "
                                     "recorded by the run")
    if info.format == "streamlab":
        edges, where = scenario_edges(timeline)
        if edges:
            return dependency_graph(timeline, origin="scenario", extra=edges,
                                    note=f"stream order and the graph edges of {where} (the "
                                         "trace predates recorded edges)")
        return dependency_graph(timeline, origin="stream",
                                note=f"stream order only ({streams} streams): no graph edges, as "
                                     f"{where}")
    if info.event_edges:
        missed = info.event_waits_unmatched
        return dependency_graph(timeline, origin="events", replays=info.replays,
                                extra=[Edge(a, b, "event") for a, b in info.event_edges],
                                note=f"stream order and {len(info.event_edges)} observed event waits "
                                     "(cudaStreamWaitEvent)"
                                     + (f"; {missed} waits name work outside the trace" if missed else ""))
    hip_waits = sum(v for k, v in info.runtime_by_name.items() if "StreamWaitEvent" in str(k))
    why = ("a graph replay: its edges were made at capture and are not in the trace"
           if info.replays else
           f"its {info.event_waits_unmatched} event waits name work outside the trace"
           if info.event_waits_unmatched else
           f"{hip_waits} stream waits whose streams the tracer did not record" if hip_waits else
           "no cross-stream waits recorded")
    return dependency_graph(timeline, origin="stream", replays=info.replays,
                            note=f"stream order only ({streams} streams): {why}")


def dependency_graph(timeline: Timeline, *, origin: str, note: str, extra: list[Edge] = (),
                     replays: list[tuple[float, float, int]] | None = None) -> DepGraph:
    """Stream order plus timeline.edges plus `extra`, with steps from launch edges or else the
    loader's replay windows. Raises Failure when an edge points backwards in time order (a
    file that claims a kernel waited for one that started after it)."""
    ivs = timeline.intervals
    ids: dict[str, int] = {}
    code = np.fromiter((ids.setdefault(iv.stream, len(ids)) for iv in ivs), np.int64, len(ivs))
    order = np.lexsort((np.arange(len(ivs)), code))  # by stream, then time order
    stream_pred = np.full(len(ivs), -1, np.int64)
    same = code[order[1:]] == code[order[:-1]]
    stream_pred[order[1:][same]] = order[:-1][same]
    edges: dict[int, list[Dep]] = {}
    launch_targets = set()
    for e in list(timeline.edges) + list(extra):
        if e.before >= e.after:
            a, b = ivs[e.before], ivs[e.after]
            raise Failure(f"dependency edge {a.node or a.name} ({a.start:.3f} us) -> {b.node or b.name}"
                          f" ({b.start:.3f} us): the waiting interval starts first; the edges do "
                          "not belong to this timeline", EXIT_BAD_INPUT)
        mine = edges.setdefault(e.after, [])
        if all(d.before != e.before for d in mine):
            mine.append(Dep(e.before, e.kind))
        if e.kind == "launch":
            launch_targets.add(e.after)
    step_of = _steps(timeline, launch_targets, replays)
    return DepGraph(timeline, stream_pred, {k: tuple(v) for k, v in edges.items()}, origin, note,
                    step_of, int(step_of.max(initial=-1)) + 1)


def _steps(timeline: Timeline, launch_targets: set[int],
           replays: list[tuple[float, float, int]] | None) -> np.ndarray:
    ivs = timeline.intervals
    starts = np.fromiter((iv.start for iv in ivs), np.float64, len(ivs))
    if launch_targets:
        cuts = np.unique([ivs[i].start for i in launch_targets])
        return np.searchsorted(cuts, starts, side="right")
    if replays:
        windows = np.array(sorted((start, end) for start, end, _ in replays), np.float64)
        k = np.searchsorted(windows[:, 0], starts, side="right") - 1
        inside = (k >= 0) & (starts <= windows[np.maximum(k, 0), 1])
        return np.where(inside, k, -1)
    return np.zeros(len(ivs), np.int64)


def scenario_edges(timeline: Timeline, scenarios: Path = SCENARIOS) -> tuple[list[Edge], str]:
    """Edges for a streamlab trace written before runs recorded them: from the scenario named in
    its source, if that file is there and its graph matches the trace. Returns ([], why not)
    otherwise."""
    from streamlab.scenario import load

    name = timeline.source.detail.get("scenario")
    if not name:
        return [], "the trace names no scenario"
    path = scenarios / f"{name}.yaml"
    if not path.is_file():
        return [], f"its scenario file {path} is not there"
    try:
        scen = load(path)
    except Failure as e:
        return [], f"its scenario file does not load ({e})"
    layers = max((iv.layer for iv in timeline.intervals if iv.layer is not None), default=-1) + 1
    per = scen.measure.layers
    if layers == 0 or layers % per:
        return [], f"{layers} layers in the trace are not whole replays of {per} ({path})"
    try:
        return capture_edges(timeline, scen.program, per), str(path)
    except ValueError as e:
        return [], f"the trace does not match the graph of {path}: {e}"
