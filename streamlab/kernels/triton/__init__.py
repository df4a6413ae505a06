"""Triton backend: portable GPU kernels (NVIDIA and AMD) for every op of the layer.

Each module owns one family of ops and exports `OPS` (op name -> function with the same keyword
signature as `streamlab.kernels.reference`). Functions write their outputs in place, allocate
nothing that depends on data, never synchronise with the host, and so capture into graphs.
`common` holds what the modules share: the interpreter flag, dot operands and exact casts.
"""

from __future__ import annotations

from streamlab.kernels.triton import attention, gemm, indexer, moe, norm, rope, topk

MODULES = (gemm, norm, indexer, topk, rope, attention, moe)
OPS = {name: fn for mod in MODULES for name, fn in mod.OPS.items()}
