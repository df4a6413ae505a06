"""`streamlab trace`: the numbers of a PyTorch-profiler (Kineto) trace or of a streamlab run's
trace, and two traces side by side. Mounted by streamlab.cli as the `trace` sub-command."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from streamlab.errors import guard

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Per-layer latency, stalls, all-reduce and stream use from profiler traces.")
console = Console(highlight=False)

REGEX = typer.Option(None, "--layer-regex",
                     help="regex on kernel names marking the first kernel of a layer")
ARS = typer.Option(None, "--ars-per-layer",
                   help="all-reduce calls per layer (default 2 when the trace has all-reduces)")
NODES = typer.Option(None, "--nodes", help="YAML `node: [kernel-name regex, ...]` naming DAG nodes")
JSON = typer.Option(False, "--json", help="print JSON instead of tables")
TOP = typer.Option(25, "--top", help="kernels shown in the per-kernel table")
FILES = typer.Argument(..., help="trace: Kineto / Chrome JSON, plain or .gz; more than one: the "
                      "ranks of one run (the first is summarised, all give the skew at "
                      "collectives)", show_default=False)
WHAT_IF = typer.Option([], "--what-if",
                       help="KEY=VALUE, repeatable: replay the trace's dependency graph with KEY (a "
                            "kernel class: allreduce, attention, gemm, moe, norm, ...; a node; a "
                            "regex on kernel names; stall: all-stream-idle gaps >= 2 us) set to "
                            "VALUE (10us, 0.5x; stall=0)")
PLOT_OUT = typer.Option(None, "--out", help="folder for the critical-path plot (PNG and SVG)")
OFFSET = typer.Option(None, "--ar-offset",
                      help="all-reduces to skip at the start of each step before the first layer "
                           "(default: all-reduces per graph replay modulo --ars-per-layer)")


def _report(path: Path, layer_regex, ars_per_layer, nodes, ar_offset):
    from streamlab.trace.summary import summarize_trace

    return summarize_trace(path, layer_regex=layer_regex, ars_per_layer=ars_per_layer,
                           nodes=nodes, ar_offset=ar_offset)


@app.command()
@guard
def summary(files: list[Path] = FILES, layer_regex: Optional[str] = REGEX,
            ars_per_layer: Optional[int] = ARS, nodes: Optional[Path] = NODES,
            ar_offset: Optional[int] = OFFSET, as_json: bool = JSON, top: int = TOP,
            what_if: list[str] = WHAT_IF, out: Optional[Path] = PLOT_OUT):
    """Per-layer wall, kernel sum, overlap, bubble by gap class and stall sites, all-reduce per
    call, streams and per-kernel times over the steady-state decode layers of a trace; its
    critical path, exposed communication, roofline per node and what-ifs; with several ranks'
    traces, the skew between ranks at each collective."""
    from streamlab.report.trace_tables import print_explained
    from streamlab.trace.explain import explain
    from streamlab.trace.summary import print_report

    report, *ranks = [_report(f, layer_regex, ars_per_layer, nodes, ar_offset) for f in files]
    explained = explain(report, ranks=ranks, what_ifs=what_if)
    plots = []
    if out is not None:
        from streamlab.report.trace_plots import write_critical_path

        plots = write_critical_path(explained, report.path, out)
    if as_json:
        print(json.dumps({**report.to_dict(), **explained.to_json(), "plots": [str(p) for p in plots]},
                         indent=1, default=str))
    else:
        print_report(console, report, top)
        print_explained(console, explained)
        for p in plots:
            console.print(f"plot: {p}")


@app.command()
@guard
def diff(a: Path = typer.Argument(..., help="baseline trace", show_default=False),
         b: Path = typer.Argument(..., help="candidate trace", show_default=False),
         layer_regex: Optional[str] = REGEX, ars_per_layer: Optional[int] = ARS,
         nodes: Optional[Path] = NODES, ar_offset: Optional[int] = OFFSET, as_json: bool = JSON,
         top: int = typer.Option(10, "--top", help="kernels in the time-change table")):
    """Two traces side by side: per-layer wall, bubble classes, all-reduce per call, kernel count
    changes and the kernels whose time changed most (B - A)."""
    from streamlab.trace.summary import diff_reports, print_diff

    ra = _report(a, layer_regex, ars_per_layer, nodes, ar_offset)
    rb = _report(b, layer_regex, ars_per_layer, nodes, ar_offset)
    d = diff_reports(ra, rb, top)
    if as_json:
        print(json.dumps({**d, "summary_a": ra.to_dict(), "summary_b": rb.to_dict()}, indent=1,
                         default=str))
    else:
        print_diff(console, ra, rb, d)
