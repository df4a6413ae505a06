"""Property tests on random DAGs and random schedules.

Soundness: every schedule the checker accepts computes what serial computes under every
interleaving its streams allow (sampled), across two consecutive layers. Completeness: every
race it reports can really happen: some allowed interleaving reads different data than serial.
"""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamlab.layer import Layer, Node, TensorSpec, Variant
from streamlab.models import TINY, RankDims, Shape
from streamlab.schedule.program import Launch, Program, Record, WaitEvent, WaitStream
from streamlab.schedule.validate import check
from tests.stepper import execute

STREAMS = ["main", "s1", "s2"]


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


@st.composite
def schedules(draw, layer: Layer) -> Program:
    order = draw(st.one_of(st.just(layer.names), st.permutations(layer.names)))
    ops = [WaitStream(s, "main", 0, "fork") for s in STREAMS[1:] if draw(st.booleans())]
    line = 1
    for name in order:
        for _ in range(draw(st.integers(0, 2))):
            kind = draw(st.sampled_from(["fork", "join", "record", "wait"]))
            a, b = draw(st.sampled_from(STREAMS)), draw(st.sampled_from(STREAMS))
            if kind in ("fork", "join") and a != b:
                ops.append(WaitStream(a, b, line, kind))
            elif kind == "record":
                ops.append(Record(f"e{draw(st.integers(0, 1))}", a, line))
            elif kind == "wait":
                ops.append(WaitEvent(f"e{draw(st.integers(0, 1))}", a, line))
            line += 1
        ops.append(Launch(name, draw(st.sampled_from(STREAMS)), line))
        line += 1
    if draw(st.booleans()):  # usually end joined, as a real schedule does
        ops += [WaitStream("main", s, line) for s in STREAMS[1:]]
    return Program(ops)


def serial_reads(layer: Layer, program: Program) -> dict:
    serial = Program([Launch(n, "main") for n in layer.names]).repeated(2)
    return execute(layer, serial, lambda runnable: runnable[0])


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_accepted_schedules_match_serial_under_any_interleaving(data):
    layer = data.draw(dags())
    program = data.draw(schedules(layer))
    if check(layer, program):
        return
    expected = serial_reads(layer, program)
    rng = random.Random(data.draw(st.integers(0, 2 ** 32)))
    for _ in range(25):
        got = execute(layer, program.repeated(2), lambda runnable: rng.choice(runnable))
        assert got == expected


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_reported_races_can_happen(data):
    """For a reported race (a before b in serial, unordered in the schedule), running b's stream
    as eagerly as possible and a's stream as late as possible reads other data than serial."""
    layer = data.draw(dags())
    program = data.draw(schedules(layer))
    problems = [p for p in check(layer, program) if p.message.startswith("race on")]
    if not problems:
        return
    a, b = problems[0].nodes
    streams = {op.node: op.stream for op in program.launches}
    late = streams[a]
    expected = serial_reads(layer, program)

    def starve_a(runnable):
        others = [s for s in runnable if s != late]
        return others[0] if others else runnable[0]
    assert execute(layer, program.repeated(2), starve_a) != expected
