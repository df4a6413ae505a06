"""Run a compiled schedule: launches in dispatch order on real streams, waits as wait_stream /
wait_event. On the CPU streams do not exist and dispatch order is the execution order, which a
validated schedule makes equivalent to the serial one."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from streamlab.exec.buffers import Buffers
from streamlab.kernels import Bound
from streamlab.schedule.program import Launch, Program, Record, WaitEvent, WaitStream


@dataclass
class StreamSet:
    """Named torch streams on one device; `main` is the stream the caller is on."""

    device: torch.device

    def __post_init__(self) -> None:
        self._streams: dict[str, torch.cuda.Stream] = {}
        self._events: dict[str, torch.cuda.Event] = {}

    @property
    def real(self) -> bool:
        return self.device.type == "cuda"

    def get(self, name: str, main: str) -> torch.cuda.Stream | None:
        if not self.real:
            return None
        if name == main:
            return torch.cuda.current_stream(self.device)
        if name not in self._streams:
            self._streams[name] = torch.cuda.Stream(self.device)
        return self._streams[name]

    def event(self, name: str) -> torch.cuda.Event | None:
        if not self.real:
            return None
        return self._events.setdefault(name, torch.cuda.Event())


def run_program(program: Program, bound: dict[str, Bound], buffers: Buffers,
                streams: StreamSet, layer_index: int = 0) -> None:
    """Dispatch one layer of `program`; on a GPU this may be inside a graph capture. A budgeted
    launch (`Launch.sms`) reaches its kernels as `max_programs`."""
    tensors = buffers.tensors(layer_index)
    main = program.main
    for op in program.ops:
        if isinstance(op, Launch):
            s = streams.get(op.stream, main)
            with torch.cuda.stream(s) if s is not None else contextlib.nullcontext():
                bound[op.node](tensors, op.sms)
        elif not streams.real:
            continue
        elif isinstance(op, WaitStream):
            streams.get(op.waiter, main).wait_stream(streams.get(op.source, main))
        elif isinstance(op, Record):
            streams.event(op.event).record(streams.get(op.stream, main))
        elif isinstance(op, WaitEvent):
            streams.get(op.waiter, main).wait_event(streams.event(op.event))


def run_layers(program: Program, bound: dict[str, Bound], buffers: Buffers,
               streams: StreamSet) -> None:
    for i in range(buffers.layers):
        run_program(program, bound, buffers, streams, i)
