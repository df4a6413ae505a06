"""Check a compiled schedule against the layer's data dependencies.

Every hazard of the serial order (RAW, WAR, WAW on any tensor, caches included) must be covered
by stream order or a fork/join/event. The check runs over two consecutive layers, as a graph of
several layers replays them, so a hazard across the layer boundary is caught too.
"""

from __future__ import annotations

from dataclasses import dataclass

from streamlab.layer import Layer
from streamlab.schedule.program import Clocks, Launch, Program

VERB = {"RAW": ("writes", "reads"), "WAR": ("reads", "overwrites"), "WAW": ("writes", "overwrites")}


@dataclass(frozen=True)
class Problem:
    line: int
    message: str
    nodes: tuple[str, ...] = ()


def _fix(a: Launch, b: Launch, main: str, across: bool) -> str:
    """The wait that would order a before b: b's stream waits for a's stream."""
    if b.stream == main:
        wait = f"`join: {a.stream}`"
    elif a.stream == main:
        wait = f"`fork: {b.stream}`"
    else:
        wait = f"`fork: {b.stream}, from: {a.stream}`"
    after = "" if across else f"after line {a.line} and "
    return f"add {wait} ({b.stream}.wait_stream({a.stream})) {after}before line {b.line}"


def check(layer: Layer, program: Program) -> list[Problem]:
    problems: list[Problem] = []
    launches = program.launches
    where: dict[str, Launch] = {}
    for op in launches:
        if op.node in where:
            problems.append(Problem(op.line, f"node {op.node} is scheduled twice (first at line "
                                             f"{where[op.node].line})", (op.node,)))
        else:
            where[op.node] = op
    missing = [n for n in layer.names if n not in where]
    if missing:
        last = launches[-1].line if launches else 0
        problems.append(Problem(last, "nodes never scheduled (each node of the layer runs exactly "
                                      "once): " + ", ".join(missing), tuple(missing)))
    if problems:
        return problems

    clocks = Clocks(program.repeated(2))
    for op in clocks.uncaptured:
        if op.layer == 0:
            problems.append(Problem(op.line, f"node {op.node} runs on stream {op.stream}, which has "
                                             f"not joined the graph: add `fork: {op.stream}` before it",
                                    (op.node,)))
    for w in clocks.unrecorded_waits:
        problems.append(Problem(w.line, f"event {w.event} is waited on before it is recorded"))
    if problems:
        return problems
    unjoined = []
    for s in Clocks(program).unjoined():
        last = max((op.line for op in program.ops if s in (getattr(op, "stream", None),
                                                            getattr(op, "waiter", None))), default=0)
        unjoined.append(Problem(last, f"stream {s} (last used at line {last}) is never joined back "
                                      f"into {program.main} before the end of the layer; add "
                                      f"`join: {s}` after line {last}"))

    order = {(op.layer, op.node): i for i, op in enumerate(clocks.program.launches)}
    races: list[Problem] = []
    next_layer: list[Problem] = []
    for (li, name), deps in layer.dependencies(layers=2).items():
        for (lj, earlier), tensor, hazard in deps:
            a, b = (lj, earlier), (li, name)
            if clocks.before(a, b):
                continue
            la, lb = where[earlier], where[name]
            verb_a, verb_b = VERB[hazard]
            prev = " in the previous layer" if lj != li else ""
            into = next_layer if lj != li else races
            if order[b] < order[a]:
                into.append(Problem(lb.line, (
                    f"dependency cycle: {name} (line {lb.line}) is dispatched before {earlier} "
                    f"(line {la.line}) but {verb_b} {tensor}, which {earlier} {verb_a}: "
                    f"dispatch {earlier} first"), (earlier, name)))
            else:
                into.append(Problem(lb.line, (
                    f"race on {tensor}: {earlier} (stream {la.stream}, line {la.line}){prev} "
                    f"{verb_a} it and {name} (stream {lb.stream}, line {lb.line}) {verb_b} it with "
                    f"nothing ordering them; {_fix(la, lb, program.main, lj != li)}"), (earlier, name)))
    # an unjoined stream races with the next layer everywhere: say it once, not per tensor
    return list(dict.fromkeys(races + unjoined + ([] if unjoined else next_layer)))
