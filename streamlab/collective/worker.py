"""The rank entry point of a multi-process run.

Started once per rank by torch's elastic launcher (`streamlab.collective.launch`):

    python -m streamlab.collective.worker run SCENARIO [SCENARIO ...] [--batch 4,64] [--impl nccl,symm_mem] ...
    python -m streamlab.collective.worker sweep [--impl nccl,symm_mem] [--sizes 8K..64M] ...

Each rank takes GPU LOCAL_RANK, joins the process group (NCCL on GPUs, gloo on the CPU; plus a
gloo group for results and agreement), picks the all-reduce, and runs the unchanged scenario
through `streamlab.exec.session.run_scenario` with that all-reduce bound to the layer's
all-reduce nodes. Rank 0 gathers every rank's figures and writes one result JSON; the others
write nothing that outlives the run. A rank that fails writes a report to the run folder and
exits; the launcher turns the reports into one message.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from pathlib import Path

from streamlab.collective import watch

DEFAULT_RANK_TIMEOUT = 180.0
COLLECTIVE_GRACE = 30.0  # extra patience for a rank blocked in a collective: it waits for the stuck one


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--impl", default=None, help="all-reduce(s): auto, nccl, symm_mem, aiter, emulated (comma list)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--out", default="traces/runs")
    p.add_argument("--rank-timeout", type=float, default=DEFAULT_RANK_TIMEOUT)
    p.add_argument("--run-dir", default=None, help="the launcher's folder for heartbeats and reports")


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m streamlab.collective.worker")
    sub = p.add_subparsers(dest="mode", required=True)
    run = sub.add_parser("run", help="run scenarios with a real all-reduce")
    run.add_argument("scenarios", nargs="+")
    run.add_argument("--model")
    run.add_argument("--batch", help="batch size(s), comma list")
    run.add_argument("--context", type=int)
    run.add_argument("--tp", type=int)
    run.add_argument("--page-size", type=int)
    run.add_argument("--kv-cache")
    run.add_argument("--backend")
    run.add_argument("--layers", type=int)
    run.add_argument("--profile", default="mi355x")
    run.add_argument("--verify-full", action="store_true")
    _common(run)
    sw = sub.add_parser("sweep", help="all-reduce alone in a graph, over message sizes")
    sw.add_argument("--sizes", default=None)
    sw.add_argument("--iters", type=int, default=100)
    sw.add_argument("--warmup", type=int, default=10)
    sw.add_argument("--calls", type=int, default=20, help="all-reduce calls captured back to back in one graph")
    _common(sw)
    return p.parse_args(argv)


class Ctx:
    """This rank: where it runs and its process groups."""

    def __init__(self, rank: int, world: int, local_rank: int, device, group, cpu_group,
                 run_dir: Path | None) -> None:
        self.rank, self.world, self.local_rank = rank, world, local_rank
        self.device, self.group, self.cpu_group = device, group, cpu_group
        self.run_dir = run_dir

    @property
    def gpu(self) -> bool:
        return self.device.type == "cuda"


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    rank, world = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1)
    local_rank = _env_int("LOCAL_RANK", 0)
    run_dir = Path(args.run_dir) if args.run_dir else None
    monitor = watch.RankMonitor(rank, world, local_rank, run_dir, args.rank_timeout,
                                COLLECTIVE_GRACE).start()
    watch.install(monitor)
    code = 0
    try:
        monitor.phase("import")
        if rank != 0:
            import warnings
            warnings.filterwarnings("ignore")  # one copy of each warning (rank 0's) is enough
        ctx = _init(args, rank, world, local_rank, run_dir, monitor)
        if args.mode == "run":
            code = run_ranks(args, ctx, monitor)
        else:
            from streamlab.collective.sweep import rank_sweep
            code = rank_sweep(args, ctx, monitor)
    except BaseException as e:  # noqa: BLE001 - every way out of a rank is reported, then exits
        from streamlab.errors import Failure
        from streamlab.scenario import ScenarioError
        if isinstance(e, KeyboardInterrupt):
            _exit(130)
        _exit(monitor.fail(e, expected=isinstance(e, (Failure, ScenarioError))))
    monitor.done()
    _teardown(5.0)
    _exit(0 if code in (0, None) or run_dir is not None else code)


def _exit(code: int) -> None:
    """Leave without running interpreter teardown: process-group and symmetric-memory teardown
    has hung at exit on the lent machines (device-facts.md)."""
    for f in (sys.stdout, sys.stderr):
        try:
            f.flush()
        except Exception:
            pass
    os._exit(code)


def _teardown(seconds: float) -> None:
    import torch.distributed as dist

    if not dist.is_initialized():
        return
    t = threading.Thread(target=lambda: dist.destroy_process_group(), daemon=True)
    t.start()
    t.join(seconds)


def _init(args, rank: int, world: int, local_rank: int, run_dir: Path | None, monitor) -> Ctx:
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    from streamlab.errors import Failure

    if args.device == "cuda" and not torch.cuda.is_available():
        raise Failure(f"--device cuda: no CUDA/HIP GPU is visible to torch {torch.__version__}")
    gpu = args.device != "cpu" and torch.cuda.is_available()
    if gpu:
        n = torch.cuda.device_count()
        if local_rank >= n:
            raise Failure(f"LOCAL_RANK {local_rank} but only {n} GPU(s) are visible on this node: "
                          f"start at most {n} ranks per node")
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if "MASTER_ADDR" not in os.environ and world == 1:  # one rank without a launcher
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
    timeout = timedelta(seconds=args.rank_timeout + 2 * COLLECTIVE_GRACE)
    monitor.phase("init process group")
    with watch.in_collective("init_process_group"):
        kw = {"device_id": device} if gpu else {}
        try:
            dist.init_process_group("nccl" if gpu else "gloo", timeout=timeout, **kw)
        except TypeError:  # torch without device_id
            dist.init_process_group("nccl" if gpu else "gloo", timeout=timeout)
        cpu_group = dist.new_group(backend="gloo", timeout=timeout) if gpu else dist.group.WORLD
    return Ctx(rank, world, local_rank, device, dist.group.WORLD, cpu_group, run_dir)


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gather(ctx: Ctx, obj) -> list:
    import torch.distributed as dist

    if ctx.world == 1:
        return [obj]
    got: list = [None] * ctx.world
    with watch.in_collective("gather results"):
        dist.all_gather_object(got, obj, group=ctx.cpu_group)
    return got


# -- run mode --------------------------------------------------------------------------------


def _scenarios(args) -> list:
    from streamlab.errors import EXIT_BAD_INPUT, Failure
    from streamlab.scenario import load

    batches: list[int | None] = [None]
    if args.batch:
        try:
            batches = [int(b) for b in str(args.batch).split(",") if b.strip()]
        except ValueError:
            raise Failure(f"--batch takes a comma-separated list of integers, got {args.batch!r}",
                          EXIT_BAD_INPUT) from None
    bases = [load(Path(path)) for path in args.scenarios]
    out = []
    for b in batches:  # every scenario at the first batch size first: the comparison that matters
        for base in bases:
            shape = dict(batch=b, context=args.context, tp=args.tp, page_size=args.page_size,
                         kv_cache=args.kv_cache)
            if args.model is not None or any(v is not None for v in shape.values()):
                out.append(base.override(model=args.model, **shape))
            else:
                out.append(base)
    return out


def ar_bytes(scen) -> int:
    """Bytes per rank of the layer's largest all-reduce."""
    return max((scen.layer.tensors[n.inputs["x"]].nbytes for n in scen.layer.nodes if n.is_collective),
               default=0)


