"""An all-reduce stand-in for one GPU: a spin kernel that holds the stream for a set time,
then the copy a real out-of-place all-reduce would write. It keeps the AR on the critical path
so layouts compare fairly; results say the AR was emulated."""

from __future__ import annotations

import torch

__all__ = ["EmulatedAllReduce"]

CALIBRATION_CYCLES = 200_000


class EmulatedAllReduce:
    backend = "emulated"

    def __init__(self, duration_us: float, device: torch.device) -> None:
        self.duration_us = duration_us
        self.cycles = int(duration_us * self.cycles_per_us(device))

    @staticmethod
    def cycles_per_us(device: torch.device) -> float:
        """Measured, not read from the clock table: the spin runs at whatever clock the SM has."""
        with torch.cuda.device(device):
            torch.cuda._sleep(CALIBRATION_CYCLES)  # warm up
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(10):
                torch.cuda._sleep(CALIBRATION_CYCLES)
            end.record()
            end.synchronize()
            return 10 * CALIBRATION_CYCLES / (start.elapsed_time(end) * 1e3)

    def __call__(self, *, x: torch.Tensor, out: torch.Tensor) -> None:
        torch.cuda._sleep(self.cycles)
        out.copy_(x)
