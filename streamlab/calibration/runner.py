"""Stages on this machine's GPU, each in a process of its own (the house protocol: runs sharing a
process interfere, session/fresh.py): a single-stream layout measured by `streamlab run`'s own
code (`session.run.run_scenario`; with `world` > 1 through the multi-rank launcher, so the
all-reduce nodes are the real collective), and a pairs stage (calibration/pairbench.py).

The calibration (calibration/run.py) drives any object with these three methods, which is what
lets the CPU tests drive its stages, resume and interruption without a GPU.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from streamlab.calibration.device import DeviceFacts, device_facts, require_gpu
from streamlab.calibration.pairbench import PairsJob, measure_pairs
from streamlab.errors import EXIT_BAD_INPUT, Failure
from streamlab.scenario import load
from streamlab.session.fresh import call_apart, run_apart

__all__ = ["DeviceRunner"]


class DeviceRunner:
    """`backend`: as `--backend` (None: auto); `world`: ranks for the single-stream runs."""

    def __init__(self, *, backend: str | None = None, world: int = 1) -> None:
        if world < 1:
            raise Failure(f"--world must be at least 1, got {world}", EXIT_BAD_INPUT)
        self.backend = backend
        self.world = world

    def facts(self) -> DeviceFacts:
        """The GPU (a Failure without one, before anything is written) and the resolved backend."""
        require_gpu()
        return call_apart(device_facts, self.backend, what="reading the GPU's name, driver and versions")

    def serial(self, path: str, batch: int, backend: str, folder: Path) -> list[Path]:
        """One layout at one batch, measured into `folder` (emptied first: a stage cut short may
        have left files); its result and trace."""
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        if self.world > 1:
            from streamlab.collective.launch import launch_run, run_args
            launch_run([path], self.world, run_args(batch=batch, backend=backend, device="cuda", out=folder))
        else:
            run_apart(load(path).override(batch=batch), backend=backend, device="cuda", layers=None, out=folder,
                      fresh=True)
        return sorted(folder.iterdir())

    def pairs(self, job: PairsJob, out: Path) -> Path:
        return call_apart(measure_pairs, job, out, what=f"the pairs stage writing {out.name}")