def run_ranks(args, ctx: Ctx, monitor) -> int:
    from streamlab.collective.impls import choose
    from streamlab.errors import Failure

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


def run_one(args, ctx: Ctx, monitor, scen, fn) -> tuple[int, str]:
    """One scenario at one shape with all-reduce `fn` on every rank; rank 0 writes the result."""
    import dataclasses
    import io
    import json
    import shutil
    import tempfile

    from rich.console import Console

    from streamlab.errors import EXIT_CHECK_FAILED, Failure
    from streamlab.io import write_json_atomic

    label = getattr(fn, "backend", "reference") if fn is not None else "reference"
    if fn is not None:  # the result (and measure.py's label) then names what ran
        scen = dataclasses.replace(scen, collective=dataclasses.replace(scen.collective, impl=fn.impl))
    tag = f"{scen.name}-b{scen.shape.batch}-w{ctx.world}-{label}"
    base = ctx.run_dir if ctx.run_dir is not None else Path(tempfile.gettempdir())
    scratch = Path(tempfile.mkdtemp(prefix=f"rank{ctx.rank}-{tag}-", dir=base))
    console = Console(highlight=False) if ctx.rank == 0 else Console(file=io.StringIO(), width=200)
    monitor.phase(f"run {tag}")
    check_failed = None
    try:
        result = call_run_scenario(scen, console, collective=fn, backend=args.backend,
                                   device="cuda" if ctx.gpu else "cpu", layers=args.layers,
                                   out=scratch, profile=args.profile, verify_full=args.verify_full)
    except Failure as e:
        if e.code != EXIT_CHECK_FAILED:
            raise
        written = sorted(scratch.glob("*.json"))
        if not written:
            raise
        result = json.loads(written[-1].read_text())
        check_failed = str(e)
    monitor.phase(f"gather {tag}")
    rows = gather(ctx, rank_summary(scen, result, ctx))
    bad = [r["rank"] for r in rows if not r["equal_to_serial"]]
    code = EXIT_CHECK_FAILED if bad else 0
    message = (f"{tag}: the layout's outputs differ from the serial layout's on rank(s) "
               f"{', '.join(map(str, bad))}") if bad else ""
    if ctx.rank == 0:
        monitor.phase(f"write {tag}")
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        combined = combine(scen, result, rows, fn, ctx.world, label)
        kind = "measured" if "measured" in combined else "simulated"
        trace = combined[kind].get("trace")
        if trace and Path(trace).exists():
            dest = out / (f"{tag}.trace.json.gz" if kind == "measured" else f"{tag}-sim.trace.json.gz")
            shutil.move(trace, dest)
            combined[kind]["trace"] = str(dest)
        path = write_json_atomic(out / f"{tag}.json", combined)
        print_allreduce(console, combined)
        console.print(f"result ({ctx.world} ranks, all-reduce {label}): {path}")
        if check_failed or bad:
            console.print(f"[bold red]{message}[/]")
    shutil.rmtree(scratch, ignore_errors=True)
    return code, message


