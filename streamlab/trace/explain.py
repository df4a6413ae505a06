"""Why a trace's steps take what they take, and what they would take otherwise: the analyses
that need the trace's dependency graph, run together for `streamlab trace summary`.

- dependencies (deps): stream order plus what the trace knows of cross-stream waits;
- the critical path (critical) of the step of median span, with the kernels off the path that
  came closest to it;
- exposed communication (comm), and with several ranks' traces the arrival skew at each
  collective;
- what-if (whatif): the graph replayed with `--what-if` changes;
- roofline per node (roofline), where the trace's kernels map to layer nodes.

`summarize_traces` is what `trace summary` calls: each trace read and measured
(summary.summarize_trace), the first explained with the others as its ranks; its typed summary
(results.TraceSummary) holds everything printed or written as JSON.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

from streamlab.results import TraceDependencies, TraceSummary
from streamlab.trace.comm import exposed_comm, rank_skew
from streamlab.trace.critical import critical_path, step_spans
from streamlab.trace.deps import DepGraph, for_trace
from streamlab.trace.roofline import hardware_of, layer_of, roofline
from streamlab.trace.summary import TraceReport, summarize_trace
from streamlab.trace.whatif import parse_change, what_if

__all__ = ["Explained", "explain", "summarize_traces"]


@dataclass(frozen=True)
class Explained:
    """A trace summary with what its dependency graph says, and the graph (for the critical
    path's plot); no graph for a trace that holds no step."""

    summary: TraceSummary
    graph: DepGraph | None


def explain(report: TraceReport, *, ranks: list[TraceReport] = (),
            what_ifs: list[str] = ()) -> Explained:
    """Everything in the module doc for one trace of steps (and its other ranks' traces)."""
    graph = for_trace(report.timeline, report.info)
    spans = step_spans(graph)
    path = None
    if spans:
        steps = [k for k, m in enumerate(graph.members) if m]
        path = critical_path(graph, steps[sorted(range(len(spans)), key=spans.__getitem__)[len(spans) // 2]])
    changes = [parse_change(w, report.timeline) for w in what_ifs]
    layer, note = layer_of(report.timeline, report.path)
    stats = report.stats
    return Explained(replace(
        report.summary,
        dependencies=TraceDependencies(graph.origin, graph.note, graph.steps, tuple(spans)),
        critical_path=path, exposed_communication=exposed_comm(graph),
        rank_skew=rank_skew([(r.path, r.timeline) for r in [report, *ranks]]) if ranks else None,
        what_if=what_if(graph, changes, summary=stats) if changes else None,
        roofline=roofline(stats, layer, hardware_of(stats.source.device), note)), graph)


def summarize_traces(paths: list[str | os.PathLike], *, layer_regex: str | None = None,
                     ars_per_layer: int | None = None, nodes: str | os.PathLike | None = None,
                     ar_offset: int | None = None, gpu: str | None = None,
                     what_ifs: list[str] = ()) -> Explained:
    """The summary of the first trace, explained, the others its ranks (see the module doc);
    a trace of no step (a capture, warm-up) only summarised."""
    report, *ranks = [summarize_trace(p, layer_regex=layer_regex, ars_per_layer=ars_per_layer,
                                      nodes=nodes, ar_offset=ar_offset, gpu=gpu) for p in paths]
    if report.summary.not_a_step is not None:
        return Explained(report.summary, None)
    return explain(report, ranks=ranks, what_ifs=what_ifs)
