"""The streamlab command line: each command checks its options (streamlab.options), calls one
function of the layers below, and prints. Exit codes: errors.EXIT_CODES (README, `--help`)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Literal, Optional

import typer
from rich.markup import escape

from streamlab import options as opt
from streamlab.errors import EXIT_BAD_INPUT, EXIT_CHECK_FAILED, EXIT_INCONCLUSIVE, Failure, commands_class, \
    exit_codes_help, guard
from streamlab.models.hardware import HARDWARE
from streamlab.options import Backend, Device, KvCache, Model
from streamlab.report.console import output_console
from streamlab.scenario import MAX_LAYERS, Scenario, check_budgets, load

app = typer.Typer(cls=commands_class(), add_completion=False, no_args_is_help=True,
                  pretty_exceptions_enable=False, epilog=exit_codes_help(),
                  help="Measure, simulate and explain multi-stream graph schedules of a decode layer.")
console = output_console()
err = output_console(stderr=True)

from streamlab.trace.cli import app as trace_app  # noqa: E402  (sub-app: `streamlab trace ...`)

app.add_typer(trace_app, name="trace", help="Summaries and diffs of profiler traces (Kineto, ours).")
from streamlab.search.cli import search as search_command  # noqa: E402  (`streamlab search`)
app.command("search")(search_command)

Hardware = Literal[tuple(HARDWARE)]  # type: ignore[valid-type]


def _scenario(path: Path, model: Optional[str], batch: Optional[int], context: Optional[int],
              tp: Optional[int], page_size: Optional[int], kv_cache: Optional[str]) -> Scenario:
    scen = load(path)
    if any(v is not None for v in (model, batch, context, tp, page_size, kv_cache)):
        scen = scen.override(model=model, batch=batch, context=context, tp=tp,
                             page_size=page_size, kv_cache=kv_cache)
    return scen


SCENARIO, MODEL, BATCH, CONTEXT, TP, PAGE, KV = opt.SCENARIO, opt.MODEL, opt.BATCH, opt.CONTEXT, opt.TP, opt.PAGE, opt.KV


@app.command()
@guard
def graph(scenario: Path = SCENARIO, model: Optional[Model] = MODEL, batch: Optional[int] = BATCH,
          context: Optional[int] = CONTEXT, tp: Optional[int] = TP, page_size: Optional[int] = PAGE,
          kv_cache: Optional[KvCache] = KV,
          hardware: Hardware = typer.Option("mi355x", help="roofline ceilings"),
          queues: int = typer.Option(4, min=1, max=64, help="HIP graph queues (DEBUG_HIP_FORCE_GRAPH_QUEUES)"),
          layers: int = typer.Option(1, min=1, max=MAX_LAYERS, help="layers in the --dot graph"),
          dot: Optional[Path] = typer.Option(None, dir_okay=False, help="write the capture graph as Graphviz DOT"),
          force: bool = opt.FORCE):
    """Show the schedule as stream lanes, what overlaps, the HIP streams and the critical path."""
    from streamlab.io import claim, write_atomic
    from streamlab.report.schedule_view import schedule_view, to_dot

    if dot is not None:
        claim(dot, force=force, what="DOT graph")
    scen = _scenario(scenario, model, batch, context, tp, page_size, kv_cache)
    check_budgets(scen, HARDWARE[hardware].units, hardware)
    console.print(schedule_view(_title(scen), scen.layer, scen.program, HARDWARE[hardware], queues))
    if dot is not None:
        write_atomic(dot, to_dot(scen.name, scen.program, layers, queues))
        console.print(f"wrote {escape(str(dot))}")


def _title(scen: Scenario) -> str:
    s = scen.shape
    return (f"{scen.name} ({scen.model.name}, batch {s.batch}, context {s.context}, tp {s.tp}, "
            f"page {s.page_size}, kv {s.kv_cache})")


@app.command()
@guard
def run(scenarios: list[Path] = typer.Argument(..., help="scenario YAML file(s)", show_default=False),
        model: Optional[Model] = MODEL,
        batch: Optional[str] = typer.Option(None, help="decode tokens per rank; a comma list runs each"),
        context: Optional[int] = CONTEXT, tp: Optional[int] = TP, page_size: Optional[int] = PAGE,
        kv_cache: Optional[KvCache] = KV,
        backend: Optional[Backend] = opt.BACKEND,
        device: Device = opt.DEVICE,
        layers: Optional[int] = opt.LAYERS,
        profile: str = opt.PROFILE,
        verify_full: bool = typer.Option(False, help="without a GPU, check outputs at the real "
                                                     "shape (slow) instead of a reduced one"),
        out: Path = opt.OUT,
        force: bool = opt.FORCE,
        world: int = typer.Option(1, **opt.WORLD, help="ranks per node, one GPU each: above 1 the all-reduce "
                                                       "is real, across the GPUs (started through torch's "
                                                       "elastic launcher)"),
        impl: Optional[str] = typer.Option(None, help="all-reduce of a --world run: auto, nccl, symm_mem, "
                                                      "aiter, emulated; a comma list runs each (default: "
                                                      "the scenario's collective.impl)"),
        rank_timeout: float = opt.RANK_TIMEOUT,
        launcher: str = typer.Option("", help="torchrun options for a multi-node run, e.g. '--nnodes 2 "
                                              "--node-rank 0 --rdzv-backend c10d --rdzv-endpoint HOST:29500 "
                                              "--rdzv-id JOB'")):
    """Run scenarios: measured in a captured graph on a GPU; without one, simulated on a device
    profile. Either way the layout's outputs are first checked against the serial layout's.
    Several scenarios or batches: each in turn (a process of its own per measured run; with
    --world, one launch runs them all, each under every --impl). Result files that exist are
    refused before anything runs, unless --force."""
    batches = opt.batches(batch) or [None]
    impls = opt.impls(impl)
    if world > 1 or impls or launcher:
        import shlex

        from streamlab.collective.launch import launch_run, run_args
        try:
            launcher_args = shlex.split(launcher) or None
        except ValueError as e:
            raise Failure(f"--launcher {launcher!r}: {e}", EXIT_BAD_INPUT) from None
        launch_run(scenarios, world, run_args(
            model=model, batch=batch, context=context, tp=tp, page_size=page_size, kv_cache=kv_cache,
            backend=backend, device=device, layers=layers, profile=profile, verify_full=verify_full,
            out=out, impl=",".join(impls) if impls else None, force=force),
            launcher_args=launcher_args, rank_timeout=rank_timeout)
        return
    runs = [_scenario(p, model, b, context, tp, page_size, kv_cache) for b in batches for p in scenarios]
    options = {"backend": backend, "device": device, "layers": layers, "out": out, "profile": profile,
               "verify_full": verify_full}
    if len(runs) == 1:
        from streamlab.session.run import run_scenario
        run_scenario(runs[0], console, force=force, **options)
        return
    from streamlab.session.compare import claim_runs
    from streamlab.session.fresh import run_apart
    claim_runs(runs, force=force, **options)
    for scen in runs:  # runs sharing a process interfere: each measured one gets its own
        run_apart(scen, verbose=True, force=force, **options)


@app.command()
@guard
def sim(scenario: Path = SCENARIO, model: Optional[Model] = MODEL, batch: Optional[int] = BATCH,
        context: Optional[int] = CONTEXT, tp: Optional[int] = TP, page_size: Optional[int] = PAGE,
        kv_cache: Optional[KvCache] = KV,
        profile: str = typer.Option("mi355x", help="device profile: a shipped name or a YAML path"),
        layers: Optional[int] = opt.LAYERS,
        step: bool = typer.Option(False, help="also predict the whole decode step (time per output token)"),
        explain: bool = typer.Option(False, help="the layout's cost against serial, component by component "
                                                 "(beside the published figures where the profile has them)"),
        out: Path = opt.OUT, force: bool = opt.FORCE):
    """Simulate a scenario on a device profile (no GPU needed): the per-layer latency with its
    prediction interval, which of the layout's overlaps the profile measured, and the profile's
    parameters with where each came from."""
    from rich.table import Table

    from streamlab.exec.target import versions
    from streamlab.results import dump
    from streamlab.runs import RunSetup
    from streamlab.session.files import run_files, simulated_on
    from streamlab.session.run import simulate_run
    from streamlab.sim.profile_file import load_profile
    from streamlab.sim.provenance import kernel_warning

    scen = _scenario(scenario, model, batch, context, tp, page_size, kv_cache)
    prof = load_profile(profile)
    files = run_files(scen, out, simulated_on(prof.name)).claim(force=force)
    table = Table(title=f"profile {prof.name}", title_justify="left")
    for col in ("parameter", "value", "source"):
        table.add_column(col)
    for row in prof.describe():
        table.add_row(*row)
    console.print(table)
    warning = kernel_warning(prof.provenance, prof.name)
    if warning:
        err.print(f"[yellow]warning:[/] {escape(warning)}")
    n_layers = layers or scen.measure.layers
    setup = RunSetup(device="cpu", versions=versions(), backends={}, layers=n_layers, differences=None)
    result = simulate_run(scen, prof, n_layers, console, files.trace, setup, other_model=model is not None)
    if step:
        from streamlab.report.prediction import step_lines
        from streamlab.sim.step import predict_step

        result = replace(result, step=predict_step(scen, prof, other_model=model is not None).record())
        for line in step_lines(result.step, prof.name):
            console.print(line)
    if explain:
        from streamlab.report.prediction import breakdown_table
        from streamlab.sim.explain import breakdown

        console.print(breakdown_table(breakdown(scen, prof), layout=scen.name, baseline="serial", profile=prof.name,
                                      batch=scen.shape.batch,
                                      published_source=prof.reference.get("source", "none on this profile")))
    path = dump(result, files.result)
    console.print(f"result: {escape(str(path))}")


@app.command()
@guard
def allreduce(world: int = typer.Option(..., **opt.WORLD, help="ranks per node, one GPU each"),
              impl: str = typer.Option("nccl,symm_mem", help="all-reduces to measure: nccl, symm_mem, "
                                                             "aiter, emulated, auto (comma list)"),
              sizes: str = typer.Option("8K..64M,48K,768K", help="bytes per rank: A..B doubles from A "
                                                                  "to B; comma list"),
              iters: int = typer.Option(100, min=1, max=1 << 20, help="timed graph replays per size"),
              warmup: int = typer.Option(10, min=0, max=1 << 20, help="untimed replays first"),
              calls: int = typer.Option(20, min=1, max=1 << 12, help="all-reduces captured back to back in one graph"),
              device: Device = typer.Option("auto", help="auto (the GPUs; refused without one), cuda, or cpu "
                                                         "(gloo, eager, timed on the host: a test of the code "
                                                         "path, labelled gloo, not a measurement)"),
              rank_timeout: float = opt.RANK_TIMEOUT,
              launcher: str = typer.Option("", help="torchrun options for a multi-node run"),
              out: Path = typer.Option(Path("traces/runs"), file_okay=False, help="folder for the JSON result"),
              force: bool = opt.FORCE):
    """The all-reduce alone in a CUDA/HIP graph over message sizes, nccl-tests columns: time per
    call (slowest rank's median), algbw = bytes / time, busbw = algbw x 2(n-1)/n."""
    import shlex

    from streamlab.collective.launch import launch_sweep
    try:
        launcher_args = shlex.split(launcher) or None
    except ValueError as e:
        raise Failure(f"--launcher {launcher!r}: {e}", EXIT_BAD_INPUT) from None
    launch_sweep(world, ",".join(opt.impls(impl)), sizes, out, iters=iters, warmup=warmup, calls=calls,
                 device=device, launcher_args=launcher_args, rank_timeout=rank_timeout, force=force)


@app.command("allreduce-summary")
@guard
def allreduce_summary(folder: Path = typer.Argument(..., file_okay=False, exists=True,
                                                   help="folder of `run --world` results and `allreduce` sweeps",
                                                   show_default=False)):
    """One table of the multi-rank runs and all-reduce sweeps in a folder (any depth)."""
    from streamlab.report.allreduce import print_summary

    if not print_summary(console, folder):
        raise Failure(f"no multi-rank run or all-reduce sweep result under {folder}", EXIT_BAD_INPUT)


@app.command()
@guard
def schema(out: Path = typer.Option(Path(__file__).parent / "schemas", file_okay=False,
                                    help="folder for KIND.schema.json, one per result kind (they are "
                                         "rewritten: that is what this command is for)")):
    """Write the JSON Schemas of the result files (derived from streamlab.results' types)."""
    from streamlab.io import write_json_atomic
    from streamlab.results import KINDS, json_schema

    for kind, cls in KINDS.items():
        console.print(f"wrote {escape(str(write_json_atomic(out / f'{kind}.schema.json', json_schema(cls))))}")


@app.command()
@guard
def compare(scenarios: list[Path] = typer.Argument(..., help="scenario YAML files", show_default=False),
            batch: Optional[str] = typer.Option(None, help="batch sizes, e.g. 1,4,16,64 (default: each scenario's)"),
            context: Optional[int] = CONTEXT,
            device: Device = opt.DEVICE,
            backend: Optional[Backend] = opt.BACKEND,
            profile: str = opt.PROFILE,
            keep_going: bool = typer.Option(False, help="record a run that fails and run the others "
                                                        "(exit 1 at the end) instead of stopping"),
            report: Optional[Path] = typer.Option(None, file_okay=False,
                                                  help="report folder (default: OUT/compare-NAMES-bBATCHES)"),
            out: Path = typer.Option(Path("traces/runs"), file_okay=False,
                                     help="folder for results, traces and the report"),
            force: bool = opt.FORCE):
    """Run layouts side by side (measured on a GPU, simulated otherwise): latency, bubble by gap
    class, AR per call, overlap, streams, and per-node latency with slowdown vs isolated."""
    from streamlab.io import name_part
    from streamlab.report.compare import export, layer_table, node_table, not_comparable
    from streamlab.session.compare import collect

    batches = opt.batches(batch)
    scens = [load(p) if context is None else load(p).override(context=context) for p in scenarios]
    batches = batches or [scens[0].shape.batch]
    folder = report or out / name_part("compare-" + "-".join(s.name for s in scens)
                                       + "-b" + "_".join(map(str, batches)))
    result = collect(scens, batches, console, keep_going=keep_going, report=folder / "report.json",
                     backend=backend, device=device, layers=None, out=out, profile=profile, force=force)
    for b in result.batches:
        console.print(layer_table(list(result.runs), b))
        console.print(node_table(list(result.runs), b))
        for line in not_comparable(list(result.runs), b):
            console.print(f"[yellow]{escape(line)}[/]")
    written = export(result, folder)
    console.print(f"report: {escape(str(folder / 'report.md'))} ({len(written)} files: JSON, Markdown, PNG and "
                  "SVG plots)")
    if result.failures:
        raise Failure(f"{len(result.failures)} of {len(result.failures) + len(result.runs)} runs failed: "
                      + "; ".join(f"{f.scenario} batch {f.batch}" for f in result.failures)
                      + f" (messages in {folder / 'report.md'})", EXIT_CHECK_FAILED)


@app.command("compile")
@guard
def compile_kernels(scenarios: list[Path] = typer.Argument(..., help="scenario YAML files", show_default=False),
                    target: str = typer.Option("mi355x", "--for", help="GPU to compile for: h100, h200, mi355x"),
                    batch: str = typer.Option("1,4,16,64", help="batch sizes whose launches to compile")):
    """Compile the scenarios' Triton kernels for a GPU you may not have (no GPU needed), at the
    grids and configs the layer would launch there; nothing runs."""
    from rich.table import Table

    try:
        import triton

        from streamlab.kernels.triton.targets import compile_launch, record_launches
        from streamlab.kernels.triton.targets import target as find_target
    except ImportError as e:
        raise Failure(f"streamlab compile needs Triton ({e}); pip install triton") from None

    batches = opt.batches(batch)
    tgt = find_target(target)
    layers = [load(p).override(batch=b).layer for p in scenarios for b in batches]
    launches, unrecorded = record_launches(layers, tgt)
    table = Table(title=f"Triton {triton.__version__} kernels compiled for {tgt}")
    for col in ("kernel", "nodes", "batches", "warps", "stages", "s", "result"):
        table.add_column(col, justify="right" if col in ("warps", "stages", "s") else "left")
    failed = []
    for launch in launches:
        result = compile_launch(launch, tgt)
        if result.error:
            failed.append(f"{launch.name} (nodes {', '.join(sorted(launch.nodes))}): {result.error}")
        table.add_row(launch.name, ", ".join(sorted(launch.nodes)), ",".join(map(str, sorted(launch.batches))),
                      str(launch.options.get("num_warps", "")), str(launch.options.get("num_stages", "")),
                      f"{result.seconds:.1f}", "[red]FAILED[/red]" if result.error else "ok")
    console.print(table)
    failed += [f"node {node}: could not record its launches: {msg}" for node, msg in unrecorded.items()]
    if failed:
        raise Failure(f"{len(failed)} of {len(launches)} launches do not compile for {tgt}:\n  "
                      + "\n  ".join(failed), EXIT_CHECK_FAILED)
    console.print(f"all {len(launches)} distinct launches ({len({x.name for x in launches})} kernels) "
                  f"compile for {tgt}")


@app.command(epilog=exit_codes_help())
@guard
def check(baseline: Path = typer.Option(..., help="baseline: a scenario YAML, or a run result JSON from `run` "
                                                  "(or a compare report of one layout)"),
          candidate: Path = typer.Option(..., help="candidate: a scenario YAML, or a run result JSON from `run` "
                                                   "(or a compare report of one layout)"),
          batch: Optional[str] = typer.Option(None, help="batch sizes to judge, e.g. 4,64"),
          device: Device = opt.DEVICE,
          profile: str = opt.PROFILE,
          as_json: bool = typer.Option(False, "--json", help="print the machine-readable verdict (or "
                                                             "{\"error\", \"exit_code\"})"),
          out: Path = opt.OUT, force: bool = opt.FORCE):
    """The gate before enabling a layout: exit 0 enable, 1 do not enable, 2 inconclusive. Bad
    input exits 64 and a run that could not be carried out 3, never 1: a CI system reads 1 as
    "do not enable" and nothing else."""
    from streamlab.check import judge
    from streamlab.results import to_json

    batches = opt.batches(batch)
    base, cand = _sides(baseline, candidate, batches, device, profile, out, force)
    common = sorted(set(base) & set(cand))
    if not common:
        raise Failure(f"no batch size in common: baseline has {sorted(base)}, candidate {sorted(cand)}"
                      + (f" (asked for {batches})" if batches else ""), EXIT_BAD_INPUT)
    verdict = judge(_name(baseline, base), _name(candidate, cand),
                    [(b, base[b], cand[b]) for b in common])
    if as_json:
        print(json.dumps(to_json(verdict), indent=1))
    else:
        colour = {"enable": "green", "do not enable": "red"}.get(verdict.verdict, "yellow")
        console.print(f"[bold {colour}]{escape(verdict.line())}[/]")
    raise typer.Exit(verdict.exit_code)


@app.command()
@guard
def calibrate(inputs: list[Path] = typer.Argument(None, help="result JSONs of measured runs (or a bench matrix.json) "
                                                 "to fit from; with --for: the scenario YAMLs whose overlaps to "
                                                 "measure", show_default=False),
              out: Path = typer.Option(..., dir_okay=False, help="profile YAML to write"),
              name: Optional[str] = typer.Option(None, help="profile name, e.g. h200 (default: --out's file "
                                                            "name; with --for: --profile's name)"),
              measure: bool = typer.Option(False, "--measure", help="measure on this GPU: each variant's "
                                           "single-stream layout, every node alone, fence / graph-entry ladders, "
                                           "the node pairs the layouts create; then fit and write the profile"),
              for_: bool = typer.Option(False, "--for", help="measure the overlaps the scenarios given as "
                                        "arguments create that --profile lacks, and add them (implies --measure)"),
              profile: Optional[str] = typer.Option(None, help="with --for: the profile to add pairs to "
                                                               "(a shipped name or a YAML path)"),
              batch: Optional[str] = typer.Option(None, help="--measure: batch sizes, e.g. 1,4,16,64 (the "
                                                             "default; with --for: the profile's)"),
              scenarios: Path = typer.Option(Path("scenarios"), file_okay=False, help="--measure: the folder of the layouts the "
                                             "profile must cover (their variants and the pairs they create)"),
              work: Optional[Path] = typer.Option(None, file_okay=False, help="--measure: folder for every finished stage "
                                                             "(default: beside --out, OUT.calibration/)"),
              resume: bool = typer.Option(False, help="continue the calibration in the work folder, skipping "
                                                      "its finished stages"),
              world: int = typer.Option(1, **opt.WORLD, help="--measure: ranks (one GPU each) for the single-stream runs: "
                                                "above 1 their all-reduce is the real collective"),
              backend: Optional[Literal["auto", "triton", "aiter"]] = typer.Option(None, help="--measure: kernels: auto (aiter on ROCm where it "
                                                               "loads, else triton), triton, aiter"),
              pairwise: Optional[Path] = typer.Option(None, dir_okay=False, help="without --measure: the pairs stage's file (a work "
                                            "folder's pairs-1.json): launch gap with branches, fence, graph entry, "
                                            "node-pair overlaps"),
              pairwise_state: Optional[Literal["clean", "cupti"]] = typer.Option(
                  None, help="process state of the pairwise timings (default: clean)"),
              fence_us: float = typer.Option(1.0, min=0.0, max=1000.0, help="cross-stream fence cost without --pairwise"),
              concurrency_slowdown: float = typer.Option(0.1, min=0.0, max=10.0,
                                                         help="per extra concurrent kernel without --pairwise"),
              force: bool = typer.Option(False, "--force", help="replace a profile that exists")):
    """Fit a simulator profile from measured serial runs, isolated nodes and the pairwise
    benchmark (dual-stream runs stay held out); with --measure, measure all of it on this GPU
    first, in one command; with --measure --for, add the node pairs some layouts need."""
    import shlex
    import sys

    from streamlab.io import claim, write_atomic
    from streamlab.sim.profile_file import dump_profile

    command = "streamlab " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    inputs = inputs or []
    if name is not None:
        opt.name(name, "--name")
    elif not (for_ and profile is not None):
        opt.name(out.stem, "--name (default: --out's file name)")
    claim(out, force=force, what="profile")
    if measure or for_:
        _calibrate_measured(inputs, out=out, name=name, for_=for_, profile=profile, batch=batch,
                            scenarios=scenarios, work=work, resume=resume, world=world, backend=backend,
                            pairwise=pairwise, command=command)
        return
    if not inputs:
        raise Failure("calibrate needs result files to fit from (RESULT.json...), or --measure to measure "
                      "on this GPU", EXIT_BAD_INPUT)
    from streamlab.sim.calibrate import calibrate as fit

    prof = fit(inputs, name or out.stem, fence_us=fence_us, concurrency_slowdown=concurrency_slowdown,
               pairwise=pairwise, pairwise_state=pairwise_state, command=command)
    write_atomic(out, dump_profile(prof))
    console.print(f"wrote {escape(str(out))}: " + _profile_line(prof))


def _calibrate_measured(inputs: list[Path], *, out: Path, name: str | None, for_: bool, profile: str | None,
                        batch: str | None, scenarios: Path, work: Path | None, resume: bool, world: int,
                        backend: str | None, pairwise: Path | None, command: str) -> None:
    """`calibrate --measure` and `--measure --for` (streamlab.calibration.run)."""
    from streamlab.calibration.plan import load_layouts
    from streamlab.calibration.run import OnDevice, PairsFor, calibrate_on_device, pairs_for
    from streamlab.calibration.runner import DeviceRunner

    if pairwise is not None:
        raise Failure("--pairwise fits from a file measured before; --measure measures the pairs itself: "
                      "drop one of them", EXIT_BAD_INPUT)
    work = work or out.with_suffix(".calibration")
    batches = opt.batches(batch)
    if for_:
        if not inputs or profile is None:
            raise Failure("--for measures the overlaps of scenarios for a profile: streamlab calibrate --measure "
                          "--for SCENARIO.yaml... --profile PROFILE --out NEW.yaml", EXIT_BAD_INPUT)
        if world != 1:
            raise Failure("--world is for the single-stream runs of --measure; --for measures node pairs on one "
                          "GPU", EXIT_BAD_INPUT)
        folder = load_layouts(scenarios) if scenarios.is_dir() else []
        prof = pairs_for(PairsFor(profile, tuple(load(p) for p in inputs), out, work, command, name=name,
                                  batches=tuple(batches) if batches else None, resume=resume, layouts=tuple(folder)),
                         DeviceRunner(backend=backend), console)
        if prof is not None:
            added = prof.provenance.added[-1]
            console.print(f"wrote {escape(str(out))}: {len(added.pairs)} node pairs added ({added.seconds:.0f} s); "
                          + _profile_line(prof))
        return
    if inputs:
        raise Failure("--measure measures everything itself: drop the result files (or add --for to measure the "
                      "overlaps of scenario files)", EXIT_BAD_INPUT)
    if profile is not None:
        raise Failure("--profile names the profile --for adds pairs to; --measure without --for makes a new one",
                      EXIT_BAD_INPUT)
    runner = DeviceRunner(backend=backend, world=world)
    prof = calibrate_on_device(OnDevice(name or out.stem, out, tuple(load_layouts(scenarios)),
                                        tuple(batches or (1, 4, 16, 64)), work, command, resume=resume),
                               runner, console)
    stages = prof.provenance.stages
    console.print(f"wrote {escape(str(out))} in {sum(stages.values()):.0f} s of stages ("
                  + ", ".join(f"{k} {v:.0f} s" for k, v in stages.items()) + "): " + _profile_line(prof))


def _profile_line(prof) -> str:
    line = (f"launch gap {prof.launch_gap_us.value:.2f} us, {len(prof.node_us)} nodes at batches "
            f"{sorted({b for t in prof.node_us.values() for b in t})}")
    if prof.pair_measures:
        line += (f", fence {prof.fence_us.value:.2f} us, graph entry {prof.multi_stream_graph_entry_us.value:.1f} us, "
                 f"{len(prof.pair_excess)} measured node pairs, overlap model spread "
                 f"{prof.overlap_model_spread.value:.2f}")
    return line + f"; kernels {prof.provenance.kernel_hash}"


def _name(path: Path, runs: dict) -> str:
    return next(iter(runs.values())).scenario if runs else path.stem


def _sides(baseline: Path, candidate: Path, batches: list[int] | None, device: str, profile: str, out: Path,
           force: bool) -> tuple[dict, dict]:
    """batch -> RunResult of each side: from a result file (a run result, or a compare report of
    one layout: results.load_runs), or from a scenario run now (in a process of its own on a GPU).
    Every run's files are claimed before the first starts. A candidate whose outputs differ from
    serial's is not to be enabled (exit 1); a baseline whose outputs differ leaves nothing to judge
    against (inconclusive)."""
    from streamlab.session.compare import claim_runs
    from streamlab.session.fresh import run_apart
    from streamlab.session.run import OutputsDiffer

    options = {"backend": None, "device": device, "layers": None, "out": out, "profile": profile}
    planned = {p: [load(p).override(batch=b) for b in (batches or [load(p).shape.batch])]
               for p in (baseline, candidate) if p.suffix != ".json"}
    claim_runs([scen for scens in planned.values() for scen in scens], force=force, **options)
    sides = []
    for path, what in ((baseline, "baseline"), (candidate, "candidate")):
        if path not in planned:
            sides.append(_runs_of(path, batches))
            continue
        try:
            sides.append({s.shape.batch: run_apart(s, force=force, **options) for s in planned[path]})
        except OutputsDiffer as e:
            if what == "candidate":
                raise Failure(f"DO NOT ENABLE: {e}", EXIT_CHECK_FAILED) from None
            raise Failure(f"INCONCLUSIVE: {e}; the baseline leaves nothing to judge against",
                          EXIT_INCONCLUSIVE) from None
    return sides[0], sides[1]


def _runs_of(path: Path, batches: list[int] | None) -> dict:
    """batch -> run of a result file; refused when it holds several layouts at one batch (a
    compare report of several layouts: which one is the side?)."""
    from streamlab.results import load_runs

    runs: dict = {}
    for r in load_runs(path):
        if batches is not None and r.batch not in batches:
            continue
        if r.batch in runs:
            raise Failure(f"{path}: holds {runs[r.batch].scenario} and {r.scenario} at batch {r.batch}; a side of "
                          "`check` is one layout: give a run result (OUT/NAME-...json) or a scenario",
                          EXIT_BAD_INPUT)
        runs[r.batch] = r
    return runs


def main() -> None:
    app()
