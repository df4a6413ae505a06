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

    def __call__(self, tensors: dict, max_programs: int | None = None) -> None:
        """Run the node; `max_programs`: its SM / CU budget (`budget_problem` says which
        implementations take one)."""
        args = {role: tensors[t] for role, t in self.node.inputs.items()}
        args.update({role: tensors[t] for role, t in self.node.outputs.items()})
        if max_programs is None:
            self.fn(**args, **self.node.attrs)
        else:
            self.fn(**args, **self.node.attrs, max_programs=max_programs)

    def budget_problem(self, gpu: bool) -> str | None:
        """Why this binding cannot honour an SM / CU budget, or None. Triton kernels take it through
        their grid; the reference ops accept it and, on the CPU, have no SMs to limit (so a CPU
        run checks a budgeted layout's results); on a GPU they would ignore it. aiter's kernels
        choose their own grid, and the ROCm alternative, a CU mask on the stream, does not survive
        HIP graph capture (kernels/cu_mask.py), so a budgeted aiter node is refused rather than
        run unbudgeted; so is the all-reduce."""
        kind = backend_kind(self.backend)
        if kind == "triton" or (kind == "reference" and not gpu):
            return None
        if kind == "aiter":
            return ("it runs on aiter, whose kernels choose their own grid; on ROCm the budget would be a CU "
                    "mask on its stream, which does not survive HIP graph capture (streamlab/kernels/"
                    "cu_mask.py): run it with --backend triton")
        if kind == "reference":
            return "the reference backend's torch ops on a GPU cannot be held to a budget: use --backend triton"
        return f"it runs on {self.backend}, which takes no SM / CU budget"


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
