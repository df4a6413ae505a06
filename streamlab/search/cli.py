"""`streamlab search`: parse options, call `find`, print, write the winners and their report."""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import fields
from pathlib import Path
from typing import Literal

import typer
from rich.console import Console

from streamlab import options as opt
from streamlab.errors import EXIT_BAD_INPUT, EXIT_CHECK_FAILED, Failure, guard
from streamlab.io import claim
from streamlab.layer import Variant
from streamlab.models import Shape
from streamlab.options import KvCache, Model
from streamlab.report.console import output_console
from streamlab.scenario import MAX_LAYERS
from streamlab.search.space import MAX_STREAMS

FOUND = Path("scenarios/found")


def _variant(text: str | None) -> Variant | None:
    """`flag=true,flag=false` over Variant's fields; flags left out keep their defaults."""
    if text is None:
        return None
    known = [f.name for f in fields(Variant)]
    values = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        key, _, value = item.partition("=")
        if key not in known or value.lower() not in ("true", "false"):
            raise Failure(f"--variant {text!r}: give flag=true|false, comma-separated, flags: {', '.join(known)}",
                          EXIT_BAD_INPUT)
        values[key] = value.lower() == "true"
    return Variant(**values)


@guard
def search(model: Model = typer.Option("glm5", help="model config"),
           batch: str = typer.Option("4", help="batch sizes to search, e.g. 4,64"),
           context: int = typer.Option(8192, help="context length (tokens) of every request",
                                       **opt.range_of("shape.context")),
           tp: int = typer.Option(8, help="tensor-parallel size", **opt.range_of("shape.tp")),
           page_size: int = typer.Option(64, "--page-size", help="KV cache page size", **opt.range_of("shape.page_size")),
           kv_cache: KvCache = typer.Option("fp8", "--kv-cache", help="KV cache dtype"),
           profile: str = typer.Option("h200", help="device profile: h200, h100, mi355x or a YAML path"),
           streams: int = typer.Option(2, min=1, max=MAX_STREAMS, help="streams a layout may use"),
           variant: str | None = typer.Option(None, help="fix the variant, e.g. shared_expert_fused=false "
                                                            "(default: every variant the profile measured)"),
           max_waits: int | None = typer.Option(None, min=0, max=64,
                                                help="cross-stream waits per region (default 2 x streams)"),
           barriers: int = typer.Option(1, min=0, max=64, help="barriers (every stream joined and forked) per region"),
           top: int = typer.Option(5, min=1, max=1000, help="layouts to report per batch"),
           layers: int = typer.Option(4, min=1, max=MAX_LAYERS,
                                      help="layers per simulated graph (a scenario's measure.layers)"),
           budget: float | None = typer.Option(None, min=0.001, max=86400.0,
                                               help="seconds per batch before the search stops and reports its "
                                                    "gap to the bound"),
           workers: int | None = typer.Option(None, min=1, max=256,
                                              help="processes simulating (default: the cores available, up to 8)"),
           sm_budgets: str | None = typer.Option(None, "--sm-budgets",
                                                 help="also try SM / CU budgets on the top layouts' overlapped "
                                                      "pairs: half, thirds, quarters or fractions such as 0.33,0.5"),
           out: Path = typer.Option(FOUND, file_okay=False, help="folder for the winners' scenario files and the "
                                                                  "report"),
           as_json: bool = typer.Option(False, "--json", help="print the result (kind search: candidates, "
                                                              "layouts, predictions, explanations) on stdout"),
           report: bool = typer.Option(True, help="write a compare report of winner, best shipped and serial"),
           shipped: Path | None = typer.Option(None, file_okay=False, exists=True,
                                               help="folder of scenarios to place in the space "
                                                    "(default: the shipped scenarios/)"),
           measure: bool = typer.Option(False, "--measure", help="prove it on this GPU: measure the overlaps the "
                                        "top K lack and search again, then measure the top K beside serial and the "
                                        "best shipped layout in fresh processes, outputs checked against serial"),
           rounds: int = typer.Option(2, min=1, max=1000, help="--measure: rounds, each measuring every layout once "
                                                               "in a fresh process (interleaved; G GPUs run G rounds "
                                                               "side by side)"),
           gpus: int | None = typer.Option(None, min=1, max=64, help="--measure: GPUs to measure on, one process "
                                                                     "each (default: every GPU torch sees)"),
           backend: Literal["auto", "triton", "aiter"] | None = typer.Option(None, help="--measure: kernels "
                                                                                  "(default: auto)"),
           work: Path | None = typer.Option(None, file_okay=False, help="--measure: folder for what was measured "
                                                                        "(default: OUT/measure.work)"),
           resume: bool = typer.Option(False, help="--measure: continue the measurement in the work folder"),
           force: bool = opt.FORCE):
    """Find the fastest stream layout of the layer on a device profile (simulated, no GPU).

    Enumerates every layout the DAG allows on --streams streams (up to equivalence: the same
    captured graph), simulates them in order of a lower bound until nothing left can enter the
    top K, and writes the winner of each batch as a scenario file. With --sm-budgets, each of the
    top K is tried again with the smaller node of each overlapped pair on a share of the SMs
    (CUs), ranked with the rest (the budget effect is modelled: sim/costs.py). With --measure, proves the top
    K on this GPU (streamlab.search.measure): the winner is then the measured fastest, its file
    says by how much, and --json prints the measurement (kind search-measure). Files that exist
    (the winners, the reports, the measurement) are refused before the search, unless --force; a
    --measure work folder that holds a measurement is refused unless --resume.

    Exit codes (errors.EXIT_CODES): 0 done; 1 (--measure) a layout's outputs differ from
    serial's (everything else still written); 64 bad input, which includes a search with no room
    for overlap (--streams 1, or a layer where no two nodes can run at once), a profile that
    lacks measured latencies for the model's nodes, or one not calibrated on this GPU with these
    kernels (--measure); 3 --measure without a GPU; 130 --measure interrupted (what was measured
    is kept: add --resume)."""
    from streamlab.search.budgets import parse_shares
    from streamlab.search.enumerate import Limits
    from streamlab.search.find import SHIPPED, Request, find
    from streamlab.search.predict import default_workers
    from streamlab.search.report import print_result, report_folder, write_report
    from streamlab.search.write import claim_winners, write_winners
    from streamlab.sim import load_profile

    batches = tuple(opt.batches(batch))
    shape = Shape(batch=batches[0], context=context, tp=tp, page_size=page_size, kv_cache=kv_cache)
    try:
        limits = Limits(streams, 2 * streams if max_waits is None else max_waits, barriers)
    except ValueError as e:
        raise Failure(f"--streams {streams}: {e}", EXIT_BAD_INPUT) from None
    req = Request(model=model, shape=shape, batches=batches, profile=profile, variant=_variant(variant),
                  limits=limits, layers=layers, top=top, budget_s=budget,
                  workers=workers or default_workers(), shipped=shipped or SHIPPED, budgets=parse_shares(sm_budgets))
    profile_name = load_profile(profile).name
    runner = None
    if measure:
        from streamlab.search.measure import GpuRunner, claim_measured, claim_work
        claim_work(work or out / "measure.work", resume=resume)
        claim_measured(req, profile_name, out, force=force, resume=resume)
        runner = GpuRunner(backend=backend, gpus=gpus)  # no GPU: one message before any work
    elif resume or work is not None:
        raise Failure("--resume and --work go with --measure", EXIT_BAD_INPUT)
    else:
        claim_winners(req, profile_name, out, force=force)
        if report:
            for b in batches:
                claim(report_folder(req, profile_name, b, out) / "report.json", force=force, what="search report")
    console = output_console(stderr=as_json)
    result = _searched(req, console, find)
    command = "streamlab search " + " ".join(shlex.quote(a) for a in sys.argv[2:] if a != "--resume")
    if runner is not None:
        _measured(req, result, runner, console, command, out=out, work=work, rounds=rounds, resume=resume,
                  as_json=as_json)
        return
    written = write_winners(result, out, command=command)
    if report:
        written += write_report(result, written, out, console, force=force)
    print_result(console, result)  # on stderr under --json, so stdout is the JSON object alone
    for path in written:
        console.print(f"wrote {path}", markup=False)
    if as_json:
        from streamlab.results import to_json
        from streamlab.search.report import ranking
        print(json.dumps(to_json(ranking(result, written)), indent=1))


