"""Measure a layout on the GPU: capture `layers` layers into one graph, time replays with device
events, profile a few replays and attribute every kernel to its node, and time each node alone
in a graph of its own (cold L2) for its slowdown.

Three levels: `replay_block` (replays between device events) -> `time_graphs` / `time_graph`
(the one replay-timing harness: warm-up, then interleaved blocks, under a `scenario.Measure`
protocol; the layer, the pairwise benchmark, the all-reduce sweep and the tune scripts all time
through it) -> `measure` (a scenario's layer: timing, profiled Timeline, nodes alone, ceilings,
returned as one `Measurement`; `streamlab.runs` turns it into a result).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import torch

from streamlab.analysis import chained_bounds, percentiles
from streamlab.errors import EXIT_ENVIRONMENT, Failure
from streamlab.exec.attribute import Signature, attribute
from streamlab.exec.buffers import Buffers
from streamlab.exec.eager import StreamSet, run_layers, run_program
from streamlab.exec.profiler import device_events
from streamlab.kernels import Bound, backend_kind
from streamlab.kernels.allreduce.impls import capture_hook
from streamlab.models.hardware import Ceilings
from streamlab.scenario import Measure, Scenario
from streamlab.schedule.graph import capture, with_capture_edges
from streamlab.schedule.program import Launch, Program
from streamlab.timeline import Source, Timeline

__all__ = ["WARMUP_S", "GraphTiming", "Measurement", "NodeIsolated", "ceilings", "isolated", "measure",
           "replay_block", "time_graph", "time_graphs", "warm_up"]


_CEILINGS: dict[int, Ceilings] = {}


def ceilings(device: torch.device) -> Ceilings:
    """Measured on this device, once per process: copy bandwidth and bf16 / fp8 matmul rates."""
    idx = device.index or 0
    if idx not in _CEILINGS:
        from triton.testing import do_bench
        n = 1 << 28  # 512 MiB of bf16: far past L2
        src = torch.randn(n, device=device, dtype=torch.bfloat16)
        dst = torch.empty_like(src)
        copy_ms = do_bench(lambda: dst.copy_(src), return_mode="median")
        a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
        mm_ms = do_bench(lambda: a @ a, return_mode="median")
        fp8_tflops = 2 * _bf16_flops(mm_ms)
        try:
            a8 = a.to(torch.float8_e4m3fn)
            one = torch.ones((), device=device)
            fp8_ms = do_bench(lambda: torch._scaled_mm(a8, a8.t(), one, one, out_dtype=torch.bfloat16),
                              return_mode="median")
            fp8_tflops = _bf16_flops(fp8_ms)
        except RuntimeError:
            pass
        _CEILINGS[idx] = Ceilings(4 * n / (copy_ms * 1e6), _bf16_flops(mm_ms), fp8_tflops)
        del src, dst, a
    return _CEILINGS[idx]


def _bf16_flops(ms: float) -> float:
    return 2 * 8192 ** 3 / (ms * 1e9)


WARMUP_S = 1.0  # seconds of untimed replays before the first timed block (see warm_up)


@dataclass(frozen=True)
class GraphTiming:
    """Per-unit times of consecutive timed replays (graph time / `per_replay`: per layer for a
    layer graph), taken in blocks of `block` replays, and how they are read: `repeats`
    interleaved repeats (replay i belongs to repeat i mod repeats) and contiguous blocks."""
    per_replay_us: list[float]
    block: int
    repeats: int

    @property
    def repeat_medians(self) -> list[float]:
        return [percentiles(self.per_replay_us[r::self.repeats])[1] for r in range(self.repeats)]

    @property
    def block_medians(self) -> list[float]:
        v, n = self.per_replay_us, self.block
        return [percentiles(v[i:i + n])[1] for i in range(0, len(v) - n + 1, n)]


def warm_up(graphs: Sequence[torch.cuda.CUDAGraph], *, replays: int, block: int,
            seconds: float = WARMUP_S) -> None:
    """Untimed blocks of `block` replays of each graph in turn, one synchronisation per block (the
    pattern of the timed blocks), until every graph had `replays` and `seconds` have passed:
    clocks settle over about a second of that work (H100: medians drifted ~1% after 20 replays;
    bench/results/h100-2026-11-21/topk_and_warmup.txt, repeat_spread.txt)."""
    done, start = 0, time.perf_counter()
    while done < replays or time.perf_counter() - start < seconds:
        for graph in graphs:
            for _ in range(block):
                graph.replay()
            torch.cuda.synchronize()
        done += block


def time_graphs(graphs: Sequence[torch.cuda.CUDAGraph], protocol: Measure, *,
                per_replay: Sequence[int] | None = None, lead_in: int = 0,
                warmup_s: float = WARMUP_S) -> list[GraphTiming]:
    """The replay-timing harness. After `warm_up` (`protocol.warmup` replays of each graph and
    `warmup_s` seconds), rounds: each graph in turn replays `lead_in` untimed replays (the first
    replays after another graph ran read slow) and one block of `protocol.iters` replays, each
    between device events; until every graph has `protocol.repeats` blocks and
    `protocol.seconds` have passed. `per_replay[i]`: units in a replay of graph i (layers; calls),
    the divisor of its times. Interleaving several graphs in rounds makes clock drift hit them
    alike (the pairwise benchmark).

    Why repeats are interleaved: on an H100 the layer's speed wanders by up to 5% over seconds
    while the SM clock stays at its maximum with no throttle reason (bench/results/
    h100-2026-11-22/repeat_protocol.txt). Contiguous repeats of a fraction of a second each
    would sample different phases of that; interleaved ones each span the whole window, so
    their spread says how well the window's median is pinned down, and the blocks' medians
    (`block_medians`, reported as drift) show the wander itself."""
    units = list(per_replay) if per_replay is not None else [1] * len(graphs)
    warm_up(graphs, replays=protocol.warmup, block=protocol.iters, seconds=warmup_s)
    out: list[list[float]] = [[] for _ in graphs]
    start = time.perf_counter()
    while (min(len(o) for o in out) < protocol.repeats * protocol.iters
           or time.perf_counter() - start < protocol.seconds):
        for graph, times, n in zip(graphs, out, units):
            for _ in range(lead_in):
                graph.replay()
            times += replay_block(graph, protocol.iters, n)
    return [GraphTiming(times, protocol.iters, protocol.repeats) for times in out]


def time_graph(graph: torch.cuda.CUDAGraph, protocol: Measure, *, per_replay: int = 1,
               warmup_s: float = WARMUP_S) -> GraphTiming:
    """One graph through `time_graphs`: a layer graph of `per_replay` layers under the scenario's
    `measure:` protocol."""
    return time_graphs([graph], protocol, per_replay=[per_replay], warmup_s=warmup_s)[0]


def replay_block(graph: torch.cuda.CUDAGraph, iters: int, per_replay: int = 1) -> list[float]:
    """`iters` back-to-back replays, each between device events: us per unit of each."""
    marks = [torch.cuda.Event(enable_timing=True) for _ in range(iters + 1)]
    marks[0].record()
    for i in range(iters):
        graph.replay()
        marks[i + 1].record()
    marks[-1].synchronize()
    return [marks[i].elapsed_time(marks[i + 1]) * 1e3 / per_replay for i in range(iters)]


@dataclass
class NodeIsolated:
    signature: Signature
    kernel_us: list[float] = field(default_factory=list)  # per replay: sum of its kernel times


def _capture(work, device: torch.device, what: str,
             around=contextlib.nullcontext) -> torch.cuda.CUDAGraph:
    """`around`: held around the capture (the collective's capture hook: aiter registers the
    graph's buffers with its peers when it exits)."""
    graph = torch.cuda.CUDAGraph()
    try:
        with around(), torch.cuda.graph(graph):
            work()
    except torch.OutOfMemoryError:
        raise Failure(f"out of GPU memory while capturing {what}") from None
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise Failure(f"graph capture of {what} failed: {first}") from None
    return graph


def isolated(scen: Scenario, buffers: Buffers, bound: dict[str, Bound], streams: StreamSet,
             replays: int) -> dict[str, NodeIsolated]:
    """Each node alone in its own graph, L2 flushed before each replay, profiled; a budgeted node
    alone under its budget (what the simulator's budget model predicts)."""
    device = buffers.device
    l2 = torch.cuda.get_device_properties(device).L2_cache_size
    scratch = torch.empty(4 * l2, dtype=torch.uint8, device=device)
    flush = _capture(lambda: scratch.fill_(1), device, "the L2 flush")
    flush_ids = {e.identity for e in device_events(flush.replay, device)}
    around = capture_hook(bound)
    out: dict[str, NodeIsolated] = {}
    for node in scen.layer.nodes:
        program = Program([Launch(node.name, scen.program.main, sms=scen.program.budgets.get(node.name))])
        graph = _capture(lambda program=program: run_program(program, bound, buffers, streams), device,
                         f"node {node.name}", around)

        def work(graph=graph) -> None:  # this node's graph, bound now
            for _ in range(replays):
                flush.replay()
                graph.replay()

        events = [e for e in device_events(work, device) if e.identity not in flush_ids]
        per = len(events) // replays
        if per == 0 or per * replays != len(events):
            raise Failure(f"node {node.name}: {len(events)} device operations in {replays} replays "
                          "of its own graph; expected the same number each replay")
        out[node.name] = NodeIsolated([e.identity for e in events[:per]],
                                      [sum(e.end - e.start for e in events[i * per:(i + 1) * per])
                                       for i in range(replays)])
    return out


@dataclass(frozen=True)
class Measurement:
    """A layer measured on the GPU: its timed replays, the profiled replays as a Timeline (every
    kernel attributed to its node), each node alone, and the device's ceilings."""

    timing: GraphTiming
    timeline: Timeline
    isolated: dict[str, NodeIsolated]
    ceilings: Ceilings


def measure(scen: Scenario, buffers: Buffers, bound: dict[str, Bound], streams: StreamSet, *,
            status: Callable[[str], AbstractContextManager] = lambda text: contextlib.nullcontext(),
            ) -> Measurement:
    """Capture the scenario's layers (`buffers.layers`) into one graph, time it under
    `scen.measure`, profile `measure.profile_replays` replays and every node alone.
    `status(text)`: held around each phase (a spinner)."""
    device = buffers.device
    m = scen.measure
    layers = buffers.layers
    run_layers(scen.program, bound, buffers, streams)  # eager warm-up: JIT, workspaces
    torch.cuda.synchronize(device)
    with status("capturing and timing the layer graph"):
        graph = _capture(lambda: run_layers(scen.program, bound, buffers, streams), device,
                         f"{layers} layers of {scen.name}", capture_hook(bound))
        timing = time_graph(graph, m, per_replay=layers)
    with status("profiling replays and nodes alone"):
        events = device_events(lambda: [graph.replay() for _ in range(m.profile_replays)], device)
        alone = isolated(scen, buffers, bound, streams, m.profile_replays)
        collective = {n.name for n in scen.layer.nodes if n.is_collective}
        intervals = attribute(events, capture(scen.program, layers),
                              {k: v.signature for k, v in alone.items()}, m.profile_replays,
                              layers, collective)
        ceil = ceilings(device)
    origin = min(iv.start for iv in intervals)
    intervals = [iv.__class__(iv.name, iv.stream, iv.start - origin, iv.end - origin, iv.node,
                              iv.layer, iv.kind) for iv in intervals]
    timeline = Timeline(intervals, Source("measured", torch.cuda.get_device_name(device), {
        "backend": ",".join(sorted({backend_kind(b.backend) for b in bound.values()})),
        "torch": torch.__version__, "scenario": scen.name,
        **({"sm_budgets": ", ".join(f"{n} {b}" for n, b in scen.program.budgets.items())}
           if scen.program.budgets else {})}), chained_bounds(intervals, layers))
    try:  # the captured graph's edges: critical path and what-if walk the graph traces give
        timeline = with_capture_edges(timeline, scen.program, layers)
    except ValueError as e:  # attribution gave every kernel its (layer, node), as attribute does
        raise Failure(f"kernel attribution: {scen.name}'s profiled kernels do not map onto its captured "
                      f"graph: {e}", EXIT_ENVIRONMENT) from None
    return Measurement(timing, timeline, alone, ceil)
