"""`streamlab trace`: the numbers of a profiler trace (Kineto, rocprofv3 JSON / CSV / rocpd,
Perfetto, Nsight Systems SQLite; told apart by content) or of a streamlab run's trace, and two
traces side by side. Mounted by streamlab.cli as the `trace` sub-command. Each command parses its
options, calls one function (trace.explain.summarize_traces, trace.summary.diff_traces) and
prints its typed result (results.TraceSummary, results.TraceDiff) through streamlab.report, or
as JSON through results.to_json.

Exit codes (errors.EXIT_CODES): 0 done; 64 (EXIT_BAD_INPUT) a file or option that cannot be
read, or plots that exist (--force replaces them); 4 (EXIT_NOT_A_STEP) `summary` of a trace that
records a graph capture or warm-up only (it prints what it found and the step to record instead;
`diff` refuses such a trace with the same code). Under --json every outcome is one JSON object.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import typer

from streamlab.errors import EXIT_NOT_A_STEP, commands_class, exit_codes_help, guard
from streamlab.report.console import output_console
from streamlab.results import to_json

app = typer.Typer(cls=commands_class(), add_completion=False, no_args_is_help=True,
                  pretty_exceptions_enable=False, epilog=exit_codes_help(),
                  help="Per-layer latency, stalls, all-reduce and stream use from profiler traces.")
console = output_console()

FILES = typer.Argument(..., show_default=False,
                       help="trace: Kineto / Chrome JSON, rocprofv3 JSON or kernel_trace.csv, rocpd "
                            "or Nsight Systems SQLite, Perfetto .pftrace; gzip allowed; more than "
                            "one: the ranks of one run (the first is summarised, all give the skew "
                            "at collectives)")
REGEX = typer.Option(None, "--layer-regex",
                     help="regex on kernel names marking the first kernel of a layer")
ARS = typer.Option(None, "--ars-per-layer", min=1, max=64,
                   help="all-reduce calls per layer (default 2 when the trace has all-reduces)")
NODES = typer.Option(None, "--nodes", help="YAML `node: [kernel-name regex, ...]` naming DAG nodes")
JSON = typer.Option(False, "--json", help="print JSON instead of tables")
TOP = typer.Option(25, "--top", min=0, max=100000, help="kernels shown in the per-kernel table")
WHAT_IF = typer.Option([], "--what-if",
                       help="KEY=VALUE, repeatable: replay the trace's dependency graph with KEY (a "
                            "kernel class: allreduce, attention, gemm, moe, norm, ...; a node; a "
                            "regex on kernel names; stall: all-stream-idle gaps >= 2 us) set to "
                            "VALUE (10us, 0.5x; stall=0)")
PLOT_OUT = typer.Option(None, "--out", file_okay=False, help="folder for the critical-path plot (PNG and SVG)")
FORCE = typer.Option(False, "--force", help="replace plots that exist (without it they are refused)")
OFFSET = typer.Option(None, "--ar-offset", min=0, max=1000,
                      help="all-reduces to skip at the start of each step before the first layer "
                           "(default: all-reduces per graph replay modulo --ars-per-layer)")
BASELINE = typer.Argument(..., help="baseline trace", show_default=False)
CANDIDATE = typer.Argument(..., help="candidate trace", show_default=False)
DIFF_TOP = typer.Option(10, "--top", min=0, max=100000, help="kernels in the time-change table")
GPU = typer.Option(None, "--gpu", help="the GPU to summarise when the trace holds several (its id "
                                       "as the trace numbers it; default: the one with the most "
                                       "device time)")


def _json(obj) -> None:
    print(json.dumps(to_json(obj), indent=1, allow_nan=False))


@app.command()
@guard
def summary(files: list[Path] = FILES, layer_regex: str | None = REGEX,
            ars_per_layer: int | None = ARS, nodes: Path | None = NODES,
            ar_offset: int | None = OFFSET, as_json: bool = JSON, top: int = TOP,
            what_if: list[str] = WHAT_IF, out: Path | None = PLOT_OUT, gpu: str | None = GPU,
            force: bool = FORCE):
    """Per-layer wall, kernel sum, overlap, bubble by gap class and stall sites, all-reduce per
    call, streams, hardware queues, per-kernel times and each step's time split into layers,
    other work and idle, over the steady-state decode layers of a trace; its critical path,
    exposed communication, roofline per node and what-ifs; with several ranks' traces, the skew
    between ranks at each collective. Exits 4 for a trace of a graph capture or of warm-up
    only."""
    from streamlab.report.trace_view import print_summary
    from streamlab.trace.explain import summarize_traces

    if out is not None:
        from streamlab.io import claim
        from streamlab.report.trace_plots import critical_path_files
        for path in critical_path_files(files[0], out):
            claim(path, force=force, what="plot")
    explained = summarize_traces(files, layer_regex=layer_regex, ars_per_layer=ars_per_layer,
                                 nodes=nodes, ar_offset=ar_offset, gpu=gpu, what_ifs=what_if)
    result = explained.summary
    if out is not None and explained.graph is not None and result.critical_path is not None:
        from streamlab.report.trace_plots import write_critical_path

        plots = write_critical_path(explained.graph, result.critical_path, result.file, out)
        result = replace(result, plots=tuple(str(p) for p in plots))
    if as_json:
        _json(result)
    else:
        print_summary(console, result, top)
        for p in result.plots:
            console.print(f"plot: {p}", markup=False)
    if result.not_a_step is not None:
        raise typer.Exit(EXIT_NOT_A_STEP)


@app.command()
@guard
def diff(a: Path = BASELINE, b: Path = CANDIDATE, layer_regex: str | None = REGEX, ars_per_layer: int | None = ARS,
         nodes: Path | None = NODES, ar_offset: int | None = OFFSET, as_json: bool = JSON,
         top: int = DIFF_TOP, gpu: str | None = GPU):
    """Two traces side by side: per-layer wall, bubble classes, all-reduce per call, kernel count
    changes and the kernels whose time changed most (B - A)."""
    from streamlab.report.trace_view import print_diff
    from streamlab.trace.summary import diff_traces

    d = diff_traces(a, b, layer_regex=layer_regex, ars_per_layer=ars_per_layer, nodes=nodes,
                    ar_offset=ar_offset, gpu=gpu, top=top)
    if as_json:
        _json(d)
    else:
        print_diff(console, d)