def _measured(req, result, runner, console: Console, command: str, *, out: Path, work: Path | None, rounds: int,
              resume: bool, as_json: bool) -> None:
    """--measure: prove the top K on the GPU, print and write what it measured."""
    from streamlab.calibration.plan import load_layouts
    from streamlab.report.search_measure import print_measurement
    from streamlab.results import to_json
    from streamlab.search.find import find
    from streamlab.search.measure import Ask, prove
    from streamlab.search.report import print_result

    ask = Ask(req.top, rounds, out, work or out / "measure.work", command, resume, tuple(load_layouts(req.shipped)))
    proof = prove(req, result, ask, runner, console, lambda r: _searched(r, console, find))
    print_result(console, proof.result)
    print_measurement(console, proof.measurement)
    for path in proof.written:
        console.print(f"wrote {path}", markup=False)
    if as_json:
        print(json.dumps(to_json(proof.measurement), indent=1))
    if proof.differ:
        raise Failure("outputs differ from serial's (a race in the layout, or a kernel that is not deterministic): "
                      + ", ".join(proof.differ), EXIT_CHECK_FAILED)


def _searched(req, console: Console, find):
    with _progress(console) as note:
        return find(req, note)


class _progress:
    """A rich progress bar over enumeration and simulation, on terminals only."""

    def __init__(self, console: Console) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), console=console, transient=True,
                            disable=not console.is_terminal)
        self.tasks: dict[str, int] = {}

    def __enter__(self):
        self.bar.__enter__()

        def note(what: str, total: int | None, advance: int) -> None:
            if what not in self.tasks:
                self.tasks[what] = self.bar.add_task(what, total=0 if total is not None else None)
            task = self.tasks[what]
            if total:
                self.bar.update(task, total=(self.bar.tasks[task].total or 0) + total)
            if advance:
                self.bar.advance(task, advance)
        return note

    def __exit__(self, *exc) -> None:
        self.bar.__exit__(*exc)
