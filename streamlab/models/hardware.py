"""Device ceilings for roofline floors: measured where we measured, datasheet otherwise."""

from __future__ import annotations

from dataclasses import dataclass

from streamlab.layer import Node

FP8_OPS = {"fp8_linear", "bmm_fp8", "fused_moe", "paged_mqa_logits"}


@dataclass(frozen=True)
class Hardware:
    name: str
    hbm_gbs: float  # achievable copy bandwidth, GB/s (bytes read + written)
    bf16_tflops: float
    fp8_tflops: float
    units: int  # SMs / CUs
    source: str

    def peak_tflops(self, node: Node) -> float:
        """The FLOP ceiling of the node's math: fp8 for the fp8 ops, else bf16."""
        return self.fp8_tflops if node.op in FP8_OPS else self.bf16_tflops

    def floor_us(self, node: Node) -> float:
        """max(bytes / bandwidth, flops / peak): no kernel runs much faster than this."""
        return max(node.bytes / (self.hbm_gbs * 1e3), node.flops / (self.peak_tflops(node) * 1e6))


HARDWARE = {
    "h100": Hardware("h100", 3000.0, 798.0, 1600.0, 132,
                     "copy 3.0 TB/s and bf16 798 TFLOP/s measured on the lent H100; fp8 ~2x bf16"),
    "h200": Hardware("h200", 4300.0, 790.0, 1580.0, 132,
                     "copy 4.3 TB/s and bf16 ~790 TFLOP/s measured on the lent H200; fp8 ~2x bf16"),
    "mi355x": Hardware("mi355x", 8000.0, 2500.0, 5000.0, 256,
                       "datasheet: 8 TB/s HBM3E, ~2.5 PFLOP/s bf16, ~5 PFLOP/s fp8 dense"),
}
