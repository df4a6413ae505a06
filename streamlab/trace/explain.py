"""Why a trace's steps take what they take, and what they would take otherwise: the analyses
that need the trace's dependency graph, run together for `streamlab trace summary`.

- dependencies (deps): stream order plus what the trace knows of cross-stream waits;
- the critical path (critical) of the step of median span, with the kernels off the path that
  came closest to it;
- exposed communication (comm), and with several ranks' traces the arrival skew at each
  collective;
- what-if (whatif): the graph replayed with `--what-if` changes;
- roofline per node (roofline), where the trace's kernels map to layer nodes.
"""

from __future__ import annotations

from dataclasses import dataclass

from streamlab.trace.comm import ExposedComm, RankSkew, exposed_comm, rank_skew
from streamlab.trace.critical import CriticalPath, critical_path, slack, step_spans
from streamlab.trace.deps import DepGraph, for_trace
from streamlab.trace.roofline import Roofline, hardware_of, layer_of, roofline
from streamlab.trace.summary import TraceReport
from streamlab.trace.whatif import WhatIf, parse_change, what_if

NEAR = 5  # kernels off the path listed as nearly critical


@dataclass(frozen=True)
class NearCritical:
    """A kernel off the critical path, and how much later it could have ended without delaying
    the step."""

    name: str
    stream: str
    slack: float

    def to_json(self) -> dict:
        return {"kernel": self.name, "stream": self.stream, "slack_us": self.slack}


@dataclass(frozen=True)
class Explained:
    graph: DepGraph
    spans: tuple[float, ...]  # per step with kernels: first start to last end (us)
    path: CriticalPath | None  # of the step of median span; None without steps
    near_critical: tuple[NearCritical, ...]  # off the path, least slack first
    exposed: ExposedComm | None
    skew: RankSkew | None
    what_if: WhatIf | None
    roofline: Roofline

    def to_json(self) -> dict:
        return {
            "dependencies": {"origin": self.graph.origin, "note": self.graph.note,
                             "steps": self.graph.steps},
            "step_span_us": list(self.spans),
            "critical_path": None if self.path is None else {
                **self.path.to_json(), "near_critical": [n.to_json() for n in self.near_critical]},
            "exposed_communication": self.exposed.to_json() if self.exposed else None,
            "rank_skew": self.skew.to_json() if self.skew else None,
            "what_if": self.what_if.to_json() if self.what_if else None,
            "roofline": self.roofline.to_json(),
        }


def explain(report: TraceReport, *, ranks: list[TraceReport] = (),
            what_ifs: list[str] = ()) -> Explained:
    """Everything in the module doc for one trace (and its other ranks' traces)."""
    graph = for_trace(report.timeline, report.info)
    spans = step_spans(graph)
    path, near = None, ()
    if spans:
        steps = [k for k, m in enumerate(graph.members) if m]
        shown = steps[sorted(range(len(spans)), key=spans.__getitem__)[len(spans) // 2]]
        path = critical_path(graph, shown)
        on_path = {k.index for k in path.kernels}
        ivs = graph.timeline.intervals
        off = sorted((s, i) for i, s in slack(graph, shown).items() if i not in on_path)
        near = tuple(NearCritical(ivs[i].node or ivs[i].name, ivs[i].stream, s)
                     for s, i in off[:NEAR])
    changes = [parse_change(w, report.timeline) for w in what_ifs]
    layer, note = layer_of(report.timeline, report.path)
    return Explained(
        graph=graph, spans=tuple(spans), path=path, near_critical=near,
        exposed=exposed_comm(graph),
        skew=rank_skew([(r.path, r.timeline) for r in [report, *ranks]]) if ranks else None,
        what_if=what_if(graph, changes, summary=report.summary) if changes else None,
        roofline=roofline(report.summary, layer, hardware_of(report.summary.source.device), note))
