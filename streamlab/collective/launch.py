"""Start the ranks of a multi-process run through torch's elastic launcher (torchrun), watch
them, and end with one message naming the rank that failed and why.

The launcher runs in this process (`torch.distributed.run` parsed exactly as the torchrun command
line, so torchrun options pass through for multi-node runs); every rank is
`python -m streamlab.collective.worker ...` on GPU LOCAL_RANK (the worker's command line is
internal: `launch_run` and `launch_sweep` build and check it). Rank failures:
- a rank that exits or crashes: the elastic agent notices within its monitor interval and stops
  the others;
- a rank that stops making progress: its own monitor ends it after --rank-timeout seconds (a rank
  blocked inside a collective gets 30 s more, being most likely a victim); a rank whose process
  froze outright stops writing heartbeats and this launcher kills it;
- collectives outside graphs time out after --rank-timeout + 60 s in torch.distributed itself.
When the launcher returns, no rank process of the run is left alive; a failed run raises one
Failure (the CLI's guard prints it and exits with its code).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Sequence

from streamlab.collective import watch
from streamlab.collective.worker import DEFAULT_RANK_TIMEOUT, MODULE, parse
from streamlab.errors import EXIT_BAD_INPUT, EXIT_ENVIRONMENT, Failure

__all__ = ["DEFAULT_RANK_TIMEOUT", "launch_layouts", "launch_run", "launch_sweep", "launch_worker", "run_args"]

MONITOR_INTERVAL_S = 0.2


def run_args(*, model: str | None = None, batch: int | str | None = None, context: int | None = None,
             tp: int | None = None, page_size: int | None = None, kv_cache: str | None = None,
             backend: str | None = None, device: str | None = None, layers: int | None = None,
             profile: str | None = None, verify_full: bool = False, out: str | os.PathLike | None = None,
             impl: str | None = None, force: bool = False) -> list[str]:
    """The worker options of `streamlab run` (what `launch(..., extra_args)` takes)."""
    out_args: list[str] = []
    for flag, value in (("--model", model), ("--batch", batch), ("--context", context), ("--tp", tp),
                        ("--page-size", page_size), ("--kv-cache", kv_cache), ("--backend", backend),
                        ("--device", device), ("--layers", layers), ("--profile", profile),
                        ("--out", out), ("--impl", impl)):
        if value is not None:
            out_args += [flag, str(value)]
    if verify_full:
        out_args.append("--verify-full")
    if force:
        out_args.append("--force")
    return out_args


def launch_run(scenario_paths: Sequence[str | os.PathLike], world: int, extra_args: Sequence[str] = (), *,
               launcher_args: Sequence[str] | None = None,
               rank_timeout: float = DEFAULT_RANK_TIMEOUT) -> None:
    """`streamlab run SCENARIO... --world N`: run each scenario on `world` ranks per node with a
    real all-reduce; rank 0 writes one result JSON per run with every rank's figures.
    `extra_args`: worker options (`run_args(...)`); `launcher_args`: torchrun options for
    multi-node runs (default `--standalone`). Bad scenarios fail here, before any rank starts, and
    so does a run that would use the CPU without being told to (`_devices`)."""
    from streamlab.scenario import load

    for path in scenario_paths:
        load(Path(path))
    _devices(_option(extra_args, "--device") or "auto", "run --world")
    launch_worker(["run", *map(str, scenario_paths), *extra_args], world,
                  launcher_args=launcher_args, rank_timeout=rank_timeout)


def launch_sweep(world: int, impls: str | Sequence[str], sizes: str | Sequence[int], out: str | os.PathLike, *,
                 iters: int = 100, warmup: int = 10, calls: int = 20, device: str = "auto",
                 launcher_args: Sequence[str] | None = None, rank_timeout: float = DEFAULT_RANK_TIMEOUT,
                 force: bool = False) -> None:
    """`streamlab allreduce`: the all-reduce alone over message sizes on `world` ranks; rank 0
    prints the table and writes `out/allreduce-w{world}-{impls}-{cuda|cpu}.json` (refused
    before any rank starts when it exists, unless `force`). Wrong sums fail the run
    (EXIT_CHECK_FAILED) after every size was measured."""
    from streamlab.collective.sweep import parse_sizes, sweep_path
    from streamlab.io import claim
    from streamlab.kernels.allreduce.impls import IMPLS

    impls = [i.strip() for i in (impls.split(",") if isinstance(impls, str) else impls) if i.strip()]
    unknown = [i for i in impls if i not in IMPLS]
    if unknown or not impls:
        raise Failure(f"--impl: unknown all-reduce {', '.join(unknown) or '(none)'}; choose from "
                      f"{', '.join(IMPLS)}", EXIT_BAD_INPUT)
    size_text = sizes if isinstance(sizes, str) else ",".join(str(int(s)) for s in sizes)
    parse_sizes(size_text)
    if min(iters, calls) <= 0 or warmup < 0:
        raise Failure("--iters and --calls must be positive, --warmup not negative", EXIT_BAD_INPUT)
    gpu = _devices(device, "allreduce")
    claim(sweep_path(out, world, impls, gpu), force=force, what="all-reduce sweep")
    launch_worker(["sweep", "--impl", ",".join(impls), "--sizes", size_text, "--out", str(out),
                   "--iters", str(iters), "--warmup", str(warmup), "--calls", str(calls), "--device", device,
                   *(["--force"] if force else [])],
                  world, launcher_args=launcher_args, rank_timeout=rank_timeout)


def _devices(device: str, command: str) -> bool:
    """Whether the ranks will run on GPUs. `--device auto` on a machine without one is refused:
    the ranks would run gloo on the CPU, minutes of eager host-timed calls that measure nothing
    of the GPUs' all-reduce; `--device cpu` asks for that path (tests), and its results say gloo."""
    import torch

    if device == "cpu":
        return False
    if not torch.cuda.is_available():
        raise Failure(f"{command}: no CUDA/HIP GPU is visible to torch {torch.__version__}; the ranks run "
                      "on one GPU each. --device cpu runs the gloo path on the CPU instead (a test of the "
                      "code path, labelled gloo, not a measurement)", EXIT_ENVIRONMENT)
    return True


