"""The layer as a DAG: named tensors, and nodes (kernels) that read and write them.

Nodes are kept in canonical (serial) order; data dependencies follow from the tensors each node
reads and writes in that order, so a schedule can be checked against them without a separate
edge list. A tensor may be a view of another (a column slice, a head slice): for ordering, an
access to a view is an access to its base.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

from streamlab.models import RankDims

DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4, "fp8": 1, "uint8": 1, "int32": 4, "int64": 8}


@dataclass(frozen=True)
class View:
    """`base` reshaped to `shape`, then narrowed along `dim` to [start, start + length)."""

    base: str
    shape: tuple[int, ...]
    dim: int
    start: int
    length: int


@dataclass(frozen=True)
class TensorSpec:
    """A buffer of the layer.

    kind: "act" (activations, reused by every layer), "weight" and "cache" (one per layer),
    "meta" (positions, block tables: shared by every layer, read only).
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    kind: str = "act"
    view: View | None = None

    @property
    def per_layer(self) -> bool:
        return self.kind in ("weight", "cache")

    @property
    def nbytes(self) -> int:
        n = DTYPE_BYTES[self.dtype]
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class Node:
    """One kernel (or a tight kernel group) of the layer.

    `inputs` / `outputs` map the op's argument roles to tensor names; a tensor in both is updated
    in place. `flops` and `bytes` are the minimum work at the layer's shape (roofline floor);
    `launches` is how many kernels the node is on the reference hardware path.
    """

    name: str
    op: str
    inputs: dict[str, str]
    outputs: dict[str, str]
    attrs: dict = field(default_factory=dict)
    flops: float = 0.0
    bytes: float = 0.0
    launches: int = 1
    group: str = ""

    @property
    def reads(self) -> tuple[str, ...]:
        return tuple(self.inputs.values())

    @property
    def writes(self) -> tuple[str, ...]:
        return tuple(self.outputs.values())

    @property
    def is_collective(self) -> bool:
        return self.op == "allreduce"


@dataclass(frozen=True)
class Variant:
    fused_rope_cat_cache: bool = True
    shared_expert_fused: bool = True
    preshuffle_index_cache: bool = True


@dataclass
class Layer:
    dims: RankDims
    variant: Variant
    tensors: dict[str, TensorSpec]
    nodes: list[Node]
    groups: dict[str, list[str]]

    def __post_init__(self) -> None:
        self.by_name = {n.name: n for n in self.nodes}
        self.index = {n.name: i for i, n in enumerate(self.nodes)}

    def node(self, name: str) -> Node:
        return self.by_name[name]

    @property
    def dense(self) -> bool:
        """One of the model's first dense layers (an MLP, no MoE)."""
        return "dense_mlp" in self.groups

    def base(self, tensor: str) -> str:
        spec = self.tensors[tensor]
        return self.base(spec.view.base) if spec.view else tensor

    def accesses(self, node: Node) -> Iterator[tuple[str, bool]]:
        """(base tensor, is_write) for every tensor the node touches."""
        for t in node.reads:
            yield self.base(t), False
        for t in node.writes:
            yield self.base(t), True

    def dependencies(self, layers: int = 1) -> dict[tuple[int, str], list[tuple[tuple[int, str], str, str]]]:
        """(layer, node) -> [((layer, earlier node), tensor, hazard)] that must happen before it.

        Built from the serial order of `layers` consecutive layers: per-layer tensors (weights,
        caches) are distinct per layer, activations are shared. Hazards: RAW (reads what the
        earlier node wrote), WAR (overwrites what it read), WAW (overwrites what it wrote). Only
        the nearest conflicting accesses are kept: ordering is transitive along the chain.
        """
        last_write: dict[str, tuple[int, str]] = {}
        readers: dict[str, list[tuple[int, str]]] = {}
        deps: dict[tuple[int, str], list[tuple[tuple[int, str], str, str]]] = {}
        for i in range(layers):
            for node in self.nodes:
                me = (i, node.name)
                acc = [(f"{t}@{i}" if self.tensors[t].per_layer else t, t, w)
                       for t, w in self.accesses(node)]
                mine: list[tuple[tuple[int, str], str, str]] = []
                for key, t, w in acc:
                    if not w and key in last_write and last_write[key] != me:
                        mine.append((last_write[key], t, "RAW"))
                for key, t, w in acc:
                    if w:
                        mine += [(r, t, "WAR") for r in readers.get(key, []) if r != me]
                        if key in last_write and last_write[key] != me:
                            mine.append((last_write[key], t, "WAW"))
                for key, t, w in acc:
                    if w:
                        last_write[key] = me
                        readers[key] = []
                for key, t, w in acc:
                    if not w:
                        readers.setdefault(key, []).append(me)
                deps[me] = list(dict.fromkeys(mine))
        return deps

    def expand(self, name: str) -> list[str] | None:
        """A node name or a group name -> node names in canonical order (None if unknown)."""
        if name in self.by_name:
            return [name]
        if name in self.groups:
            return list(self.groups[name])
        return None

    @property
    def names(self) -> list[str]:
        return [n.name for n in self.nodes]
