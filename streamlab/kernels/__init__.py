"""Kernel backends: one implementation per op and backend.

`reference` (torch, any device) defines the maths; `triton` holds the portable GPU kernels
(NVIDIA and AMD); `aiter` the ROCm production kernels. A backend that lacks an op falls back to
the next one in its chain, and the run records which implementation each node used. aiter
decides per node (its kernels take some shapes and layouts and not others), so binding it needs
the layer's tensor specs; a node it cannot run says why in its backend string.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from streamlab.layer import Node, TensorSpec


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
    raise BackendError(f"unknown backend {backend!r}; choose from {', '.join(FALLBACK)}")


def bind(node: Node, backend: str, overrides: dict[str, Callable] | None = None,
         specs: Mapping[str, TensorSpec] | None = None) -> Bound:
    """The node's implementation in `backend`, else the first fallback that has the op.

    `overrides` (op -> function) wins over every backend: the collective chosen for a run.
    `specs` (the layer's tensors) are needed by `aiter`, which checks the node's shapes.
    """
    if overrides and node.op in overrides:
        fn = overrides[node.op]
        return Bound(node, getattr(fn, "backend", "override"), fn)
    if backend not in FALLBACK:
        raise BackendError(f"unknown backend {backend!r}; choose from {', '.join(FALLBACK)}")
    if backend == "aiter":
        if specs is None:
            raise BackendError(f"binding {node.name} to aiter needs the layer's tensor specs")
        from streamlab.kernels.aiter.nodes import bind_aiter
        return bind_aiter(node, specs)
    for name in (backend, *FALLBACK[backend]):
        fn = ops_of(name).get(node.op)
        if fn is not None:
            return Bound(node, name, fn)
    raise BackendError(f"no implementation of op {node.op!r} (node {node.name})")


def fallback_label(used: str, wanted: str, why: str) -> str:
    """The backend string of a node that `wanted` could not run: results and reports show it."""
    return f"{used} ({wanted} fallback: {why})"


def backend_kind(label: str) -> str:
    """The backend a node ran on, without the fallback reason of `fallback_label`."""
    return label.partition(" (")[0]


def binding_summary(bound: Mapping[str, Bound]) -> list[str]:
    """What ran where, for the printed report: nodes per backend, then each fallback and why."""
    kinds = Counter(backend_kind(b.backend) for b in bound.values())
    fallbacks = [(name, b.backend) for name, b in bound.items() if " fallback: " in b.backend]
    head = "kernels: " + ", ".join(f"{kind} {n} nodes" for kind, n in kinds.most_common())
    if fallbacks:
        head += f" ({len(fallbacks)} of them fallbacks)"
    return [head] + [f"  {name}: {backend}" for name, backend in fallbacks]
