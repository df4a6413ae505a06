"""`streamlab search`: parse options, call `find`, print, write the winners and their report."""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import fields
from pathlib import Path

import typer
from rich.console import Console

from streamlab.errors import EXIT_BAD_INPUT, EXIT_CHECK_FAILED, Failure, guard
from streamlab.layer import Variant
from streamlab.models import MODELS, Shape

FOUND = Path("scenarios/found")


def _batches(text: str) -> tuple[int, ...]:
    try:
        out = tuple(int(b) for b in text.split(",") if b.strip())
    except ValueError:
        raise Failure(f"--batch takes a comma-separated list of integers, got {text!r}", EXIT_BAD_INPUT) from None
    if not out or min(out) <= 0:
        raise Failure(f"--batch needs positive batch sizes, got {text!r}", EXIT_BAD_INPUT)
    return out


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
def search(model: str = typer.Option("glm5", help="model config: " + ", ".join(MODELS)),
           batch: str = typer.Option("4", help="batch sizes to search, e.g. 4,64"),
           context: int = typer.Option(8192, help="context length (tokens) of every request"),
           tp: int = typer.Option(8, help="tensor-parallel size"),
           page_size: int = typer.Option(64, "--page-size", help="KV cache page size"),
           kv_cache: str = typer.Option("fp8", "--kv-cache", help="KV cache dtype: fp8 or bf16"),
           profile: str = typer.Option("h200", help="device profile: h200, h100, mi355x or a YAML path"),
           streams: int = typer.Option(2, help="streams a layout may use, 1 to 4"),
           variant: str | None = typer.Option(None, help="fix the variant, e.g. shared_expert_fused=false "
                                                            "(default: every variant the profile measured)"),
           max_waits: int | None = typer.Option(None, help="cross-stream waits per region (default 2 x streams)"),
           barriers: int = typer.Option(1, help="barriers (every stream joined and forked) per region"),
           top: int = typer.Option(5, help="layouts to report per batch"),
           layers: int = typer.Option(4, help="layers per simulated graph (a scenario's measure.layers)"),
           budget: float | None = typer.Option(None, help="seconds per batch before the search stops and "
                                                             "reports its gap to the bound"),
           workers: int | None = typer.Option(None, help="processes simulating (default: the cores available, up to 8)"),
           sm_budgets: str | None = typer.Option(None, "--sm-budgets",
                                                  help="also try SM / CU budgets on the top layouts' overlapped "
                                                       "pairs: half, thirds, quarters or fractions such as 0.33,0.5"),
           out: Path = typer.Option(FOUND, help="folder for the winners' scenario files and the report"),
           as_json: bool = typer.Option(False, "--json", help="print one JSON object (candidates, layouts, "
                                                              "predictions, explanations) on stdout"),
           report: bool = typer.Option(True, help="write a compare report of winner, best shipped and serial"),
           shipped: Path | None = typer.Option(None, help="folder of scenarios to place in the space "
                                                             "(default: the shipped scenarios/)"),
           measure: bool = typer.Option(False, "--measure", help="prove it on this GPU: measure the overlaps the "
                                        "top K lack and search again, then measure the top K beside serial and the "
                                        "best shipped layout in fresh processes, outputs checked against serial"),
           rounds: int = typer.Option(2, help="--measure: rounds, each measuring every layout once in a fresh "
                                              "process (interleaved; G GPUs run G rounds side by side)"),
           gpus: int | None = typer.Option(None, help="--measure: GPUs to measure on, one process each "
                                                      "(default: every GPU torch sees)"),
           backend: str | None = typer.Option(None, help="--measure: kernels: auto, triton, aiter"),
           work: Path | None = typer.Option(None, help="--measure: folder for what was measured "
                                                       "(default: OUT/measure.work)"),
           resume: bool = typer.Option(False, help="--measure: continue the measurement in the work folder")):
    """Find the fastest stream layout of the layer on a device profile (simulated, no GPU).

    Enumerates every layout the DAG allows on --streams streams (up to equivalence: the same
    captured graph), simulates them in order of a lower bound until nothing left can enter the
    top K, and writes the winner of each batch as a scenario file. With --sm-budgets, each of the
    top K is tried again with the smaller node of each overlapped pair on a share of the SMs
    (CUs), ranked with the rest (the budget effect is modelled: sim/costs.py). With --measure, proves the top
    K on this GPU (streamlab.search.measure): the winner is then the measured fastest, its file
    says by how much, and --json prints the measurement (kind search-measure). Exit codes: 0 done;
    1 (--measure) a layout's outputs differ from serial's (everything else still written); 2 bad
    input, which includes a search with no room for overlap (--streams 1, or a layer where no two
    nodes can run at once) and a profile that lacks measured latencies for the model's nodes, or
    one not calibrated on this GPU with these kernels (--measure); 3 --measure without a GPU;
    130 --measure interrupted (what was measured is kept: add --resume)."""
    from streamlab.search.budgets import parse_shares
    from streamlab.search.enumerate import Limits
    from streamlab.search.find import SHIPPED, Request, find
    from streamlab.search.predict import default_workers
    from streamlab.search.report import print_result, write_report
    from streamlab.search.write import write_winners

    if model not in MODELS:
        raise Failure(f"--model {model!r}: known models are {', '.join(MODELS)}", EXIT_BAD_INPUT)
    if kv_cache not in ("fp8", "bf16"):
        raise Failure(f"--kv-cache {kv_cache!r}: fp8 or bf16", EXIT_BAD_INPUT)
    if workers is not None and workers < 1:
        raise Failure(f"--workers {workers}: 1 or more", EXIT_BAD_INPUT)
    batches = _batches(batch)
    shape = Shape(batch=batches[0], context=context, tp=tp, page_size=page_size, kv_cache=kv_cache)
    if any(v <= 0 for v in (context, tp, page_size)):
        raise Failure("--context, --tp and --page-size must be positive", EXIT_BAD_INPUT)
    if not 1 <= streams <= 4:
        raise Failure(f"--streams {streams}: a layout runs on 1 to 4 streams", EXIT_BAD_INPUT)
    try:
        limits = Limits(streams, 2 * streams if max_waits is None else max_waits, barriers)
    except ValueError as e:
        raise Failure(f"--streams {streams}: {e}", EXIT_BAD_INPUT) from None
    req = Request(model=model, shape=shape, batches=batches, profile=profile, variant=_variant(variant),
                  limits=limits, layers=layers, top=top, budget_s=budget,
                  workers=workers or default_workers(), shipped=shipped or SHIPPED, budgets=parse_shares(sm_budgets))
    runner = None
    if measure:
        from streamlab.search.measure import GpuRunner
        if rounds < 1:
            raise Failure(f"--rounds {rounds}: 1 or more", EXIT_BAD_INPUT)
        runner = GpuRunner(backend=backend, gpus=gpus)  # no GPU: one message before any work
    elif resume or work is not None:
        raise Failure("--resume and --work go with --measure", EXIT_BAD_INPUT)
    console = Console(stderr=as_json, highlight=False)
    result = _searched(req, console, find)
    command = "streamlab search " + " ".join(shlex.quote(a) for a in sys.argv[2:] if a != "--resume")
    if runner is not None:
        _measured(req, result, runner, console, command, out=out, work=work, rounds=rounds, resume=resume,
                  as_json=as_json)
        return
    written = write_winners(result, out, command=command)
    if report:
        written += write_report(result, written, out, console)
    print_result(console, result)  # on stderr under --json, so stdout is the JSON object alone
    for path in written:
        console.print(f"wrote {path}")
    if as_json:
        from streamlab.search.report import to_json
        print(json.dumps(to_json(result, written), indent=1))


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
        console.print(f"wrote {path}")
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
