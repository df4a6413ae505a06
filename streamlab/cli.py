"""The streamlab command line."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from streamlab.errors import EXIT_BAD_INPUT, Failure
from streamlab.models.hardware import HARDWARE
from streamlab.scenario import Scenario, ScenarioError, load

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Measure, simulate and explain multi-stream graph schedules of a decode layer.")
console = Console(highlight=False)
err = Console(stderr=True, highlight=False)

def fail(message: str, code: int) -> None:
    err.print(f"[bold red]error:[/] {message}", markup=True, soft_wrap=True)
    raise typer.Exit(code)


def _scenario(path: Path, model: Optional[str], batch: Optional[int], context: Optional[int],
              tp: Optional[int], page_size: Optional[int], kv_cache: Optional[str]) -> Scenario:
    scen = load(path)
    if any(v is not None for v in (model, batch, context, tp, page_size, kv_cache)):
        scen = scen.override(model=model, batch=batch, context=context, tp=tp,
                             page_size=page_size, kv_cache=kv_cache)
    return scen


SCENARIO = typer.Argument(..., help="scenario YAML file", show_default=False)
MODEL = typer.Option(None, help="model config: glm5, deepseek_v32, tiny")
BATCH = typer.Option(None, help="decode tokens per rank")
CONTEXT = typer.Option(None, help="context length (tokens) of every request")
TP = typer.Option(None, help="tensor-parallel size (sets per-rank shapes)")
PAGE = typer.Option(None, "--page-size", help="KV cache page size")
KV = typer.Option(None, "--kv-cache", help="KV cache dtype: fp8 or bf16")


def _guard(fn):
    """Turn expected failures into one clear line and an exit code, never a traceback."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ScenarioError as e:
            fail(str(e), EXIT_BAD_INPUT)
        except Failure as e:
            fail(str(e), e.code)
    return wrapper


@app.command()
@_guard
def graph(scenario: Path = SCENARIO, model: Optional[str] = MODEL, batch: Optional[int] = BATCH,
          context: Optional[int] = CONTEXT, tp: Optional[int] = TP, page_size: Optional[int] = PAGE,
          kv_cache: Optional[str] = KV,
          hardware: str = typer.Option("mi355x", help="roofline ceilings: " + ", ".join(HARDWARE)),
          queues: int = typer.Option(4, help="HIP graph queues (DEBUG_HIP_FORCE_GRAPH_QUEUES)"),
          layers: int = typer.Option(1, help="layers in the --dot graph"),
          dot: Optional[Path] = typer.Option(None, help="write the capture graph as Graphviz DOT")):
    """Show the schedule as stream lanes, what overlaps, the HIP streams and the critical path."""
    from streamlab.report.schedule_view import schedule_view, to_dot

    if hardware not in HARDWARE:
        raise Failure(f"unknown hardware {hardware!r}; known: {', '.join(HARDWARE)}", EXIT_BAD_INPUT)
    scen = _scenario(scenario, model, batch, context, tp, page_size, kv_cache)
    console.print(schedule_view(_title(scen), scen.layer, scen.program, HARDWARE[hardware], queues))
    if dot is not None:
        from streamlab.io import write_atomic
        write_atomic(dot, to_dot(scen.name, scen.program, layers, queues))
        console.print(f"wrote {dot}")


def _title(scen: Scenario) -> str:
    s = scen.shape
    return (f"{scen.name} ({scen.model.name}, batch {s.batch}, context {s.context}, tp {s.tp}, "
            f"page {s.page_size}, kv {s.kv_cache})")


@app.command()
@_guard
def run(scenario: Path = SCENARIO, model: Optional[str] = MODEL, batch: Optional[int] = BATCH,
        context: Optional[int] = CONTEXT, tp: Optional[int] = TP, page_size: Optional[int] = PAGE,
        kv_cache: Optional[str] = KV,
        backend: Optional[str] = typer.Option(None, help="kernels: auto, reference, triton, aiter"),
        device: str = typer.Option("auto", help="auto (GPU if present), cpu or cuda"),
        layers: Optional[int] = typer.Option(None, help="layers captured in one graph"),
        profile: str = typer.Option("mi355x", help="simulator profile used when there is no GPU"),
        verify_full: bool = typer.Option(False, help="without a GPU, check outputs at the real "
                                                     "shape (slow) instead of a reduced one"),
        out: Path = typer.Option(Path("traces/runs"), help="folder for results and traces")):
    """Run a scenario: measured in a captured graph on a GPU; without one, simulated on a device
    profile. Either way the layout's outputs are first checked against the serial layout's."""
    from streamlab.exec.session import run_scenario

    scen = _scenario(scenario, model, batch, context, tp, page_size, kv_cache)
    run_scenario(scen, console, backend=backend, device=device, layers=layers, out=out,
                 profile=profile, verify_full=verify_full)


@app.command()
@_guard
def sim(scenario: Path = SCENARIO, model: Optional[str] = MODEL, batch: Optional[int] = BATCH,
        context: Optional[int] = CONTEXT, tp: Optional[int] = TP, page_size: Optional[int] = PAGE,
        kv_cache: Optional[str] = KV,
        profile: str = typer.Option("mi355x", help="device profile: a shipped name or a YAML path"),
        layers: Optional[int] = typer.Option(None, help="layers in the simulated graph"),
        out: Path = typer.Option(Path("traces/runs"), help="folder for results and traces")):
    """Simulate a scenario on a device profile (no GPU needed); the profile's parameters and
    where each came from are printed with the result."""
    from rich.table import Table

    from streamlab.exec.session import simulate_and_report
    from streamlab.io import write_json_atomic
    from streamlab.sim.profile import load_profile

    scen = _scenario(scenario, model, batch, context, tp, page_size, kv_cache)
    prof = load_profile(profile)
    table = Table(title=f"profile {prof.name}", title_justify="left")
    for col in ("parameter", "value", "source"):
        table.add_column(col)
    for row in prof.describe():
        table.add_row(*row)
    console.print(table)
    result = simulate_and_report(scen, profile, layers or scen.measure.layers, console, out)
    path = out / f"{scen.name}-b{scen.shape.batch}-sim-{prof.name}.json"
    write_json_atomic(path, {"scenario": scen.name, "shape": vars(scen.shape), **result})
    console.print(f"result: {path}")


def main() -> None:
    app()