def call_run_scenario(scen, console, *, collective, **kw) -> dict:
    """`run_scenario` with `collective` bound to the layer's all-reduce nodes.

    Until session.run_scenario takes `collective=` itself, this rank process (which runs one
    scenario at a time) swaps session.collective_overrides for the duration of the call."""
    import inspect

    from streamlab.exec import session

    if "collective" in inspect.signature(session.run_scenario).parameters:
        return session.run_scenario(scen, console, collective=collective, **kw)
    if collective is None:
        return session.run_scenario(scen, console, **kw)
    original = session.collective_overrides
    session.collective_overrides = lambda s, t: {"allreduce": collective}
    try:
        return session.run_scenario(scen, console, **kw)
    finally:
        session.collective_overrides = original


def _section(result: dict) -> tuple[str, dict]:
    kind = "measured" if "measured" in result else "simulated"
    return kind, result[kind]


def ar_rows(scen, section: dict, world: int) -> dict[str, dict]:
    """Per all-reduce node: nccl-tests columns for its in-graph and isolated latency."""
    from streamlab.collective.impls import bandwidths

    out = {}
    for node in scen.layer.nodes:
        if not node.is_collective:
            continue
        nbytes = scen.layer.tensors[node.inputs["x"]].nbytes
        n = section["nodes"].get(node.name, {})
        g = n.get("in_graph_us")
        t = g["median"] if g else None
        iso = n.get("isolated_us")
        alg, bus = bandwidths(nbytes, t, world)
        ialg, ibus = bandwidths(nbytes, iso, world)
        out[node.name] = {
            "bytes": nbytes, "in_graph_us": g, "isolated_us": iso,
            "slowdown": (t / iso) if t and iso else None,
            "algbw_gbs": alg, "busbw_gbs": bus, "isolated_algbw_gbs": ialg, "isolated_busbw_gbs": ibus}
    return out


