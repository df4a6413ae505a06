"""The graph a stream capture of a program produces, and how its branches land on hardware.

Capture semantics (CUDA and HIP alike): each stream carries a set of capture dependencies; a
launch depends on its stream's set and replaces it; wait_stream / wait_event add the source's set
to the waiter's. Edges are created in dispatch order, which is what the HIP rule below keys on.

HIP (ROCm clr, `Graph::ScheduleNodes` / `ScheduleOneNode` in hipamd/src/hip_graph_internal.cpp,
the iterative walk of rocm-systems #2876) at instantiate: each root, in capture order, starts a
depth-first walk on the next stream id (the first on 0); the walk keeps a stack, a node popped
unassigned takes the walk's current id and pushes its unassigned children so that its first edge
is walked first, and a node with no unassigned child ends a branch: the id advances, modulo the
queue count (DEBUG_HIP_FORCE_GRAPH_QUEUES, default 4). So the branch a fork dispatched first keeps
the id and every later branch of the graph takes the next one in turn, wrapping onto id 0, the
launch stream's queue, every `queues`-th branch. (clr before #2876 walked recursively and gave a
node's k-th out-edge its own id + k, so a layout whose forks have two branches used ids 0 and 1
only.) Ids then map to queues at launch: id 0 is the launch stream, the others the graph's own
streams. CUDA picks streams itself at replay; what we can predict there is how many branches may
run at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise

from streamlab.layer import Layer
from streamlab.schedule.program import Launch, Program, Record, WaitEvent, WaitStream
from streamlab.timeline import Edge, Timeline

HIP_QUEUES = 4


@dataclass(frozen=True)
class Captured:
    """The capture graph by position: node i is the i-th launch in dispatch order, with its
    parents and children as positions, in edge creation order. What the simulator walks."""

    keys: list[tuple[int, str]]  # (layer, node)
    streams: list[str]
    parents: list[list[int]]
    children: list[list[int]]


@dataclass
class CaptureGraph:
    """Kernel nodes (layer, node) with edges in creation order."""

    nodes: list[tuple[int, str]]
    stream_of: dict[tuple[int, str], str]
    children: dict[tuple[int, str], list[tuple[int, str]]] = field(default_factory=dict)
    parents: dict[tuple[int, str], list[tuple[int, str]]] = field(default_factory=dict)

    @property
    def roots(self) -> list[tuple[int, str]]:
        return [n for n in self.nodes if not self.parents[n]]

    @property
    def cross_stream_edges(self) -> list[tuple[tuple[int, str], tuple[int, str]]]:
        return [(a, b) for a in self.nodes for b in self.children[a]
                if self.stream_of[a] != self.stream_of[b]]


def captured(program: Program, layers: int = 1) -> Captured:
    """The graph `layers` back-to-back runs of `program` capture, by position. Walks the ops
    layer by layer, on positions rather than keys: the simulator captures every layout it ranks,
    so this is on a schedule search's hot path."""
    keys: list[tuple[int, str]] = []
    streams: list[str] = []
    parents: list[list[int]] = []
    children: list[list[int]] = []
    deps: dict[str, list[int]] = {program.main: []}
    events: dict[str, list[int]] = {}
    for layer in range(layers):
        for op in program.ops:
            if isinstance(op, Launch):
                me = len(keys)
                keys.append((layer, op.node))
                streams.append(op.stream)
                mine = deps.get(op.stream, [])
                parents.append(mine)
                children.append([])
                for p in mine:
                    children[p].append(me)
                deps[op.stream] = [me]
            elif isinstance(op, WaitStream):
                deps[op.waiter] = list(dict.fromkeys(deps.get(op.waiter, []) + deps.get(op.source, [])))
            elif isinstance(op, Record):
                events[op.event] = list(deps.get(op.stream, []))
            elif isinstance(op, WaitEvent):
                deps[op.waiter] = list(dict.fromkeys(deps.get(op.waiter, []) + events.get(op.event, [])))
    return Captured(keys, streams, parents, children)


def capture(program: Program, layers: int = 1) -> CaptureGraph:
    c = captured(program, layers)
    k = c.keys
    return CaptureGraph(list(k), dict(zip(k, c.streams)), {a: [k[j] for j in ch] for a, ch in zip(k, c.children)},
                        {a: [k[j] for j in ps] for a, ps in zip(k, c.parents)})


def hip_queue_ids(c: Captured, queues: int = HIP_QUEUES) -> list[int]:
    """Physical stream id of every node (by position) under the HIP walk (module docstring)."""
    assigned: list[int | None] = [None] * len(c.keys)
    children = c.children
    root_id = 0
    for root in range(len(c.keys)):  # capture order is a topological order: unassigned means a root
        if assigned[root] is not None:
            continue
        sid, pending = root_id, [root]
        push, pop = pending.append, pending.pop
        while pending:
            node = pop()
            if assigned[node] is not None:
                continue
            assigned[node] = sid
            ended = True
            for child in reversed(children[node]):  # pushed last, walked first: the first edge
                if assigned[child] is None:
                    push(child)
                    ended = False
            if ended:  # a branch ended: the next one takes the next id
                sid = (sid + 1) % queues
        root_id = (root_id + 1) % queues
    return assigned


