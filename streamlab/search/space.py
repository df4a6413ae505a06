"""What the layer's DAG leaves a stream layout to choose.

Every fact here comes from `Layer.dependencies()` (the nearest RAW / WAR / WAW hazard of each
node in the layer's reference order), never from a list of known layouts:

- *sequential* nodes are ordered with every other node of the layer (every other node is their
  ancestor or descendant): nothing can ever run beside them, so a layout keeps them on the main
  stream (pruning rule P1 in `streamlab.search`);
- *regions* are the maximal runs of the other nodes between two sequential ones in reference
  order. Every node before a sequential node is its ancestor, so a region starts and ends with
  every stream idle: regions never overlap each other, and a stream's identity does not carry
  from one region to the next;
- ancestors as bitmasks (bit i = the node at reference position i) for the happens-before
  arithmetic of enumeration and bounds.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

from streamlab.layer import Layer

MAX_STREAMS = 4


@dataclass(frozen=True, eq=False)
class Space:
    """The layer's DAG as the search reads it; node i is `names[i]`, in reference order."""

    layer: Layer
    names: tuple[str, ...]
    parents: tuple[tuple[int, ...], ...]  # direct dependencies inside one layer, ascending
    ancestors: tuple[int, ...]  # bitmask of every node that must happen before node i

    @classmethod
    def of(cls, layer: Layer) -> Space:
        names = tuple(layer.names)
        index = {n: i for i, n in enumerate(names)}
        deps = layer.dependencies(layers=1)
        parents = tuple(tuple(sorted({index[d[0][1]] for d in deps[(0, n)]})) for n in names)
        anc: list[int] = []
        for ps in parents:
            mask = 0
            for p in ps:
                mask |= (1 << p) | anc[p]
            anc.append(mask)
        return cls(layer, names, parents, tuple(anc))

    @property
    def size(self) -> int:
        return len(self.names)

    @cached_property
    def descendants(self) -> tuple[int, ...]:
        out = [0] * self.size
        for i in range(self.size):
            for j in bits(self.ancestors[i]):
                out[j] |= 1 << i
        return tuple(out)

    @cached_property
    def sequential(self) -> frozenset[int]:
        """Nodes ordered with every other node of the layer."""
        everyone = (1 << self.size) - 1
        return frozenset(i for i in range(self.size)
                         if self.ancestors[i] | self.descendants[i] | (1 << i) == everyone)

    @cached_property
    def regions(self) -> tuple[tuple[int, ...], ...]:
        out: list[tuple[int, ...]] = []
        run: list[int] = []
        for i in range(self.size):
            if i in self.sequential:
                if run:
                    out.append(tuple(run))
                run = []
            else:
                run.append(i)
        if run:
            out.append(tuple(run))
        return tuple(out)

    def programs(self, streams: int) -> int:
        """Every way to write the layer as a program of at most `streams` streams with exact
        waits: stream assignments up to renaming the streams (set partitions of the nodes into
        at most `streams` blocks) times dispatch orders (linear extensions of the dependencies)."""
        return partitions(self.size, streams) * self.linear_extensions()

    def linear_extensions(self) -> int:
        count = {0: 1}  # down-set (bitmask of dispatched nodes) -> orders reaching it
        for _ in range(self.size):
            step: dict[int, int] = {}
            for done, ways in count.items():
                for i in range(self.size):
                    if not done >> i & 1 and self.ancestors[i] & done == self.ancestors[i]:
                        step[done | 1 << i] = step.get(done | 1 << i, 0) + ways
            count = step
        return sum(count.values())


def bits(mask: int) -> Iterator[int]:
    """The positions set in a bitmask, ascending."""
    i = 0
    while mask:
        if mask & 1:
            yield i
        mask >>= 1
        i += 1


def partitions(m: int, blocks: int) -> int:
    """Set partitions of m elements into at most `blocks` blocks (Stirling numbers, second kind)."""
    row = [1]  # S(n, k) for k = 0..n
    for n in range(1, m + 1):
        row = [0] + [k * (row[k] if k < len(row) else 0) + row[k - 1] for k in range(1, n + 1)]
    return sum(row[1:blocks + 1]) if m else 1
