"""Measured runs each in a process of its own.

Runs that share a process interfere. On an H100 the serial layout at batch 4 took 210.8 us as
the first run of a process and 223.8 us after three other layouts had run in it: the
all-stream-idle gaps between its kernels grew from 3 to 14 us per layer (profiler sessions and
recapturing the graph do not explain it). In fresh processes three runs of each layout agreed
within 0.2% (bench/results/h100-2026-11-21/process_order.txt). So every measured run that is
compared with another (`compare`, `check` on scenarios, bench/matrix.py) gets a fresh process;
simulated runs, which share no device state, stay in this one.
"""

from __future__ import annotations

import io
import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

import torch
from rich.console import Console

from streamlab.errors import Failure
from streamlab.report.console import output_console
from streamlab.results import RunResult
from streamlab.scenario import Scenario

R = TypeVar("R")

__all__ = ["call_apart", "measures_on_gpu", "run_apart"]


def measures_on_gpu(device: str) -> bool:
    return device == "cuda" or (device == "auto" and torch.cuda.is_available())


def run_apart(scen: Scenario, *, verbose: bool = False, fresh: bool | None = None,
              **options) -> RunResult:
    """`session.run.run_scenario(scen, console, **options)`, in a fresh (spawned) process when
    `fresh` (default: when it measures on a GPU). Its report is printed only when `verbose`."""
    if not (measures_on_gpu(options.get("device", "auto")) if fresh is None else fresh):
        return _run(scen, verbose, options)
    return call_apart(_run, scen, verbose, options, what=f"{scen.name} batch {scen.shape.batch}")


def call_apart(fn: Callable[..., R], *args, what: str) -> R:
    """`fn(*args)` in a fresh (spawned) process: its return value, or the Failure it raised
    (with its exit code). `fn` and its arguments cross by pickle (a module-level function)."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        try:
            return pool.submit(fn, *args).result()
        except BrokenProcessPool:
            raise Failure(f"{what}: the process measuring it died (see its output above)") from None


def _run(scen: Scenario, verbose: bool, options: dict) -> RunResult:
    from streamlab.session.run import run_scenario

    console = output_console() if verbose else Console(file=io.StringIO(), width=200)
    return run_scenario(scen, console, **options)
