"""Show a schedule: stream lanes in dispatch order, what may overlap, cross-stream edges, the
HIP physical streams, the critical path; and Graphviz for the capture graph."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text

from streamlab.layer import Layer
from streamlab.models.hardware import Hardware
from streamlab.schedule.graph import (CaptureGraph, capture, critical_path, hip_streams,
                                      max_concurrency)
from streamlab.schedule.program import Clocks, Launch, Program, Record, WaitEvent, WaitStream


def concurrent_sets(layer: Layer, program: Program) -> list[tuple[list[str], list[str]]]:
    """Groups of nodes that may run at the same time: (nodes on one side, nodes on the other).

    Two launches on different streams overlap when neither happens before the other; the
    overlap relation is split into connected components, each shown as `main side || alt side`.
    """
    clocks = Clocks(program)
    launches = program.launches
    pairs: dict[str, set[str]] = {}
    for i, a in enumerate(launches):
        for b in launches[i + 1:]:
            ka, kb = (0, a.node), (0, b.node)
            if a.stream != b.stream and not clocks.before(ka, kb) and not clocks.before(kb, ka):
                pairs.setdefault(a.node, set()).add(b.node)
                pairs.setdefault(b.node, set()).add(a.node)
    stream = {op.node: op.stream for op in launches}
    seen: set[str] = set()
    out = []
    for start in [op.node for op in launches if op.node in pairs]:
        if start in seen:
            continue
        comp, todo = set(), [start]
        while todo:
            n = todo.pop()
            if n not in comp:
                comp.add(n)
                todo.extend(pairs[n])
        seen |= comp
        order = [op.node for op in launches if op.node in comp]
        first = stream[order[0]]
        out.append(([n for n in order if stream[n] == first], [n for n in order if stream[n] != first]))
    return out


def compact(layer: Layer, names: list[str]) -> str:
    """Node names, with a whole group written as its group name."""
    rest = list(names)
    for g, members in layer.groups.items():
        if len(members) > 1 and all(m in rest for m in members) and g != "moe":
            i = rest.index(members[0])
            rest = [m for m in rest if m not in members]
            rest.insert(i, f"[{g}]")
    return ", ".join(rest)


def schedule_view(name: str, layer: Layer, program: Program, hw: Hardware,
                  queues: int = 4) -> Group:
    graph = capture(program)
    hip = hip_streams(graph, queues)
    streams = program.streams
    floors = {n.name: hw.ceilings.floor_us(n) for n in layer.nodes}

    table = Table(title=f"{name}: stream lanes in dispatch order", title_justify="left",
                  show_lines=False, pad_edge=False)
    table.add_column("line", justify="right", style="dim")
    for s in streams:
        table.add_column(s, style="bold" if s == program.main else "cyan")
    table.add_column("HIP stream", justify="right")
    table.add_column(f"floor us ({hw.name})", justify="right", style="dim")
    for op in program.ops:
        if isinstance(op, Launch):
            shown = op.node if op.sms is None else f"{op.node} [{op.sms} of {hw.units} SMs/CUs]"
            cells = [shown if s == op.stream else "" for s in streams]
            table.add_row(str(op.line), *cells, str(hip[(0, op.node)]), f"{floors[op.node]:.1f}")
        else:
            table.add_row(str(op.line), _sync_text(op), *[""] * len(streams), "", style="yellow")
    path, total = critical_path(layer, floors)
    used = sorted(set(hip.values()))
    lines = [
        table,
        Text.assemble(("physical streams: ", "bold"),
                      f"HIP {len(used)} (ids {used}, DEBUG_HIP_FORCE_GRAPH_QUEUES={queues}); "
                      f"CUDA up to {max_concurrency(graph)} concurrent branches (driver-chosen)"),
        Text.assemble(("cross-stream edges: ", "bold"), _edges(graph) or "none"),
    ]
    for left, right in concurrent_sets(layer, program):
        lines.append(Text.assemble(("overlap: ", "bold"), compact(layer, left), ("  ||  ", "bold magenta"),
                                   compact(layer, right)))
    lines.append(Text.assemble(("critical path ", "bold"), f"({hw.name} roofline floors, "
                               f"{total:.1f} us of {sum(floors.values()):.1f} us total): ",
                               " -> ".join(path)))
    return Group(*lines)


def _sync_text(op) -> str:
    if isinstance(op, WaitStream):
        return f"-- {op.label or 'wait'}: {op.waiter}.wait_stream({op.source}) --"
    if isinstance(op, Record):
        return f"-- record {op.event} on {op.stream} --"
    if isinstance(op, WaitEvent):
        return f"-- {op.waiter}.wait_event({op.event}) --"
    return ""


def _edges(graph: CaptureGraph) -> str:
    return ", ".join(f"{a[1]} ({graph.stream_of[a]}) -> {b[1]} ({graph.stream_of[b]})"
                     for a, b in graph.cross_stream_edges)


def to_dot(name: str, program: Program, layers: int = 1, queues: int = 4) -> str:
    """Graphviz of the capture graph: one cluster per capture stream, HIP stream ids in labels."""
    graph = capture(program, layers)
    hip = hip_streams(graph, queues)
    lines = [f'digraph "{name}" {{', "  rankdir=TB; node [shape=box, fontname=Helvetica];"]
    for s in program.streams:
        lines.append(f'  subgraph "cluster_{s}" {{ label="{s}";')
        for n in graph.nodes:
            if graph.stream_of[n] == s:
                lines.append(f'    "{n[0]}:{n[1]}" [label="{n[1]}\\nL{n[0]} HIP stream {hip[n]}"];')
        lines.append("  }")
    for a in graph.nodes:
        for b in graph.children[a]:
            style = ' [color=red, penwidth=2]' if graph.stream_of[a] != graph.stream_of[b] else ""
            lines.append(f'  "{a[0]}:{a[1]}" -> "{b[0]}:{b[1]}"{style};')
    lines.append("}")
    return "\n".join(lines) + "\n"