def _option(args: Sequence[str], flag: str) -> str | None:
    """The value of `flag` in a worker command line (run_args' output)."""
    args = list(args)
    return args[args.index(flag) + 1] if flag in args[:-1] else None


def launch_layouts(jobs: str | os.PathLike, world: int, *, rank_timeout: float = DEFAULT_RANK_TIMEOUT) -> None:
    """`search --measure` on several GPUs: rank r measures run r of the jobs file
    (collective.layout_runs) alone on its GPU, in a process of its own; `world` ranks, one per run."""
    launch_worker(["layouts", str(jobs)], world, rank_timeout=rank_timeout)


def launch_worker(worker_args: Sequence[str], world: int, *, launcher_args: Sequence[str] | None = None,
                  rank_timeout: float = DEFAULT_RANK_TIMEOUT) -> None:
    """Start `world` ranks of the worker with `worker_args`; one Failure if the run failed."""
    code, message = _launch(list(worker_args), world, launcher_args, rank_timeout)
    if code:
        raise Failure(message or f"the run of {world} ranks failed (exit {code})", code)


def _launch(worker_args: list[str], world: int, launcher_args: Sequence[str] | None,
            rank_timeout: float) -> tuple[int, str]:
    if world < 1:
        raise Failure(f"--world must be at least 1, got {world}", EXIT_BAD_INPUT)
    if rank_timeout <= 0:
        raise Failure(f"--rank-timeout must be positive, got {rank_timeout}", EXIT_BAD_INPUT)
    try:  # the ranks' options, checked once here rather than failing on every rank
        parse([*worker_args, "--rank-timeout", str(rank_timeout)])
    except SystemExit:
        raise Failure(f"bad options for the ranks: {' '.join(worker_args)}", EXIT_BAD_INPUT) from None
    import torch.distributed.run as torchrun
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    run_dir = Path(tempfile.mkdtemp(prefix="streamlab-ranks-"))
    argv = [*(launcher_args if launcher_args else ["--standalone"]),
            "--nproc-per-node", str(world), "--max-restarts", "0",
            "--monitor-interval", str(MONITOR_INTERVAL_S),
            "--module", MODULE, *worker_args,
            "--rank-timeout", str(rank_timeout), "--run-dir", str(run_dir)]
    try:
        args = torchrun.parse_args(argv)
    except SystemExit:
        raise Failure(f"bad launcher options: {' '.join(launcher_args or [])}", EXIT_BAD_INPUT) from None
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # what torchrun would set, without its banner
    os.environ.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "10")
    watcher = _Watcher(run_dir, rank_timeout)
    failures: dict = {}
    error: str | None = None
    with _quiet_elastic():
        watcher.start()
        try:
            torchrun.run(args)
        except ChildFailedError as e:
            failures = e.failures
        except KeyboardInterrupt:
            error = "interrupted"
        except Exception as e:  # rendezvous and launcher errors
            name = type(e).__name__
            if name == "SignalException":
                sig = getattr(e, "sigval", None)
                with contextlib.suppress(Exception):
                    sig = signal.Signals(sig).name
                error = f"the launcher received {sig or 'a signal'}; every rank was stopped"
            else:
                error = f"the launcher failed: {name}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        finally:
            watcher.stop()
    try:
        if failures or watcher.killed or error:
            if error and not failures:
                return (130 if "SIGINT" in error or error == "interrupted" else EXIT_ENVIRONMENT), error
            return _explain(run_dir, failures, watcher, world)
        outcome = watch.read_json(run_dir / "outcome.json") or {}
        return int(outcome.get("code", 0)), str(outcome.get("message", ""))
    finally:
        watch.kill_leftovers(run_dir, MODULE)
        shutil.rmtree(run_dir, ignore_errors=True)


