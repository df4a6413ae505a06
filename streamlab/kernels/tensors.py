"""The layer's tensors as torch sees them: its dtype names, and its views over allocated tensors
(shared by the executor's buffers and the compile-for-a-target recorder)."""

from __future__ import annotations

import torch

from streamlab.kernels.quant import FP8
from streamlab.layer import Layer

__all__ = ["TORCH_DTYPES", "with_views"]

TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32,
                "fp8": FP8, "uint8": torch.uint8, "int32": torch.int32, "int64": torch.int64}


def with_views(layer: Layer, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`tensors` (every tensor of the layer that is not a view) plus the layer's views of them."""
    out = dict(tensors)
    for spec in layer.tensors.values():
        if spec.view is not None:
            v = spec.view
            out[spec.name] = out[v.base].view(v.shape).narrow(v.dim, v.start, v.length)
    return out
