"""The rank side of `streamlab run --world N`: each scenario at each batch under each all-reduce,
run by every rank through `session.run.run_scenario` with the real all-reduce bound to the
layer's all-reduce nodes. Rank 0 gathers every rank's figures and writes one result."""

from __future__ import annotations

import dataclasses
import io
import os
import shutil
import tempfile
from pathlib import Path

from streamlab.collective.rank import Ctx, gather
from streamlab.errors import EXIT_CHECK_FAILED, Failure
from streamlab.results import AllReduceOnRank, RankFigures, Ranks, RunResult, dump
from streamlab.scenario import Scenario, load, parse_batches

__all__ = ["ar_bytes", "combine", "rank_figures", "run_one", "run_ranks"]


def _scenarios(args) -> list[Scenario]:
    batches: list[int | None] = parse_batches(args.batch) if args.batch else [None]
    bases = [load(Path(path)) for path in args.scenarios]
    out = []
    for b in batches:  # every scenario at the first batch size first: the comparison that matters
        for base in bases:
            shape = {"batch": b, "context": args.context, "tp": args.tp, "page_size": args.page_size,
                     "kv_cache": args.kv_cache}
            if args.model is not None or any(v is not None for v in shape.values()):
                out.append(base.override(model=args.model, **shape))
            else:
                out.append(base)
    return out


def ar_bytes(scen: Scenario) -> int:
    """Bytes per rank of the layer's largest all-reduce."""
    return max((scen.layer.tensors[n.inputs["x"]].nbytes for n in scen.layer.nodes if n.is_collective),
               default=0)


def run_ranks(args, ctx: Ctx, monitor) -> int:
    from streamlab.kernels.allreduce.impls import choose

    monitor.phase("load scenarios")
    scens = _scenarios(args)
    names = [i for i in (args.impl.split(",") if args.impl else []) if i]
    # each scenario under every implementation before the next scenario: a run cut short by its
    # time limit still has like-for-like pairs
    plan = [(name, s) for s in scens for name in names] if names else [(s.collective.impl, s) for s in scens]
    max_bytes = max(max(ar_bytes(s) for s in scens), 1 << 20)
    made: dict[str, object] = {}
    worst = 0
    messages = []
    for name, scen in plan:
        if name not in made:
            monitor.phase(f"set up all-reduce {name}")
            try:
                made[name] = choose(name, ctx.world, ctx.device, max_bytes=max_bytes,
                                    emulated_us=scen.collective.emulated_us, group=ctx.group,
                                    cpu_group=ctx.cpu_group)
            except Failure as e:
                if len(names) < 2:
                    raise
                # every rank agreed on this failure (choose() agrees before it raises): skip
                # this implementation, run the others, and fail the run at the end
                made[name] = e
                messages.append(f"all-reduce {name} skipped: {e}")
                worst = max(worst, e.code)
                if ctx.rank == 0:
                    print(f"all-reduce {name} skipped: {e}", flush=True)
        if isinstance(made[name], Failure):
            continue
        code, message = run_one(args, ctx, monitor, scen, made[name])
        worst = max(worst, code)
        if message:
            messages.append(message)
    if ctx.rank == 0:
        monitor.outcome(worst, "; ".join(messages))
    return worst