def rank_summary(scen, result: dict, ctx: Ctx) -> dict:
    import socket

    kind, sec = _section(result)
    prof = sec["profile"]
    return {
        "rank": ctx.rank, "local_rank": ctx.local_rank, "host": socket.gethostname(),
        "pid": os.getpid(), "device": result.get("device"), "kind": kind,
        "equal_to_serial": bool(result.get("equal_to_serial")),
        "per_layer_us": sec["per_layer_us"], "repeat_medians_us": sec.get("repeat_medians_us"),
        "allreduce_per_call_us": prof.get("allreduce_per_call_us"),
        "bubble_us": prof.get("bubble_us"), "physical_streams": prof.get("physical_streams"),
        "allreduce_nodes": ar_rows(scen, sec, ctx.world),
    }


def combine(scen, result0: dict, rows: list[dict], fn, world: int, label: str) -> dict:
    """Rank 0's result plus every rank's figures: one complete result of the run."""
    from streamlab.collective.impls import describe

    out = dict(result0)
    kind, sec = _section(out)
    sec["profile"]["allreduce"] = label
    out["world"] = world
    out["complete"] = len(rows) == world
    out["equal_to_serial"] = all(r["equal_to_serial"] for r in rows)
    out["allreduce"] = {**describe(fn), "ranks": world,
                        "shapes": f"per-rank shapes of tp {scen.shape.tp}; the all-reduce spans {world} ranks"}
    nodes = {}
    for name in rows[0]["allreduce_nodes"]:
        nodes[name] = {"bytes": rows[0]["allreduce_nodes"][name]["bytes"],
                       "per_rank": [{"rank": r["rank"], **{k: v for k, v in r["allreduce_nodes"][name].items()
                                                           if k != "bytes"}} for r in rows]}
    out["allreduce_nodes"] = nodes
    out["ranks"] = rows
    return out


def print_allreduce(console, combined: dict) -> None:
    from rich.table import Table

    world = combined["world"]
    kind = "measured" if "measured" in combined else "simulated"
    lat = ", ".join(f"r{r['rank']} {r['per_layer_us']['median']:.1f}" for r in combined["ranks"])
    console.print(f"per-layer latency per rank ({kind}): {lat} us")
    ar = ", ".join(f"r{r['rank']} {r['allreduce_per_call_us']['median']:.1f}"
                   for r in combined["ranks"] if r.get("allreduce_per_call_us"))
    if ar:
        console.print(f"all-reduce per call per rank ({combined['allreduce'].get('backend')}): {ar} us")
    table = Table(title=f"all-reduce nodes over {world} ranks ({combined['allreduce'].get('backend')}, "
                        f"{kind}); busbw = algbw x 2(n-1)/n", title_justify="left")
    for col in ("node", "bytes", "rank", "in-graph us", "p20-p80", "isolated us", "slowdown",
                "algbw GB/s", "busbw GB/s", "iso busbw"):
        table.add_column(col, justify="left" if col == "node" else "right")
    f = lambda v, p=2: "-" if v is None else f"{v:.{p}f}"
    for name, node in combined["allreduce_nodes"].items():
        for row in node["per_rank"]:
            g = row["in_graph_us"]
            table.add_row(name, str(node["bytes"]), str(row["rank"]), f(g["median"] if g else None),
                          f"{g['p20']:.1f}-{g['p80']:.1f}" if g else "-", f(row["isolated_us"]),
                          f(row["slowdown"]), f(row["algbw_gbs"], 1), f(row["busbw_gbs"], 1),
                          f(row["isolated_busbw_gbs"], 1))
    console.print(table)


if __name__ == "__main__":
    main()
