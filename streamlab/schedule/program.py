"""A schedule compiled to stream operations, with the semantics of torch's stream API.

    Launch(node, stream)          the kernel is enqueued on `stream` (`sms`: at most that many
                                  SMs / CUs at once, the node's SM budget; None: the whole GPU)
    WaitStream(waiter, source)    waiter.wait_stream(source): waiter waits for everything
                                  enqueued on source so far (fork: waiter=alt, join: waiter=main)
    Record(event, stream)         event.record(stream): a snapshot of stream
    WaitEvent(event, waiter)      waiter.wait_event(event)

Happens-before is tracked with vector clocks: every operation on a stream ticks that stream's
own component; a wait joins the source's clock into the waiter's. Node A happens before node B
iff B's clock has seen A's tick on A's stream.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAIN = "main"


@dataclass(frozen=True)
class Launch:
    node: str
    stream: str
    line: int = 0
    layer: int = 0
    sms: int | None = None


@dataclass(frozen=True)
class WaitStream:
    waiter: str
    source: str
    line: int = 0
    label: str = ""  # "fork" / "join" as written in the scenario


@dataclass(frozen=True)
class Record:
    event: str
    stream: str
    line: int = 0


@dataclass(frozen=True)
class WaitEvent:
    event: str
    waiter: str
    line: int = 0


Op = Launch | WaitStream | Record | WaitEvent
Clock = dict[str, int]


def _join(a: Clock, b: Clock) -> Clock:
    out = dict(a)
    for s, k in b.items():
        if out.get(s, 0) < k:
            out[s] = k
    return out


@dataclass
class Program:
    """Stream operations in dispatch order."""

    ops: list[Op]
    main: str = MAIN

    @property
    def launches(self) -> list[Launch]:
        return [op for op in self.ops if isinstance(op, Launch)]

    @property
    def budgets(self) -> dict[str, int]:
        """node -> its SM / CU budget, for the budgeted nodes (scenario `sms:`)."""
        return {op.node: op.sms for op in self.ops if isinstance(op, Launch) and op.sms is not None}

    @property
    def streams(self) -> list[str]:
        seen = [self.main]
        for op in self.ops:
            for s in (getattr(op, "stream", None), getattr(op, "waiter", None),
                      getattr(op, "source", None)):
                if s and s not in seen:
                    seen.append(s)
        return seen

    def repeated(self, times: int) -> "Program":
        """The program run `times` times back to back (consecutive layers of one graph)."""
        ops: list[Op] = []
        for i in range(times):
            for op in self.ops:
                ops.append(Launch(op.node, op.stream, op.line, i, op.sms) if isinstance(op, Launch) else op)
        return Program(ops, self.main)


@dataclass
class Clocks:
    """Vector clocks of a program: the happens-before relation between its launches."""

    program: Program
    at_launch: dict[tuple[int, str], Clock] = field(default_factory=dict)
    tick: dict[tuple[int, str], tuple[str, int]] = field(default_factory=dict)
    final: dict[str, Clock] = field(default_factory=dict)
    ops_on: dict[str, int] = field(default_factory=dict)
    unrecorded_waits: list[WaitEvent] = field(default_factory=list)
    uncaptured: list[Launch] = field(default_factory=list)

    def __post_init__(self) -> None:
        p = self.program
        clock: dict[str, Clock] = {p.main: {}}
        events: dict[str, Clock] = {}
        captured = {p.main}  # streams that joined the capture through a wait on a captured one

        def step(s: str) -> Clock:
            c = clock.setdefault(s, {})
            c[s] = c.get(s, 0) + 1
            self.ops_on[s] = c[s]
            return c

        for op in p.ops:
            if isinstance(op, Launch):
                if op.stream not in captured:
                    self.uncaptured.append(op)
                c = step(op.stream)
                key = (op.layer, op.node)
                self.at_launch[key] = dict(c)
                self.tick[key] = (op.stream, c[op.stream])
            elif isinstance(op, WaitStream):
                if op.source in captured:
                    captured.add(op.waiter)
                clock[op.waiter] = _join(clock.get(op.waiter, {}), clock.get(op.source, {}))
                step(op.waiter)
            elif isinstance(op, Record):
                events[op.event] = dict(clock.setdefault(op.stream, {}))
            elif isinstance(op, WaitEvent):
                if op.event not in events:
                    self.unrecorded_waits.append(op)
                    continue
                captured.add(op.waiter)
                clock[op.waiter] = _join(clock.get(op.waiter, {}), events[op.event])
                step(op.waiter)
        self.final = clock

    def before(self, a: tuple[int, str], b: tuple[int, str]) -> bool:
        """Does launch a (layer, node) happen before launch b?"""
        s, k = self.tick[a]
        return self.at_launch[b].get(s, 0) >= k

    def unjoined(self) -> list[str]:
        """Streams whose last operation is not ordered before the end of the main stream."""
        end = self.final.get(self.program.main, {})
        return [s for s, n in self.ops_on.items() if s != self.program.main and end.get(s, 0) < n]