def run_one(args, ctx: Ctx, monitor, scen: Scenario, fn) -> tuple[int, str]:
    """One scenario at one shape with all-reduce `fn` on every rank; rank 0 writes the result."""
    from rich.console import Console

    from rich.markup import escape

    from streamlab.io import write_atomic
    from streamlab.report.allreduce import print_ranks
    from streamlab.report.console import output_console
    from streamlab.session.files import over_ranks
    from streamlab.session.run import OutputsDiffer, planned_files, run_scenario

    label = getattr(fn, "backend", "reference") if fn is not None else "reference"
    if fn is not None:  # the result (and measure.py's label) then names what ran
        scen = dataclasses.replace(scen, collective=dataclasses.replace(scen.collective, impl=fn.impl))
    tag = f"{scen.name}-b{scen.shape.batch}-{over_ranks(ctx.world, label)}"
    device = "cuda" if ctx.gpu else "cpu"
    # every rank sees the same files (one node): all refuse together, before any collective
    files = planned_files(scen, backend=args.backend, device=device, out=Path(args.out), profile=args.profile,
                          ranks=over_ranks(ctx.world, label)).claim(force=args.force)
    base = ctx.run_dir if ctx.run_dir is not None else Path(tempfile.gettempdir())
    scratch = Path(tempfile.mkdtemp(prefix=f"rank{ctx.rank}-", dir=base))
    console = output_console() if ctx.rank == 0 else Console(file=io.StringIO(), width=200)
    monitor.phase(f"run {tag}")
    try:
        result = run_scenario(scen, console, collective=fn, backend=args.backend,
                              device=device, layers=args.layers,
                              out=scratch, profile=args.profile, verify_full=args.verify_full)
    except OutputsDiffer as e:
        result = e.result
    monitor.phase(f"gather {tag}")
    figures = gather(ctx, rank_figures(scen, result, ctx))
    bad = [f.rank for f in figures if not f.equal_to_serial]
    code = EXIT_CHECK_FAILED if bad else 0
    message = (f"{tag}: the layout's outputs differ from the serial layout's on rank(s) "
               f"{', '.join(map(str, bad))}") if bad else ""
    if ctx.rank == 0:
        monitor.phase(f"write {tag}")
        combined = combine(result, figures, fn, ctx.world, label)
        if combined.trace and Path(combined.trace).exists():
            write_atomic(files.trace, Path(combined.trace).read_bytes())
            combined = dataclasses.replace(combined, trace=str(files.trace))
        path = dump(combined, files.result)
        print_ranks(console, combined)
        console.print(f"result ({ctx.world} ranks, all-reduce {label}): {escape(str(path))}")
        if bad:
            console.print(f"[bold red]{message}[/]")
    shutil.rmtree(scratch, ignore_errors=True)
    return code, message


def _ar_figures(scen: Scenario, result: RunResult, world: int) -> dict[str, AllReduceOnRank]:
    """Per all-reduce node: nccl-tests columns for its in-graph and isolated latency."""
    from streamlab.kernels.allreduce.impls import bandwidths

    out = {}
    for node in scen.layer.nodes:
        if not node.is_collective:
            continue
        nbytes = scen.layer.tensors[node.inputs["x"]].nbytes
        n = result.nodes.get(node.name)
        g = n.in_graph_us if n else None
        t = g.median if g else None
        iso = n.isolated_us if n else None
        alg, bus = bandwidths(nbytes, t, world)
        ialg, ibus = bandwidths(nbytes, iso, world)
        out[node.name] = AllReduceOnRank(
            bytes=nbytes, in_graph_us=g, isolated_us=iso, slowdown=(t / iso) if t and iso else None,
            algbw_gbs=alg, busbw_gbs=bus, isolated_algbw_gbs=ialg, isolated_busbw_gbs=ibus)
    return out


def rank_figures(scen: Scenario, result: RunResult, ctx: Ctx) -> RankFigures:
    import socket

    a = result.anatomy
    return RankFigures(
        rank=ctx.rank, local_rank=ctx.local_rank, host=socket.gethostname(), pid=os.getpid(),
        device=result.device, equal_to_serial=bool(result.equal_to_serial), latency=result.latency,
        allreduce_per_call_us=a.allreduce_per_call_us, bubble_us=a.bubble_us,
        physical_streams=a.physical_streams, allreduce_nodes=_ar_figures(scen, result, ctx.world))


def combine(result0: RunResult, figures: list[RankFigures], fn, world: int, label: str) -> RunResult:
    """Rank 0's result plus every rank's figures: one complete result of the run."""
    from streamlab.kernels.allreduce.impls import describe

    return dataclasses.replace(
        result0, anatomy=dataclasses.replace(result0.anatomy, allreduce=label),
        equal_to_serial=all(f.equal_to_serial for f in figures),
        ranks=Ranks(world=world, complete=len(figures) == world,
                    allreduce={**describe(fn), "ranks": world,
                               "shapes": f"per-rank shapes of tp {result0.shape.tp}; "
                                         f"the all-reduce spans {world} ranks"},
                    figures=tuple(figures)))
