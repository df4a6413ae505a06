"""Kernel backends: one implementation per op and backend.

`reference` (torch, any device) defines the maths; `triton` holds the portable GPU kernels
(NVIDIA and AMD); `aiter` the ROCm production kernels. A backend that lacks an op falls back to
the next one in its chain, and the run records which implementation each node used. aiter
decides per node (its kernels take some shapes and layouts and not others), so binding it needs
the layer's tensor specs; a node it cannot run says why in its backend string.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from streamlab.kernels.binding import (FALLBACK, BackendError, Bound, backend_kind, bind_portable,
                                       binding_summary, fallback_label, ops_of)
from streamlab.layer import Layer, Node, TensorSpec

__all__ = ["FALLBACK", "BackendError", "Bound", "backend_kind", "bind", "bind_layer", "bind_portable",
           "binding_summary", "fallback_label", "ops_of"]


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
    return bind_portable(node, backend)


def bind_layer(layer: Layer, backend: str, overrides: dict | None = None) -> dict[str, Bound]:
    """Every node of the layer bound (`bind`), by name."""
    return {n.name: bind(n, backend, overrides, layer.tensors) for n in layer.nodes}
