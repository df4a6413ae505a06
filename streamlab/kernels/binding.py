"""Binding a node to its implementation: `Bound`, the fallback chain of the portable backends
(reference, triton), and the backend labels a run records. The aiter backend and the whole-layer
binding are in streamlab.kernels (`bind`, `bind_layer`), which dispatches here."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from streamlab.layer import Node

__all__ = ["FALLBACK", "BackendError", "Bound", "backend_kind", "bind_portable", "binding_summary",
           "fallback_label", "ops_of"]

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


def bind_portable(node: Node, backend: str) -> Bound:
    """The node's implementation in `backend` (reference or triton), else the first fallback that
    has the op."""
    if backend not in FALLBACK or backend == "aiter":
        raise BackendError(f"unknown portable backend {backend!r}; choose from reference, triton")
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
