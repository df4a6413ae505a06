"""Triton backend: portable GPU kernels (NVIDIA and AMD) for every op of the layer.

Each module owns one family of ops and exports `OPS` (op name -> function with the same keyword
signature as `streamlab.kernels.reference`). Functions write their outputs in place, allocate
nothing that depends on data, never synchronise with the host, and so capture into graphs.
"""

from __future__ import annotations

import importlib

MODULES = ("gemm", "norm", "indexer", "rope", "attention", "moe")


def _collect() -> dict:
    ops: dict = {}
    for name in MODULES:
        try:
            mod = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
            continue
        ops.update(mod.OPS)
    return ops


OPS = _collect()