def hip_streams(g: CaptureGraph, queues: int = HIP_QUEUES) -> dict[tuple[int, str], int]:
    """Physical stream id of every node under the HIP depth-first rule."""
    at = {k: i for i, k in enumerate(g.nodes)}
    c = Captured(g.nodes, [g.stream_of[k] for k in g.nodes], [[at[p] for p in g.parents[k]] for k in g.nodes],
                 [[at[ch] for ch in g.children[k]] for k in g.nodes])
    return dict(zip(g.nodes, hip_queue_ids(c, queues)))


def max_concurrency(g: CaptureGraph) -> int:
    """Most nodes that could run at once (greedy level width): the branches CUDA may spread."""
    depth: dict[tuple[int, str], int] = {}
    for n in g.nodes:  # dispatch order is a topological order
        depth[n] = 1 + max((depth[p] for p in g.parents[n]), default=0)
    width: dict[int, int] = {}
    for d in depth.values():
        width[d] = width.get(d, 0) + 1
    return max(width.values(), default=0)


def critical_path(layer: Layer, weight: dict[str, float]) -> tuple[list[str], float]:
    """Longest path through the layer's data dependencies, nodes weighted by `weight` (us)."""
    deps = layer.dependencies()
    best: dict[str, tuple[float, str | None]] = {}
    for node in layer.nodes:
        prev = max(((best[d][0], d) for (_, d), _, _ in deps[(0, node.name)]), default=(0.0, None))
        best[node.name] = (prev[0] + weight.get(node.name, 0.0), prev[1])
    end = max(best, key=lambda n: best[n][0])
    path, cur = [], end
    while cur is not None:
        path.append(cur)
        cur = best[cur][1]
    return path[::-1], best[end][0]


# --- the captured graph on a run's kernels -------------------------------------------------

def capture_edges(timeline: Timeline, program: Program, layers_per_replay: int) -> list[Edge]:
    """The captured graph's edges between a run's intervals, kernel to kernel: intervals carry
    (layer, node), layer = replay * layers_per_replay + layer in the graph. A parent node's
    last kernel -> a child's first; the kernels of one node in order; replay r's last kernels
    (the graph's sinks) -> replay r + 1's first (its roots). Raises ValueError when the
    intervals are not the graph's nodes."""
    graph = capture(program, layers_per_replay)
    occ: dict[tuple[int, int, str], list[int]] = {}  # (replay, layer in graph, node) -> intervals
    for i, iv in enumerate(timeline.intervals):
        if iv.layer is None or iv.node is None:
            raise ValueError(f"interval {iv.name} at {iv.start:.3f} us has no layer or node")
        r, k = divmod(iv.layer, layers_per_replay)
        occ.setdefault((r, k, iv.node), []).append(i)
    replays = max((r for r, _, _ in occ), default=-1) + 1
    known = set(graph.nodes)
    strangers = sorted({(k, n) for _, k, n in occ} - known)
    if strangers:
        raise ValueError(f"{len(strangers)} (layer, node) pairs are not in the graph, e.g. "
                         f"{strangers[0][1]} in layer {strangers[0][0]}")
    ivs = timeline.intervals
    edges: list[Edge] = []
    prev_sinks: list[int] = []
    for r in range(replays):
        kernels = {key: occ.get((r, *key), []) for key in graph.nodes}
        for key in graph.nodes:
            chain = sorted(kernels[key], key=lambda i: (ivs[i].start, ivs[i].end))
            edges += [Edge(a, b, "graph") for a, b in pairwise(chain)]
            kernels[key] = chain
        exits = _exits(graph, kernels, ivs)
        for key in graph.nodes:
            if not kernels[key]:
                continue
            first = kernels[key][0]
            for p in graph.parents[key]:
                edges += [Edge(x, first, "graph") for x in exits[p]]
        roots = [kernels[k][0] for k in _entries(graph, kernels, graph.roots)]
        edges += [Edge(s, t, "launch") for s in prev_sinks for t in roots]
        prev_sinks = sorted({x for k in graph.nodes if not graph.children[k] for x in exits[k]})
    return edges


def with_capture_edges(timeline: Timeline, program: Program, layers_per_replay: int) -> Timeline:
    """The timeline of a measured run with its captured graph's edges (`capture_edges`): what
    critical path and what-if walk on our own runs, the same graph a trace of them gives, and
    what the Chrome trace written from it carries (exec.measure builds its timeline so)."""
    return Timeline(list(timeline.intervals), timeline.source, list(timeline.layers),
                    capture_edges(timeline, program, layers_per_replay))


def _exits(graph: CaptureGraph, kernels: dict, ivs) -> dict[tuple[int, str], list[int]]:
    """Per graph node, the kernels its children wait for: its last one, or for a node with no
    kernels, its parents' (dispatch order is a topological order)."""
    out: dict[tuple[int, str], list[int]] = {}
    for key in graph.nodes:
        if kernels[key]:
            out[key] = [max(kernels[key], key=lambda i: (ivs[i].end, i))]
        else:
            out[key] = sorted({x for p in graph.parents[key] for x in out[p]})
    return out


def _entries(graph: CaptureGraph, kernels: dict, keys) -> list[tuple[int, str]]:
    """The nodes with kernels reached first from `keys` (through nodes without kernels)."""
    out, stack, seen = [], list(keys), set()
    while stack:
        key = stack.pop()
        if key in seen:
            continue
        seen.add(key)
        if kernels[key]:
            out.append(key)
        else:
            stack += graph.children[key]
    return out
