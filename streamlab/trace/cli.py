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

FILE = typer.Argument(..., help="trace: Kineto / Chrome JSON, plain or .gz", show_default=False)
REGEX = typer.Option(None, "--layer-regex",
                     help="regex on kernel names marking the first kernel of a layer")
ARS = typer.Option(None, "--ars-per-layer",
                   help="all-reduce calls per layer (default 2 when the trace has all-reduces)")
NODES = typer.Option(None, "--nodes", help="YAML `node: [kernel-name regex, ...]` naming DAG nodes")
JSON = typer.Option(False, "--json", help="print JSON instead of tables")
TOP = typer.Option(25, "--top", help="kernels shown in the per-kernel table")
OFFSET = typer.Option(None, "--ar-offset",
                      help="all-reduces to skip at the start of each step before the first layer "
                           "(default: all-reduces per graph replay modulo --ars-per-layer)")


def _report(path: Path, layer_regex, ars_per_layer, nodes, ar_offset):
    from streamlab.trace.summary import summarize_trace

    return summarize_trace(path, layer_regex=layer_regex, ars_per_layer=ars_per_layer,
                           nodes=nodes, ar_offset=ar_offset)


@app.command()
@guard
def summary(file: Path = FILE, layer_regex: Optional[str] = REGEX,
            ars_per_layer: Optional[int] = ARS, nodes: Optional[Path] = NODES,
            ar_offset: Optional[int] = OFFSET, as_json: bool = JSON, top: int = TOP):
    """Per-layer wall, kernel sum, overlap, bubble by gap class and stall sites, all-reduce per
    call, streams and per-kernel times over the steady-state decode layers of a trace."""
    from streamlab.trace.summary import print_report

    report = _report(file, layer_regex, ars_per_layer, nodes, ar_offset)
    if as_json:
        print(json.dumps(report.to_dict(), indent=1, default=str))
    else:
        print_report(console, report, top)


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
