"""Measure a layout on the GPU: capture `layers` layers into one graph, time replays with device
events, profile a few replays and attribute every kernel to its node, and time each node alone
in a graph of its own (cold L2) for its slowdown."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.console import Console

from streamlab.analysis import Summary, chained_bounds, percentiles, summarize
from streamlab.collective.impls import capture_hook
from streamlab.errors import Failure
from streamlab.exec.attribute import Signature, attribute
from streamlab.exec.buffers import Buffers
from streamlab.exec.eager import StreamSet, run_layers, run_program
from streamlab.exec.profile import device_events
from streamlab.kernels import Bound, backend_kind
from streamlab.scenario import Scenario
from streamlab.schedule.graph import capture
from streamlab.schedule.program import Launch, Program
from streamlab.timeline import Source, Timeline


@dataclass
class Ceilings:
    """Measured on this device, once per process: the denominators of roofline floors."""

    copy_gbs: float
    bf16_tflops: float
    fp8_tflops: float


_CEILINGS: dict[int, Ceilings] = {}


def ceilings(device: torch.device) -> Ceilings:
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


WARMUP_S = 1.0


@dataclass
class GraphTiming:
    """Per-layer times of consecutive timed replays (graph time / layers), taken in blocks of
    `block` replays, and how they are read: `repeats` interleaved repeats (replay i belongs to
    repeat i mod repeats) and contiguous blocks."""
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


def warm_up(graph: torch.cuda.CUDAGraph, replays: int, batch: int,
            seconds: float = WARMUP_S) -> None:
    """Untimed batches of `batch` replays with one synchronisation each, the pattern of the timed
    blocks, for at least `replays` replays and `seconds`: clocks settle over about a second of
    that work (H100: medians drifted ~1% after 20 replays; bench/results/h100-2026-11-21/
    topk_and_warmup.txt, repeat_spread.txt)."""
    done, start = 0, time.perf_counter()
    while done < replays or time.perf_counter() - start < seconds:
        for _ in range(batch):
            graph.replay()
        done += batch
        torch.cuda.synchronize()


def time_graph(graph: torch.cuda.CUDAGraph, layers: int, warmup: int, iters: int,
               repeats: int, seconds: float = 0.0) -> GraphTiming:
    """Blocks of `iters` replays, each replay between device events, for at least `repeats`
    blocks and `seconds`, after the warm-up.

    Why repeats are interleaved: on an H100 the layer's speed wanders by up to 5% over seconds
    while the SM clock stays at its maximum with no throttle reason (bench/results/
    h100-2026-11-22/repeat_protocol.txt). Contiguous repeats of a fraction of a second each
    would sample different phases of that; interleaved ones each span the whole window, so
    their spread says how well the window's median is pinned down, and the blocks' medians
    (`block_medians`, reported as drift) show the wander itself."""
    warm_up(graph, warmup, iters)
    out: list[float] = []
    start = time.perf_counter()
    while len(out) < repeats * iters or time.perf_counter() - start < seconds:
        out += replay_block(graph, iters, layers)
    return GraphTiming(out, iters, repeats)


def replay_block(graph: torch.cuda.CUDAGraph, iters: int, layers: int) -> list[float]:
    """`iters` back-to-back replays, each between device events: us per layer of each."""
    marks = [torch.cuda.Event(enable_timing=True) for _ in range(iters + 1)]
    marks[0].record()
    for i in range(iters):
        graph.replay()
        marks[i + 1].record()
    marks[-1].synchronize()
    return [marks[i].elapsed_time(marks[i + 1]) * 1e3 / layers for i in range(iters)]


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
    """Each node alone in its own graph, L2 flushed before each replay, profiled."""
    device = buffers.device
    l2 = torch.cuda.get_device_properties(device).L2_cache_size
    scratch = torch.empty(4 * l2, dtype=torch.uint8, device=device)
    flush = _capture(lambda: scratch.fill_(1), device, "the L2 flush")
    flush_ids = {e.identity for e in device_events(flush.replay, device)}
    around = capture_hook(bound)
    out: dict[str, NodeIsolated] = {}
    for node in scen.layer.nodes:
        program = Program([Launch(node.name, scen.program.main)])
        graph = _capture(lambda: run_program(program, bound, buffers, streams), device,
                         f"node {node.name}", around)

        def work() -> None:
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


def measure(scen: Scenario, buffers: Buffers, bound: dict[str, Bound], streams: StreamSet,
            console: Console) -> tuple[GraphTiming, Timeline, Summary, dict[str, NodeIsolated], Ceilings]:
    device = buffers.device
    m = scen.measure
    layers = buffers.layers
    run_layers(scen.program, bound, buffers, streams)  # eager warm-up: JIT, workspaces
    torch.cuda.synchronize(device)
    with _status(console, "capturing and timing the layer graph"):
        graph = _capture(lambda: run_layers(scen.program, bound, buffers, streams), device,
                         f"{layers} layers of {scen.name}", capture_hook(bound))
        timing = time_graph(graph, layers, m.warmup, m.iters, m.repeats, m.seconds)
    with _status(console, "profiling replays and nodes alone"):
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
        "torch": torch.__version__, "scenario": scen.name}), chained_bounds(intervals, layers))
    return timing, timeline, summarize(timeline), alone, ceil


def _status(console: Console, text: str):
    return console.status(text) if console.is_terminal else contextlib.nullcontext()


def measure_and_report(scen: Scenario, buffers: Buffers, bound: dict[str, Bound],
                       streams: StreamSet, console: Console, out: Path) -> dict:
    from streamlab.report.result import floor_us, layer_result, print_result
    from streamlab.trace import write_chrome

    timing, timeline, summary, alone, ceil = measure(scen, buffers, bound, streams, console)
    trace_path = out / f"{scen.name}-b{scen.shape.batch}.trace.json.gz"
    write_chrome(timeline, trace_path)
    result = layer_result(
        scen, f"measured on {timeline.source.device}", timing.per_replay_us, timing.repeat_medians, summary,
        {n: percentiles(v.kernel_us)[1] for n, v in alone.items()},
        {n: len(v.signature) for n, v in alone.items()},
        {n.name: floor_us(n, ceil.copy_gbs, ceil.bf16_tflops, ceil.fp8_tflops) for n in scen.layer.nodes},
        {n: b.backend for n, b in bound.items()},
        next((b.backend for b in bound.values() if b.node.is_collective), "none"),
        held_us={n: b.fn.duration_us for n, b in bound.items() if b.backend == "emulated"},
        block_medians=timing.block_medians)
    result["ceilings"] = vars(ceil)
    result["trace"] = str(trace_path)
    print_result(console, scen, result)
    console.print(f"trace (Perfetto / chrome://tracing): {trace_path}")
    return {"measured": result}
