"""Property tests of the schedule checker on random DAGs.

Valid schedules are built valid by construction: a dispatch order that respects the layer's
hazards, random streams, and for every hazard between streams that nothing orders yet a wait
(`wait_stream`, or an event recorded and waited on), each stream forked before its first use and
joined at the end. The checker must accept every one (soundness of the construction, and no false
alarm), and every interleaving the streams allow must compute what serial computes.

Invalid schedules are built with one known fault each: a node scheduled twice or never, a stream
used before it joined the graph, one never joined back, a node alone on a side stream with
nothing ordering it (every hazard it has is a race), or a dispatch order that inverts hazards.
The checker must report exactly those problems, with the message that names them; a reported
race must really change what some interleaving reads.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from streamlab.layer import Layer, Node, TensorSpec, Variant
from streamlab.models import TINY, RankDims, Shape
from streamlab.schedule.program import MAIN, Launch, Op, Program, Record, WaitEvent, WaitStream
from streamlab.schedule.validate import check
from tests.stepper import execute

SIDE = ["s1", "s2"]
STREAMS = [MAIN, *SIDE]


@st.composite
def dags(draw) -> Layer:
    n_tensors = draw(st.integers(2, 6))
    tensors = {f"t{i}": TensorSpec(f"t{i}", (1,), "fp32",
                                   draw(st.sampled_from(["act", "act", "cache"])))
               for i in range(n_tensors)}
    names = list(tensors)
    nodes = []
    for i in range(draw(st.integers(2, 8))):
        reads = draw(st.lists(st.sampled_from(names), max_size=3, unique=True))
        writes = draw(st.lists(st.sampled_from(names), min_size=1, max_size=2, unique=True))
        nodes.append(Node(f"n{i}", "noop", {f"r{j}": t for j, t in enumerate(reads)},
                          {f"w{j}": t for j, t in enumerate(writes)}))
    return Layer(RankDims(TINY, Shape(tp=1)), Variant(), tensors, nodes, {})


def hazards(layer: Layer) -> dict[str, list[tuple[str, str, str]]]:
    """node -> (earlier node, tensor, hazard) of its own layer that it must follow (the layer's
    nearest hazards, as the layer states them)."""
    return {name: [(e, t, h) for (lj, e), t, h in deps if lj == 0]
            for (li, name), deps in layer.dependencies(layers=1).items() if li == 0}


def follows(layer: Layer) -> dict[str, list[str]]:
    """node -> the earlier nodes of its own layer it must follow."""
    return {n: list(dict.fromkeys(e for e, _, _ in hs)) for n, hs in hazards(layer).items()}


class Builder:
    """Ops with line numbers, and what each stream is known to follow (a happens-before of its
    own, independent of the checker's vector clocks)."""

    def __init__(self, lazy_fork: bool) -> None:
        self.ops: list[Op] = []
        self.known: dict[str, set[str]] = {MAIN: set()}
        self.events: dict[str, set[str]] = {}
        self.lazy_fork = lazy_fork
        if not lazy_fork:
            for s in SIDE:
                self.fork(s)

    def _add(self, op: Op) -> None:
        self.ops.append(op)

    def line(self) -> int:
        return len(self.ops) + 1

    def fork(self, s: str) -> None:
        self._add(WaitStream(s, MAIN, self.line(), "fork"))
        self.known[s] = set(self.known[MAIN])

    def use(self, s: str) -> None:
        if s not in self.known:
            self.fork(s)

    def launch(self, node: str, s: str) -> None:
        self.use(s)
        self._add(Launch(node, s, self.line()))
        self.known[s].add(node)

    def wait_stream(self, waiter: str, source: str) -> None:
        self.use(waiter)
        self._add(WaitStream(waiter, source, self.line()))
        self.known[waiter] |= self.known[source]

    def wait_event(self, waiter: str, source: str, event: str) -> None:
        self.use(waiter)
        self._add(Record(event, source, self.line()))
        self.events[event] = set(self.known[source])
        self._add(WaitEvent(event, waiter, self.line()))
        self.known[waiter] |= self.events[event]

    def join_all(self, order: list[str]) -> None:
        for s in order:
            if s in self.known and s != MAIN:
                self._add(WaitStream(MAIN, s, self.line(), "join"))


@st.composite
def valid_schedules(draw) -> tuple[Layer, Program]:
    layer = draw(dags())
    after = follows(layer)
    order: list[str] = []
    while len(order) < len(layer.names):  # a random dispatch order that respects every hazard
        ready = [n for n in layer.names if n not in order and all(a in order for a in after[n])]
        order.append(draw(st.sampled_from(ready)))
    stream = {n: draw(st.sampled_from(STREAMS)) for n in order}
    b = Builder(lazy_fork=draw(st.booleans()))
    for n in order:
        b.use(stream[n])
        for a in after[n]:
            if a not in b.known[stream[n]]:  # nothing orders a before n yet: wait
                if draw(st.booleans()):
                    b.wait_stream(stream[n], stream[a])
                else:
                    b.wait_event(stream[n], stream[a], f"e{draw(st.integers(0, 1))}")
        b.launch(n, stream[n])
    b.join_all(draw(st.permutations(SIDE)))
    return layer, Program(b.ops)


def serial_reads(layer: Layer) -> dict:
    serial = Program([Launch(n, MAIN) for n in layer.names]).repeated(2)
    return execute(layer, serial, lambda runnable: runnable[0])


@settings(max_examples=300, deadline=None)
@given(valid_schedules(), st.randoms(use_true_random=False))
def test_every_schedule_valid_by_construction_is_accepted_and_computes_what_serial_does(drawn, rng):
    layer, program = drawn
    assert check(layer, program) == []
    expected = serial_reads(layer)
    for _ in range(10):
        assert execute(layer, program.repeated(2), lambda runnable: rng.choice(runnable)) == expected


# --- invalid schedules, each with the problems it must get --------------------------------------

VERB = {"RAW": ("writes", "reads"), "WAR": ("reads", "overwrites"), "WAW": ("writes", "overwrites")}


@dataclass(frozen=True)
class Expected:
    """A problem the checker must report: its whole message, and the nodes it names."""

    message: str
    nodes: tuple[str, ...] = ()


def serial_program(names: list[str], stream: dict[str, str] | None = None) -> list[Op]:
    """Launches in serial order; streams other than main forked at the start, joined at the end."""
    stream = stream or {}
    side = sorted({s for s in stream.values() if s != MAIN})
    ops: list[Op] = [WaitStream(s, MAIN, 0, "fork") for s in side]
    ops += [Launch(n, stream.get(n, MAIN)) for n in names]
    ops += [WaitStream(MAIN, s, 0, "join") for s in side]
    return ops


def numbered(ops: list[Op]) -> Program:
    """Line i + 1 for op i (each op its own line, as a scenario file gives them)."""
    out = []
    for i, op in enumerate(ops, 1):
        fields = {k: getattr(op, k) for k in op.__dataclass_fields__}
        out.append(type(op)(**{**fields, "line": i}))
    return Program(out)


FAULTS = ("twice", "missing", "uncaptured", "unjoined", "stray", "inverted")
NEED_HAZARDS = ("stray", "inverted")


@st.composite
def invalid_schedules(draw, faults: tuple[str, ...] = FAULTS) -> tuple[Layer, Program, set[Expected]]:
    """A schedule with one fault of `faults`, and the problems it must get."""
    only_hazards = all(f in NEED_HAZARDS for f in faults)
    layer = draw(dags().filter(lambda g: any(hazards(g).values())) if only_hazards else dags())
    names = layer.names
    after = hazards(layer)
    fault = draw(st.sampled_from([f for f in faults if f not in NEED_HAZARDS or any(after.values())]))
    if fault == "twice":
        n = draw(st.sampled_from(names))
        ops = serial_program(names) + [Launch(n, MAIN)]
        return layer, numbered(ops), {Expected(f"node {n} is scheduled twice (first at line "
                                               f"{names.index(n) + 1})", (n,))}
    if fault == "missing":
        gone = draw(st.lists(st.sampled_from(names), min_size=1, max_size=len(names) - 1, unique=True))
        missing = [n for n in names if n in gone]
        return layer, numbered(serial_program([n for n in names if n not in gone])), {
            Expected("nodes never scheduled (each node of the layer runs exactly once): " + ", ".join(missing),
                     tuple(missing))}
    if fault == "uncaptured":  # n on s1, which nothing forked
        n = draw(st.sampled_from(names))
        ops = [Launch(m, "s1" if m == n else MAIN) for m in names] + [WaitStream(MAIN, "s1", 0, "join")]
        return layer, numbered(ops), {
            Expected(f"node {n} runs on stream s1, which has not joined the graph: add `fork: s1` before it", (n,))}
    if fault == "unjoined":  # the last node on s1, forked right before it, never joined back
        n = names[-1]
        ops = [Launch(m, MAIN) for m in names[:-1]] + [WaitStream("s1", MAIN, 0, "fork"), Launch(n, "s1")]
        last = len(ops)
        return layer, numbered(ops), {
            Expected(f"stream s1 (last used at line {last}) is never joined back into main before the end "
                     f"of the layer; add `join: s1` after line {last}")}
    if fault == "stray":  # a alone on s1, forked at the start, joined at the end: nothing orders it
        a = draw(st.sampled_from([n for n in names if after[n] or any(e == n for hs in after.values()
                                                                       for e, _, _ in hs)]))
        line = {n: i + 2 for i, n in enumerate(names)}  # after the fork of s1 on line 1
        stream = {n: "s1" if n == a else MAIN for n in names}

        def race(e: str, n: str, t: str, h: str) -> Expected:
            fix = "`join: s1` (main.wait_stream(s1))" if e == a else "`fork: s1` (s1.wait_stream(main))"
            return Expected(f"race on {t}: {e} (stream {stream[e]}, line {line[e]}) {VERB[h][0]} it and {n} "
                            f"(stream {stream[n]}, line {line[n]}) {VERB[h][1]} it with nothing ordering them; "
                            f"add {fix} after line {line[e]} and before line {line[n]}", (e, n))
        return layer, numbered(serial_program(names, {a: "s1"})), {
            race(e, n, t, h) for n, hs in after.items() for e, t, h in hs if a in (e, n)}
    # inverted: one stream, a node dispatched right before one it must follow
    late = draw(st.sampled_from([n for n in names if after[n]]))
    first = draw(st.sampled_from([e for e, _, _ in after[late]]))
    order = [n for n in names if n != late]
    order.insert(order.index(first), late)
    line = {n: i + 1 for i, n in enumerate(order)}
    return layer, numbered([Launch(n, MAIN) for n in order]), {
        Expected(f"dependency cycle: {n} (line {line[n]}) is dispatched before {e} (line {line[e]}) but "
                 f"{VERB[h][1]} {t}, which {e} {VERB[h][0]}: dispatch {e} first", (e, n))
        for n, hs in after.items() for e, t, h in hs if line[n] < line[e]}


@settings(max_examples=300, deadline=None)
@given(invalid_schedules())
def test_every_schedule_with_a_known_fault_gets_exactly_its_problems(drawn):
    layer, program, expected = drawn
    problems = check(layer, program)
    assert {Expected(p.message, p.nodes) for p in problems} == expected
    assert len(problems) == len(expected)


@settings(max_examples=200, deadline=None)
@given(invalid_schedules(("stray",)))
def test_reported_races_can_happen(drawn):
    """For a reported race (a before b in serial, unordered in the schedule), running b's stream
    as eagerly as possible and a's stream as late as possible reads other data than serial."""
    layer, program, _ = drawn
    a, _ = check(layer, program)[0].nodes
    late = {op.node: op.stream for op in program.launches}[a]

    def starve(runnable):
        others = [s for s in runnable if s != late]
        return others[0] if others else runnable[0]
    assert execute(layer, program.repeated(2), starve) != serial_reads(layer)


def test_the_builder_waits_only_where_nothing_orders_a_hazard():
    """n0 -> n1 and n0 -> n2: n1 on s1 forked after n0 needs no wait; n2 on s2, forked before n0
    (eagerly, at the start), waits for main."""
    tensors = {t: TensorSpec(t, (1,), "fp32") for t in ("x", "y", "z")}
    nodes = [Node("n0", "noop", {}, {"o": "x"}), Node("n1", "noop", {"i": "x"}, {"o": "y"}),
             Node("n2", "noop", {"i": "x"}, {"o": "z"})]
    layer = Layer(RankDims(TINY, Shape(tp=1)), Variant(), tensors, nodes, {})
    lazy = Builder(lazy_fork=True)
    lazy.launch("n0", MAIN)
    lazy.use("s1")
    assert "n0" in lazy.known["s1"]
    eager = Builder(lazy_fork=False)
    eager.launch("n0", MAIN)
    assert "n0" not in eager.known["s2"]
    eager.wait_event("s2", MAIN, "e0")
    assert "n0" in eager.known["s2"]
    eager.launch("n2", "s2")
    eager.launch("n1", MAIN)
    eager.join_all(SIDE)
    assert check(layer, Program(eager.ops)) == []
    assert check(layer, Program([op for op in eager.ops if not isinstance(op, WaitEvent)])) != []
