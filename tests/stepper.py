"""A step-by-step executor of stream programs for tests: streams run their queues in order, a
wait blocks until the source has finished what was enqueued on it at dispatch time, and a
`choose` function picks which runnable stream goes next. It records, for every launch, which
launch last wrote each tensor it reads, so any interleaving can be compared with serial."""

from __future__ import annotations

from typing import Callable

from streamlab.layer import Layer
from streamlab.schedule.program import Launch, Program, Record, WaitEvent, WaitStream


def _queues(program: Program):
    """Per stream: a list of (kind, payload); a wait carries (source stream, ops to wait for)."""
    queues: dict[str, list] = {}
    enqueued: dict[str, int] = {}
    events: dict[str, tuple[str, int]] = {}
    for op in program.ops:
        if isinstance(op, Launch):
            queues.setdefault(op.stream, []).append(("launch", op))
            enqueued[op.stream] = enqueued.get(op.stream, 0) + 1
        elif isinstance(op, WaitStream):
            target = (op.source, enqueued.get(op.source, 0))
            queues.setdefault(op.waiter, []).append(("wait", target))
            enqueued[op.waiter] = enqueued.get(op.waiter, 0) + 1
        elif isinstance(op, Record):
            events[op.event] = (op.stream, enqueued.get(op.stream, 0))
        elif isinstance(op, WaitEvent) and op.event in events:
            queues.setdefault(op.waiter, []).append(("wait", events[op.event]))
            enqueued[op.waiter] = enqueued.get(op.waiter, 0) + 1
    return queues


def execute(layer: Layer, program: Program, choose: Callable[[list[str]], str]) -> dict:
    """Run `program`; returns {(layer, node): {tensor: (layer, writer) or None}} of what each
    read, and under "history" the order of writers of every tensor."""
    queues = _queues(program)
    done = {s: 0 for s in queues}
    last_writer: dict[str, tuple[int, str]] = {}
    seen: dict = {}
    history: dict[str, list[tuple[int, str]]] = {}
    while any(done[s] < len(q) for s, q in queues.items()):
        runnable = []
        for s, q in queues.items():
            if done[s] >= len(q):
                continue
            kind, payload = q[done[s]]
            if kind == "launch" or done.get(payload[0], 0) >= payload[1]:
                runnable.append(s)
        if not runnable:
            raise RuntimeError("deadlock")
        s = choose(sorted(runnable))
        kind, op = queues[s][done[s]]
        done[s] += 1
        if kind != "launch":
            continue
        node = layer.node(op.node)
        key = (op.layer, op.node)

        def tname(t: str) -> str:
            base = layer.base(t)
            return f"{base}@{op.layer}" if layer.tensors[base].per_layer else base

        seen[key] = {tname(t): last_writer.get(tname(t)) for t in node.reads}
        for t in node.writes:
            last_writer[tname(t)] = key
            history.setdefault(tname(t), []).append(key)
    seen["history"] = history
    return seen
