"""Layouts measured one process per GPU: the rank side of `streamlab search --measure` on several
GPUs, and the one function that measures a layout, which its one-GPU path calls too.

The launcher (`collective.launch.launch_layouts`) starts one rank per GPU through torch's elastic
launcher; rank r measures job r of a jobs file, alone on GPU LOCAL_RANK, exactly as `streamlab
run` measures it (`session.fresh.run_apart`: outputs checked bitwise against serial, then timed).
The ranks share no process group: their runs are independent, and a run in a rank is already in
a fresh process, which is the house protocol for runs that are compared (session/fresh.py).

    jobs file: {"format": 1, "kind": "layout-runs", "backend": ..., "runs": [LayoutRun, ...]}
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from streamlab.errors import EXIT_BAD_INPUT, Failure
from streamlab.io import write_json_atomic
from streamlab.models import Shape
from streamlab.results import from_json

__all__ = ["LayoutRun", "measure_layout", "rank_layouts", "read_jobs", "write_jobs"]

FORMAT, KIND = 1, "layout-runs"


@dataclass(frozen=True)
class LayoutRun:
    """One layout (a scenario file) at one shape, measured into `folder` (emptied first: a run cut
    short may have left files); `layers` per graph (None: the scenario's `measure.layers`)."""

    path: str
    model: str
    shape: Shape
    folder: str
    device: str = "cuda"
    layers: int | None = None


@dataclass(frozen=True)
class _Jobs:
    backend: str
    runs: tuple[LayoutRun, ...]


def measure_layout(run: LayoutRun, backend: str, *, fresh: bool) -> list[Path]:
    """The run's files (its result, and its trace when measured). A layout whose outputs differ
    from serial's is not a failure here: its result, written first, says so (equal_to_serial)."""
    from streamlab.scenario import load
    from streamlab.session.fresh import run_apart
    from streamlab.session.run import OutputsDiffer

    folder = Path(run.folder)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    scen = load(run.path).override(model=run.model, **vars(run.shape))
    try:
        run_apart(scen, backend=backend, device=run.device, layers=run.layers, out=folder, fresh=fresh)
    except OutputsDiffer:
        pass
    return sorted(folder.iterdir())


def write_jobs(path: Path, runs: list[LayoutRun], backend: str) -> Path:
    return write_json_atomic(path, {"format": FORMAT, "kind": KIND,
                                    **dataclasses.asdict(_Jobs(backend, tuple(runs)))})


def read_jobs(path: Path) -> _Jobs:
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise Failure(f"{path}: cannot read the layout jobs: {e}", EXIT_BAD_INPUT) from None
    if not isinstance(doc, dict) or doc.get("kind") != KIND or doc.get("format") != FORMAT:
        raise Failure(f"{path}: not a layout jobs file of format {FORMAT}", EXIT_BAD_INPUT)
    return from_json({k: v for k, v in doc.items() if k not in ("format", "kind")}, _Jobs, str(path))


def rank_layouts(args, rank: int, local_rank: int, monitor) -> int:
    """This rank's job: take GPU LOCAL_RANK and measure it."""
    import torch

    jobs = read_jobs(Path(args.jobs))
    if rank >= len(jobs.runs):
        raise Failure(f"rank {rank}: {args.jobs} lists {len(jobs.runs)} runs; start one rank per run",
                      EXIT_BAD_INPUT)
    run = jobs.runs[rank]
    if run.device != "cpu":
        torch.cuda.set_device(local_rank)
    monitor.phase(f"measure {Path(run.path).name} b{run.shape.batch}")
    measure_layout(run, jobs.backend, fresh=False)
    return 0
