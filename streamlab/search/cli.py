"""`streamlab search`: parse options, call `find`, print, write the winners and their report."""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import fields
from pathlib import Path

import typer
from rich.console import Console

from streamlab.errors import EXIT_BAD_INPUT, Failure, guard
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
                                                             "(default: the shipped scenarios/)")):
    """Find the fastest stream layout of the layer on a device profile (simulated, no GPU).

    Enumerates every layout the DAG allows on --streams streams (up to equivalence: the same
    captured graph), simulates them in order of a lower bound until nothing left can enter the
    top K, and writes the winner of each batch as a scenario file. With --sm-budgets, each of the
    top K is tried again with the smaller node of each overlapped pair on a share of the SMs
    (CUs), ranked with the rest (the budget effect is modelled: sim/costs.py). Exit codes: 0 done; 2 bad input,
    which includes a search with no room for overlap (--streams 1, or a layer where no two nodes
    can run at once) and a profile that lacks measured latencies for the model's nodes."""
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
    console = Console(stderr=as_json, highlight=False)
    with _progress(console) as note:
        result = find(req, note)
    command = "streamlab search " + " ".join(shlex.quote(a) for a in sys.argv[2:])
    written = write_winners(result, out, command=command)
    if report:
        written += write_report(result, written, out, console)
    print_result(console, result)  # on stderr under --json, so stdout is the JSON object alone
    for path in written:
        console.print(f"wrote {path}")
    if as_json:
        from streamlab.search.report import to_json
        print(json.dumps(to_json(result, written), indent=1))


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
