"""Kernel backends: one implementation per op and backend.

`reference` (torch, any device) defines the maths; `triton` holds the portable GPU kernels
(NVIDIA and AMD); `aiter` the ROCm production kernels. A backend that lacks an op falls back to
the next one in its chain, and the run records which implementation each node used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from streamlab.layer import Node


class BackendError(RuntimeError):
    """A backend cannot be used here; the message says which kernel and why."""


@dataclass(frozen=True)
class Bound:
    """A node bound to its implementation: calling it runs the node on the given tensors."""

    node: Node
    backend: str
    fn: Callable

    def __call__(self, tensors: dict) -> None:
        args = {role: tensors[t] for role, t in self.node.inputs.items()}
        args.update({role: tensors[t] for role, t in self.node.outputs.items()})
        self.fn(**args, **self.node.attrs)


FALLBACK = {"reference": (), "triton": ("reference",), "aiter": ("triton", "reference")}


def ops_of(backend: str) -> dict[str, Callable]:
    if backend == "reference":
        from streamlab.kernels.reference import OPS
        return OPS
    if backend == "triton":
        from streamlab.kernels.triton import OPS
        return OPS
    if backend == "aiter":
        from streamlab.kernels.aiter import require_aiter
        require_aiter()
    raise BackendError(f"unknown backend {backend!r}; choose from {', '.join(FALLBACK)}")


def bind(node: Node, backend: str, overrides: dict[str, Callable] | None = None) -> Bound:
    """The node's implementation in `backend`, else the first fallback that has the op.

    `overrides` (op -> function) wins over every backend: the collective chosen for a run.
    """
    if overrides and node.op in overrides:
        fn = overrides[node.op]
        return Bound(node, getattr(fn, "backend", "override"), fn)
    if backend not in FALLBACK:
        raise BackendError(f"unknown backend {backend!r}; choose from {', '.join(FALLBACK)}")
    for name in (backend, *FALLBACK[backend]):
        fn = ops_of(name).get(node.op)
        if fn is not None:
            return Bound(node, name, fn)
    raise BackendError(f"no implementation of op {node.op!r} (node {node.name})")
