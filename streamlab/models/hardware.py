"""Device ceilings and the roofline floor: measured where we measured, datasheet otherwise.

`Ceilings.floor_us` is the one roofline floor of the house: the schedule view, the run results
(measured ceilings, exec.measure.ceilings), the simulator's results (profile bandwidth) and the
trace roofline (a device's datasheet, through `Hardware`) all compute it there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

FP8_OPS = {"fp8_linear", "bmm_fp8", "fused_moe", "paged_mqa_logits"}


class Work(Protocol):
    """What a floor needs of a node (streamlab.layer.Node has it)."""

    op: str
    bytes: float
    flops: float


@dataclass(frozen=True)
class Ceilings:
    """The denominators of roofline floors: achievable copy bandwidth (GB/s, bytes read +
    written) and peak bf16 / fp8 TFLOP/s."""

    copy_gbs: float
    bf16_tflops: float
    fp8_tflops: float

    def peak_tflops(self, work: Work) -> float:
        """The FLOP ceiling of the node's math: fp8 for the fp8 ops, else bf16."""
        return self.fp8_tflops if work.op in FP8_OPS else self.bf16_tflops

    def floor_us(self, work: Work) -> float:
        """max(bytes / bandwidth, FLOPs / peak): no kernel runs much faster than this."""
        return max(work.bytes / (self.copy_gbs * 1e3), work.flops / (self.peak_tflops(work) * 1e6))


@dataclass(frozen=True)
class Hardware:
    name: str
    hbm_gbs: float  # achievable copy bandwidth, GB/s (bytes read + written)
    bf16_tflops: float
    fp8_tflops: float
    units: int  # SMs / CUs
    source: str

    @property
    def ceilings(self) -> Ceilings:
        return Ceilings(self.hbm_gbs, self.bf16_tflops, self.fp8_tflops)

    def peak_tflops(self, work: Work) -> float:
        return self.ceilings.peak_tflops(work)

    def floor_us(self, work: Work) -> float:
        return self.ceilings.floor_us(work)


HARDWARE = {
    "h100": Hardware("h100", 3000.0, 798.0, 1600.0, 132,
                     "copy 3.0 TB/s and bf16 798 TFLOP/s measured on the lent H100; fp8 ~2x bf16"),
    "h200": Hardware("h200", 4300.0, 790.0, 1580.0, 132,
                     "copy 4.3 TB/s and bf16 ~790 TFLOP/s measured on the lent H200; fp8 ~2x bf16"),
    "mi355x": Hardware("mi355x", 8000.0, 2500.0, 5000.0, 256,
                       "datasheet: 8 TB/s HBM3E, ~2.5 PFLOP/s bf16, ~5 PFLOP/s fp8 dense"),
}