def _explain(run_dir: Path, failures: dict, watcher: "_Watcher", world_per_node: int) -> tuple[int, str]:
    beats = watch.heartbeats(run_dir)
    reps = watch.reports(run_dir)
    world = next((hb["world"] for hb in beats.values()), world_per_node)
    ends: dict[int, watch.RankEnd] = {}
    for rank, f in failures.items():
        e = ends.setdefault(rank, watch.RankEnd(rank))
        e.exitcode = f.exitcode
        with contextlib.suppress(Exception):
            e.signal = f.signal_name() if f.exitcode < 0 else None
    for rank, r in reps.items():
        ends.setdefault(rank, watch.RankEnd(rank)).report = r
    for rank, why in watcher.killed.items():
        ends.setdefault(rank, watch.RankEnd(rank)).killed_by_launcher = why
    for rank, hb in beats.items():
        if rank in ends:
            ends[rank].heartbeat = hb
    message, code = watch.explain(ends, world)
    return code, message


class _Watcher:
    """Kills a rank whose heartbeat stopped (a frozen process cannot end itself)."""

    def __init__(self, run_dir: Path, rank_timeout: float) -> None:
        self.run_dir = run_dir
        self.limit = rank_timeout
        self.killed: dict[int, str] = {}
        self._stop = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._loop, name="streamlab-launcher-watch", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        import socket

        host = socket.gethostname()
        while not self._stop.wait(1.0):
            now = time.time()
            for rank, hb in watch.heartbeats(self.run_dir).items():
                if hb.get("state") != "running" or hb.get("host") != host or rank in self.killed:
                    continue
                silent = now - hb.get("time", now)
                if silent > self.limit and watch.is_worker(hb["pid"], MODULE):
                    self.killed[rank] = (f"no heartbeat for {silent:.0f} s (last seen in phase "
                                         f"'{hb.get('phase')}' at {hb.get('where', {}).get('at', '?')}); "
                                         "the launcher killed it")
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(hb["pid"], signal.SIGKILL)


@contextlib.contextmanager
def _quiet_elastic():
    """The elastic agent logs every step and a long failure table; this launcher prints one
    message instead. Its loggers are silenced for the launch (restored afterwards)."""
    import torch.distributed.run  # noqa: F401  (creates the loggers)

    saved = {}
    for name, lg in list(logging.Logger.manager.loggerDict.items()):
        if name.startswith("torch.distributed") and isinstance(lg, logging.Logger):
            saved[name] = lg.level
            lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)

