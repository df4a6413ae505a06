"""Every layout of a layer must compute what the serial layout computes.

Both runs start from the same saved state; afterwards every tensor the layer writes
(activations of the last layer, and each layer's KV and index-K cache) is compared.
"""

from __future__ import annotations

import torch

from streamlab.exec.buffers import Buffers
from streamlab.exec.eager import StreamSet, run_layers
from streamlab.kernels import Bound
from streamlab.layer import Layer
from streamlab.results import Difference
from streamlab.schedule.program import Launch, Program

OUTPUTS = ("hidden", "residual")


def serial_program(layer: Layer) -> Program:
    return Program([Launch(n, "main") for n in layer.names])


def _diff(name: str, a: torch.Tensor, b: torch.Tensor) -> Difference:
    if a.dtype in (torch.float8_e4m3fn, torch.uint8):
        a, b = a.view(torch.uint8), b.view(torch.uint8)
        ne = a != b
        return Difference(name, float(ne.any()), int(ne.sum()), a.numel())
    same = (a == b) | (a.isnan() & b.isnan()) if a.is_floating_point() else a == b
    delta = (a.float() - b.float()).abs().nan_to_num(0.0)
    return Difference(name, float(delta.max()) if delta.numel() else 0.0, int((~same).sum()), a.numel())


def compare_with_serial(layer: Layer, program: Program, buffers: Buffers,
                        bound: dict[str, Bound], streams: StreamSet) -> list[Difference]:
    """Run serial, then `program`, from the same state; the difference of every written tensor."""
    start = buffers.save()
    run_layers(serial_program(layer), bound, buffers, streams)
    expected = buffers.save()
    buffers.restore(start)
    run_layers(program, bound, buffers, streams)
    if buffers.device.type == "cuda":
        torch.cuda.synchronize(buffers.device)
    got = buffers.mutable()
    return [_diff(k, expected[k], got[k]) for k in expected]
