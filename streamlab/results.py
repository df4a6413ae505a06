"""The result files streamlab writes, as typed frozen dataclasses, and the one place that reads
and writes them.

Kinds (the `kind` of a file, its dataclass): "run" `RunResult` (one scenario at one shape, measured
or simulated), "compare" `CompareResult` (compare's report.json, the GPU matrix), "check"
`CheckVerdict` (`check --json`), "trace-summary" `TraceSummary` (`trace summary --json`),
"trace-diff" `TraceDiff` (`trace diff --json`), "allreduce-sweep" `AllReduceSweep`
(`allreduce`), "search" `SearchRanking` (`search --json`) and "search-measure" `SearchMeasurement`
(`search --measure`). Every file is `{"schema": SCHEMA, "kind": KIND, ...fields}`. `dump(obj, path)`
writes one atomically; `load(path, RunResult)` reads one, and `load_runs(path)` the run results
of a run or compare file, `load_any(path)` whatever it holds.
A file of another kind or version is refused with one `Failure(EXIT_BAD_INPUT)` that names the
file and what it found.
`json_schema(kind)` derives a JSON Schema from the same type hints the reader checks against
(shipped in streamlab/schemas/, `streamlab schema` rewrites them).

Format history (SCHEMA):
- 0: untyped dicts without a schema key: a run ({"measured" | "simulated": {...}}, the layer
  anatomy under "profile"; stall sites named the kernel before the gap "after" and the one after
  it "before", with count and median only); a bench matrix (a list of runs with "batch" and
  "seconds", or {"scenario", "batch", "error"}); an all-reduce sweep ({"kind": "allreduce-sweep"}).
- 1: compare's report.json: {"schema": 1, "runs": [schema-0 runs with "scenario" and "batch"]}.
- 2: typed, every file with its kind. A run keeps its measurement protocol and every timed
  replay; the anatomy is "anatomy"; stall sites as `analysis.StallSite`. Kind "search"
  (`search --json`) joined schema 2; before, the search printed its own untyped record
  ({"schema": 1, "request", "batches", ...}), which is refused as schema 1 (regenerate it).
Files of schemas 0 and 1 are read (everything under bench/results/ and traces/ is); values they
never recorded read as NaN (stall-site totals) or empty (per-replay times).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar, Union

from streamlab.analysis import NodeStats, StallSite, Stat, is_allreduce_node, spread
from streamlab.errors import (
    EXIT_BAD_INPUT,
    EXIT_CHECK_FAILED,
    EXIT_INCONCLUSIVE,
    Failure,
)
from streamlab.io import write_json_atomic
from streamlab.layer import Variant
from streamlab.models import Shape
from streamlab.models.hardware import Ceilings, Hardware
from streamlab.scenario import Measure
from streamlab.timeline import Source

__all__ = [
    "DO_NOT_ENABLE",
    "ENABLE",
    "INCONCLUSIVE",
    "KINDS",
    "SCHEMA",
    "AllReduceCalls",
    "AllReduceOnRank",
    "AllReduceSweep",
    "Anatomy",
    "Arrival",
    "Attribution",
    "BatchMeasurement",
    "BatchRanking",
    "BatchVerdict",
    "Budget",
    "CheckVerdict",
    "CollectiveRow",
    "CompareResult",
    "CriticalPath",
    "DiffRow",
    "Difference",
    "ExposedCommunication",
    "GraphAndEager",
    "HardwareQueue",
    "IntervalPart",
    "KernelChange",
    "Latency",
    "LayerFigures",
    "LayoutExplanation",
    "MeasuredLayout",
    "MovedNode",
    "NearCritical",
    "NodeRate",
    "NodeResult",
    "NodeTime",
    "NotAStep",
    "OutsideLayers",
    "PathKernel",
    "PlacedLayout",
    "PredictedLatency",
    "PredictedOverlap",
    "PredictedStep",
    "ProfileParameter",
    "Protocol",
    "RankFigures",
    "RankSkew",
    "RankWait",
    "RankedLayout",
    "Ranks",
    "Roofline",
    "RunFailure",
    "RunResult",
    "SearchLayout",
    "SearchLimits",
    "SearchMeasurement",
    "SearchOverlap",
    "SearchProfile",
    "SearchRanking",
    "SearchRequest",
    "SearchTally",
    "Shift",
    "SkippedVariant",
    "SlowedNode",
    "SmBudgetPass",
    "StepPart",
    "StepSplit",
    "SweepRow",
    "TraceDependencies",
    "TraceDiff",
    "TraceGpu",
    "TraceKernel",
    "TraceLayers",
    "TraceLoader",
    "TraceSource",
    "TraceStream",
    "TraceSummary",
    "Versus",
    "WhatIf",
    "WhatIfMatch",
    "dump",
    "from_json",
    "json_schema",
    "load",
    "load_any",
    "load_runs",
    "to_json"
]

SCHEMA = 2


# --- a run --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Protocol:
    """How the timed numbers were taken (exec.measure.time_graph): the scenario's `measure:`
    settings, whole, and the harness's warm-up time."""

    measure: Measure
    warmup_s: float


@dataclass(frozen=True)
class Latency:
    """Per-layer latency: every timed replay's graph time / layers, and how they are read.
    Repeats are interleaved (replay i belongs to repeat i mod repeats), blocks are consecutive
    (exec.measure.GraphTiming). A simulation has one value and no spread."""

    median: float
    p20: float
    p80: float
    per_replay_us: tuple[float, ...]  # empty in files before schema 2
    repeat_medians_us: tuple[float, ...]
    repeat_spread: float  # (max - min) / median of the repeat medians
    block_medians_us: tuple[float, ...]
    drift: float  # the same over the block medians

    @property
    def noise(self) -> float:
        """How far another run of the same layout could land, as a fraction of the median: the
        larger of the repeat spread (how well the timed window pins its median) and half the
        drift (the layer's speed wanders within a window, so a fresh run's window can sit
        elsewhere: on an H100 three fresh runs of serial at batch 4 measured 200.1 / 203.9 /
        200.1 us with drifts of 2.4 / 4.6 / 2.7%; bench/results/h100-2026-11-22/
        fresh_process_rounds.json)."""
        return max(self.repeat_spread, self.drift / 2)


@dataclass(frozen=True)
class Budget:
    """What the layer should cost at least: the sum of node floors plus an allowance per kernel."""

    us: float  # floor_sum_us + launch_us x kernels
    floor_sum_us: float
    floor_held_us: float  # part of floor_sum_us: nodes that hold their stream by design (emulated AR)
    roofline_us: float  # the budget with held nodes at their roofline floor
    launch_us: float  # allowance per kernel: decode is launch-latency heavy
    kernels: int  # per layer


@dataclass(frozen=True)
class Anatomy:
    """Where the layer's time goes, from profiled replays (measured) or the simulated timeline
    (analysis.summarize over layers): wall, kernel time, overlap, all-stream-idle bubble by gap
    class, stalls and where they happen, all-reduce time per call, physical streams."""

    wall_us: Stat
    kernel_sum_us: Stat
    overlap: Stat
    bubble_us: Stat
    bubble_by_class_us: dict[str, Stat]  # analysis.GAP_CLASSES
    stalls_per_layer: Stat
    allreduce_per_call_us: Stat | None  # None: no all-reduce
    allreduce: str  # what ran the all-reduce
    physical_streams: int
    stall_sites: tuple[StallSite, ...]
    # the median layer's bubble by gap class (analysis.median_split): adds up to bubble_us.median,
    # where the per-class medians above need not; None in files written before it
    bubble_split_us: dict[str, float] | None = None


@dataclass(frozen=True)
class NodeTime(Stat):
    """A node's in-graph time per occurrence (sum of its kernels), and its mean per layer."""

    mean: float | None = None  # files before 2026-11-22 lack it


@dataclass(frozen=True)
class NodeResult:
    """One node: inside the layer's graph, alone in a graph of its own (L2 flushed), and its
    roofline floor."""

    in_graph_us: NodeTime | None  # None: no kernel of it was seen
    isolated_us: float
    slowdown: float  # in-graph median / isolated (NaN without either)
    floor_us: float  # max(bytes / copy bandwidth, FLOPs / peak), or a held node's set time
    kernels: int
    flops: float
    bytes: float
    backend: str  # what the timed numbers ran


@dataclass(frozen=True)
class Difference:
    """A tensor the layout computed differently from the serial layout (exec.verify)."""

    tensor: str
    max_abs: float
    mismatched: int  # elements (bytes for caches) that differ
    total: int

    @property
    def identical(self) -> bool:
        return self.mismatched == 0


@dataclass(frozen=True)
class ProfileParameter:
    """A simulator device-profile parameter a simulated run used, with where it came from."""

    parameter: str
    value: str
    source: str


@dataclass(frozen=True)
class AllReduceOnRank:
    """nccl-tests columns of one all-reduce node on one rank, in the graph and alone."""

    bytes: int  # per rank
    in_graph_us: NodeTime | None
    isolated_us: float | None
    slowdown: float | None
    algbw_gbs: float | None
    busbw_gbs: float | None
    isolated_algbw_gbs: float | None
    isolated_busbw_gbs: float | None


@dataclass(frozen=True)
class RankFigures:
    """One rank's own figures in a run over several ranks."""

    rank: int
    local_rank: int
    host: str
    pid: int
    device: str
    equal_to_serial: bool
    latency: Latency
    allreduce_per_call_us: Stat | None
    bubble_us: Stat | None
    physical_streams: int | None
    allreduce_nodes: dict[str, AllReduceOnRank]


@dataclass(frozen=True)
class Ranks:
    """A run over `world` ranks with a real all-reduce: what ran it and every rank's figures."""

    world: int
    complete: bool  # every rank reported
    allreduce: dict[str, Any]  # the implementation's description (kernels.allreduce.describe)
    figures: tuple[RankFigures, ...]


@dataclass(frozen=True)
class IntervalPart:
    """One part of a prediction interval: +- `us` per layer, and how it was computed."""

    name: str
    us: float
    source: str


@dataclass(frozen=True)
class PredictedOverlap:
    """Two kernels the simulated layout ran side by side, `first` the one that kept its pace, and
    whether the profile measured that ordered pair (else the demand model extrapolated it)."""

    first: str
    second: str
    measured: bool
    first_us: float  # standalone work each did beside the other, per layer
    second_us: float
    crowded: bool = False  # beside a third kernel at some point: no pair measurement settles that


@dataclass(frozen=True)
class MovedNode:
    """A node latency scaled from the profile's calibrated shape to this one."""

    node: str
    us: float
    moved_us: float  # us - the calibrated point's latency
    moved_from: str  # the calibrated point and why it moved


@dataclass(frozen=True)
class PredictedLatency:
    """A simulated per-layer latency with its interval: a prediction, never a measurement."""

    per_layer_us: float
    low_us: float
    high_us: float
    parts: tuple[IntervalPart, ...]  # the interval's half-width is their sum
    overlaps: tuple[PredictedOverlap, ...]
    overlaps_line: str  # e.g. "5 of 7 overlaps measured; 2 extrapolated: a|b, c|d"
    moved: tuple[MovedNode, ...]
    measure_command: str | None = None  # measures the extrapolated overlaps


@dataclass(frozen=True)
class StepPart:
    """A part of the decode step outside the layers: an estimate, +- us, and how it was made."""

    name: str
    us: float
    spread_us: float
    how: str


@dataclass(frozen=True)
class PredictedStep:
    """Time per output token of the whole model on a profile: a prediction with its interval."""

    per_token_ms: float
    low_ms: float
    high_ms: float
    published_ms: float | None  # the profile's published figure for this layout, if any
    dense_layers: int
    dense_layer: PredictedLatency
    moe_layers: int
    moe_layer: PredictedLatency
    outside: tuple[StepPart, ...]


@dataclass(frozen=True)
class RunResult:
    """A run of one scenario at one shape: measured in a captured graph on a GPU, or simulated on
    a device profile (`measured` False; `source` says which profile: a prediction)."""

    KIND: ClassVar[str] = "run"
    scenario: str
    path: str  # the scenario file
    model: str
    shape: Shape
    variant: Variant
    layers: int  # captured (or simulated) in one graph
    device: str  # where it ran ("cpu" for a simulation)
    versions: dict[str, str]
    backends: dict[str, str]  # node -> the kernels that computed the outputs checked against serial
    equal_to_serial: bool | None  # None: not checked (`streamlab sim`)
    differences: tuple[Difference, ...]
    measured: bool
    source: str  # "measured on DEVICE" or "simulated, profile NAME"
    protocol: Protocol | None  # None: simulated
    latency: Latency
    budget: Budget
    anatomy: Anatomy
    nodes: dict[str, NodeResult]
    ceilings: Ceilings | None = None  # measured on the device (the roofline floors' denominators)
    trace: str | None = None  # the Chrome trace of the run's timeline
    device_profile: tuple[ProfileParameter, ...] = ()  # simulated: the profile's parameters
    ranks: Ranks | None = None  # a run over several ranks
    prediction: PredictedLatency | None = None  # simulated: the interval and the overlaps it rests on
    step: PredictedStep | None = None  # simulated with --step: the whole decode step

    @property
    def batch(self) -> int:
        return self.shape.batch

    def allreduce_calls(self) -> int:
        """All-reduce nodes per layer."""
        return sum(1 for name in self.nodes if is_allreduce_node(name))


@dataclass(frozen=True)
class RunFailure:
    """A run that ended in a failure instead of a result (compare --keep-going)."""

    scenario: str
    batch: int
    message: str


@dataclass(frozen=True)
class CompareResult:
    """Layouts side by side (compare, the GPU matrix): each run in its own process on a GPU."""

    KIND: ClassVar[str] = "compare"
    runs: tuple[RunResult, ...]
    failures: tuple[RunFailure, ...] = ()
    complete: bool = True  # False while runs are still being added

    @property
    def batches(self) -> list[int]:
        return sorted({r.batch for r in self.runs})

    def at(self, batch: int) -> list[RunResult]:
        return [r for r in self.runs if r.batch == batch]


# --- a check ------------------------------------------------------------------------------------

ENABLE, DO_NOT_ENABLE, INCONCLUSIVE = "enable", "do not enable", "inconclusive"
Decision = Literal["enable", "do not enable", "inconclusive"]
EXIT = {ENABLE: 0, DO_NOT_ENABLE: EXIT_CHECK_FAILED, INCONCLUSIVE: EXIT_INCONCLUSIVE}


@dataclass(frozen=True)
class Attribution:
    """Per-layer difference (candidate - baseline, us) split into where it goes:
    total = kernel_time + allreduce - overlap_saved + bubble + other."""

    total: float
    kernel_time: float  # kernel time outside all-reduces grew (contention) or shrank
    allreduce: float  # all-reduce time per layer
    overlap_saved: float  # kernel time hidden under other kernels
    bubble: float  # all-stream-idle time
    bubble_stall: float
    other: float  # latency not inside the profiled layer window (graph entry, timing vs profile)

    def parts(self) -> list[tuple[str, float]]:
        return [("kernel time", self.kernel_time), ("all-reduce", self.allreduce),
                ("overlap saved", -self.overlap_saved), ("bubble", self.bubble),
                ("other", self.other)]


@dataclass(frozen=True)
class BatchVerdict:
    batch: int
    baseline_us: float
    candidate_us: float
    delta_us: float
    band_us: float  # the noise band the delta must leave
    verdict: Decision
    attribution: Attribution


@dataclass(frozen=True)
class CheckVerdict:
    """The gate's answer (check.judge): enable / do not enable / inconclusive, per batch and in
    all, with the exit code `check` returns; `reason` when the sides cannot be compared."""

    KIND: ClassVar[str] = "check"
    baseline: str
    candidate: str
    verdict: Decision
    batches: tuple[BatchVerdict, ...]
    source: str
    reason: str | None = None  # why the sides are not comparable (the verdict is then inconclusive)
    exit_code: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "exit_code", EXIT[self.verdict])

    def line(self) -> str:
        worst = max(self.batches, key=lambda b: b.delta_us)
        where = ", ".join(f"{name} {v:+.1f}" for name, v in worst.attribution.parts() if abs(v) >= 0.05)
        band = "predicted, interval of the difference" if self.source.startswith("simulated") else "noise"
        deltas = ", ".join(f"batch {b.batch} {b.delta_us:+.1f} us ({100 * b.delta_us / b.baseline_us:+.1f}%"
                           f", {band} +-{b.band_us:.1f})" for b in self.batches)
        head = f"{self.verdict.upper()}: {self.candidate} vs {self.baseline}: "
        if self.reason:
            head += f"not comparable ({self.reason}); "
        return head + f"{deltas}. At batch {worst.batch} the difference is {where} ({self.source})."


# --- an all-reduce sweep ------------------------------------------------------------------------

@dataclass(frozen=True)
class SweepRow:
    """One message size of one implementation: the slowest rank's median per call."""

    impl: str
    backend: str
    bytes: int  # per rank
    count: int
    dtype: str
    time_us: float
    algbw_gbs: float
    busbw_gbs: float
    p20_us: float  # rank 0's
    p80_us: float
    per_rank_us: tuple[float, ...]
    correct: bool


@dataclass(frozen=True)
class AllReduceSweep:
    """The all-reduce alone in a graph over message sizes, nccl-tests columns (`allreduce`)."""

    KIND: ClassVar[str] = "allreduce-sweep"
    world: int
    complete: bool  # False: a run stopped early keeps the sizes it finished
    device: str
    versions: dict[str, str]
    implementations: dict[str, dict[str, Any]]  # name -> what ran (kernels.allreduce.describe)
    method: str
    rows: tuple[SweepRow, ...]


# --- a trace summary ----------------------------------------------------------------------------
# Built by streamlab.trace (summary: the numbers of the steady layers; explain: what the trace's
# dependency graph says), printed by streamlab.report.trace_view / trace_tables. Times in us.

@dataclass(frozen=True)
class TraceSource:
    """Where a trace's numbers came from (timeline.Source): a streamlab run (`measured`,
    `simulated`) or a profiler trace (`trace`), with what the file said (tracer, file,
    scenario, ...), as text."""

    kind: str
    device: str
    detail: dict[str, str]

    @classmethod
    def of(cls, source: Source) -> TraceSource:
        return cls(source.kind, source.device, {k: str(v) for k, v in source.detail.items()})


@dataclass(frozen=True)
class TraceGpu:
    """One GPU a trace holds work for."""

    id: str  # as the trace numbers it (device index, agent's GPU index)
    name: str  # device or product name, "" when the trace does not say
    ops: int  # device operations on it
    busy_us: float  # sum of their durations


@dataclass(frozen=True)
class TraceLoader:
    """What the trace reader saw besides the device operations it turned into intervals."""

    path: str
    format: str  # trace.formats.FORMATS: kineto | streamlab | rocprofv3-json | rocpd | ...
    tracer: str  # cupti | roctracer | rocprofiler-sdk | nsys | perfetto | streamlab | unknown
    schema: str  # the tool versions' schema the reader was written against
    device: str
    events: int  # records read (elements of traceEvents, dispatch rows, packets, ...)
    device_ops: dict[str, int]  # by Interval kind, in order of first appearance
    runtime_calls: int
    runtime_by_name: dict[str, int]  # most first
    graph_launches: int
    replays: int  # graph replays (decode steps)
    ops_per_replay: tuple[tuple[int, int], ...]  # (device operations, replays with that many)
    graph_ops: int  # device operations launched by a graph launch
    eager_ops: int
    shared_correlations: int  # correlation ids carried by more than one device operation
    syncs: dict[str, int]  # cuda_sync events by kind
    stream_waits: dict[str, int]  # "waiting <- waited on" stream pairs
    event_waits: int  # stream waits on recorded events matched to the operations they order
    event_waits_unmatched: int  # waits that named work outside the trace
    flows: int
    markers: dict[str, int]  # capture / warm-up marks by name
    same_stream_overlaps: int  # device operations clipped at the next one's start
    overlap_clipped_us: float
    max_overlap_us: float
    negative_durations: int  # set to 0
    missing_stream: int  # device operations without a stream id
    devices: tuple[str, ...]  # the GPU summarised (one)
    gpus: tuple[TraceGpu, ...]  # every GPU with work, summarised or not
    gpus_listed: int  # GPUs the trace's device table lists (0: it has none)
    gpu_choice: str  # which GPU the summary is of, and why
    metadata: dict[str, str]  # small top-level entries of the file, non-strings as JSON text


@dataclass(frozen=True)
class NotAStep:
    """Why a trace holds no step to measure (a graph capture, warm-up only), the evidence, and
    what to record instead (trace.capture)."""

    kind: str  # graph capture | warm-up
    evidence: dict[str, int]  # calls and marks by name, kernel launches recorded, kernels run
    advice: str
    message: str = field(init=False)  # the line `trace summary` prints

    def __post_init__(self) -> None:
        seen = ", ".join(f"{k} x{v:,}" for k, v in self.evidence.items())
        object.__setattr__(self, "message",
                           f"this trace records a {self.kind}, not a step ({seen}): {self.advice}")


@dataclass(frozen=True)
class TraceLayers:
    """How the steady-state layers were found (trace.segment), or that the run recorded them."""

    method: str  # recorded | allreduce | pattern | regex | whole
    description: str
    found: int  # candidate layers (units) before the steady-state filter
    steady: int
    dropped: dict[str, int]  # reason -> layers dropped
    period: int | None  # pattern: kernels per repeating unit on the reference stream
    layers_per_unit: int  # decoder layers in one repeating unit (gpt-oss: 2)
    ars_per_layer: int | None


@dataclass(frozen=True)
class LayerFigures:
    """The steady layers' numbers (analysis.summarize), each a Stat over layers (over units of
    `TraceLayers.layers_per_unit` layers)."""

    wall_us: Stat
    kernel_sum_us: Stat
    busy_us: Stat
    overlap: Stat  # kernel sum / busy
    bubble_us: Stat  # all-stream idle
    bubble_by_class_us: dict[str, Stat]  # analysis.GAP_CLASSES
    gap_counts: dict[str, Stat]  # per layer, by gap class
    stalls: Stat  # stalls per layer
    kernels: Stat  # kernels per layer
    physical_streams: int


@dataclass(frozen=True)
class AllReduceCalls:
    """All-reduce time per call over the steady layers."""

    p10: float
    p50: float
    p90: float
    mean: float
    min: float
    max: float
    n: int
    per_layer: float  # calls


@dataclass(frozen=True)
class TraceKernel:
    """One kernel name over the steady layers (over every operation for a trace of no step)."""

    name: str
    kind: str  # kernel | allreduce | memcpy | memset
    nodes: tuple[str, ...]
    calls: int
    per_layer: float
    total_us: float
    per_layer_us: float
    median_us: float
    share: float  # of the kernels' total time
    streams: tuple[str, ...]


@dataclass(frozen=True)
class TraceStream:
    stream: str
    ops: int  # in the whole trace
    per_layer: float  # in steady layers
    time_per_layer_us: float


@dataclass(frozen=True)
class HardwareQueue:
    """A hardware queue (rocprofiler's queue id): its operations and the streams that landed on
    it (with more streams than queues, GPU_MAX_HW_QUEUES, streams share)."""

    queue: str
    ops: int
    busy_us: float  # sum of durations
    streams: tuple[str, ...]  # most operations first


@dataclass(frozen=True)
class OutsideLayers:
    """Device operations outside the steady layers."""

    ops: int
    time_us: float
    top: tuple[tuple[str, int], ...]  # (kernel, operations), most frequent first


@dataclass(frozen=True)
class StepSplit:
    """Per decode step (trace.steps): its wall time, for a decode step the time per output
    token, split into layers, work outside them and idle; Stats over steps."""

    basis: str  # what a step is: "graph replay" | "whole trace (no graph replays)"
    steps: int
    wall_us: Stat
    layers_us: Stat  # inside layer windows
    outside_us: Stat  # some stream busy, outside layer windows
    idle_us: Stat  # no stream busy, outside layer windows
    layers: Stat  # decoder layers per step


@dataclass(frozen=True)
class GraphAndEager:
    """Graph-replayed and eagerly launched device operations apart."""

    replays: int
    graph_ops: int
    graph_us: float  # sum of their durations
    eager_ops: int
    eager_us: float
    eager_top: tuple[tuple[str, int], ...]  # eager operations by name, most first (5)


@dataclass(frozen=True)
class TraceDependencies:
    """Where the trace's dependency graph came from (trace.deps): recorded edges, the scenario's
    graph, observed event waits, or stream order only; its steps and their spans."""

    origin: str  # recorded | scenario | events | stream
    note: str
    steps: int
    step_span_us: tuple[float, ...]  # per step with kernels: first start to last end


@dataclass(frozen=True)
class PathKernel:
    """One kernel on the critical path; `start_us` from the step's start."""

    index: int  # into the trace's timeline intervals
    kernel: str
    node: str | None
    kernel_class: str  # analysis.kernel_class
    stream: str
    start_us: float
    duration_us: float
    waited_index: int | None  # the binding dependency; None: where the path starts
    waited_on: str | None  # its node or kernel name
    wait_kind: str | None  # stream | graph | event | launch
    cross_stream: bool  # the binding dependency ran on another stream
    gap_us: float  # start - the binding dependency's end
    slack_us: float | None  # binding end - next-latest dependency's end (none: one dependency)


@dataclass(frozen=True)
class NearCritical:
    """A kernel off the critical path, and how much later it could have ended without delaying
    the step."""

    kernel: str  # node or kernel name
    stream: str
    slack_us: float


def _by(kernels: tuple[PathKernel, ...], key) -> dict[str, float]:
    out: dict[str, float] = {}
    for k in kernels:
        out[key(k)] = out.get(key(k), 0.0) + k.duration_us
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


@dataclass(frozen=True)
class CriticalPath:
    """The critical path of one step (trace.critical): the chain of kernels and waits that set
    when the step ended, and the kernels off it that came closest."""

    step: int
    start_us: float  # the step's first start, in the trace's time
    end_us: float  # its last end
    kernels: tuple[PathKernel, ...]
    near_critical: tuple[NearCritical, ...]  # least slack first
    span_us: float = field(init=False)
    busy_us: float = field(init=False)  # kernel time on the path
    gaps_us: float = field(init=False)
    cross_stream_waits: int = field(init=False)
    by_class_us: dict[str, float] = field(init=False)  # kernel time on the path, most first
    by_stream_us: dict[str, float] = field(init=False)

    def __post_init__(self) -> None:
        for name, value in (("span_us", self.end_us - self.start_us),
                            ("busy_us", sum(k.duration_us for k in self.kernels)),
                            ("gaps_us", sum(k.gap_us for k in self.kernels)),
                            ("cross_stream_waits", sum(k.cross_stream for k in self.kernels)),
                            ("by_class_us", _by(self.kernels, lambda k: k.kernel_class)),
                            ("by_stream_us", _by(self.kernels, lambda k: k.stream))):
            object.__setattr__(self, name, value)


@dataclass(frozen=True)
class CollectiveRow:
    """Calls of one collective over the steady layers (the whole trace without layers)."""

    name: str  # node, else kernel name
    kernel_class: str  # allreduce | allgather | reducescatter | alltoall
    calls: int
    duration_us: Stat  # per call
    exposed_us: Stat  # per call: no other device work ran on any stream
    exposed_share: float  # sum exposed / sum duration
    hidden_us_median: float = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden_us_median", self.duration_us.median - self.exposed_us.median)


@dataclass(frozen=True)
class ExposedCommunication:
    """How much of each collective call other device work hid (trace.comm): *exposed* is the
    part of a call during which no other (non-collective) device work ran on any stream."""

    collectives: tuple[CollectiveRow, ...]
    per_layer_us: Stat | None  # exposed per layer; None without layers
    per_step_us: Stat  # exposed per step


@dataclass(frozen=True)
class Arrival:
    """The k-th collective call on every rank: how long each waited for the last to arrive."""

    call: int
    name: str
    wait_us: tuple[float, ...]  # per rank (RankSkew.ranks order): its call minus the shortest
    last_rank: int  # index of the rank that arrived last (its call was the shortest)
    spread_us: float = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "spread_us", max(self.wait_us))


@dataclass(frozen=True)
class RankWait:
    rank: str
    last_at: int  # calls it arrived last at
    wait_us: Stat  # per call


@dataclass(frozen=True)
class RankSkew:
    """Arrival skew between ranks at each collective (trace.comm), estimated from each rank's
    call duration minus the shortest over the ranks: ranks leave a collective together."""

    ranks: tuple[str, ...]  # trace files, in the order given
    matched: str  # how the calls were matched
    spread_us: Stat  # arrival spread per call
    per_rank: tuple[RankWait, ...]
    calls: tuple[Arrival, ...]


@dataclass(frozen=True)
class Shift:
    """A number before and after a what-if."""

    before: float
    after: float
    delta: float = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "delta", self.after - self.before)


@dataclass(frozen=True)
class WhatIfMatch:
    """What one `--what-if` touched: kernels (stalls, for `stall`) and their time per step."""

    what_if: str  # KEY=VALUE as given
    target: str  # stall | class | node | regex
    value: str  # the new time or the factor
    matched: int
    what: str  # kernels | stalls
    us_per_step: Shift


@dataclass(frozen=True)
class WhatIf:
    """The trace's dependency graph replayed with the changes (trace.whatif): a prediction, not
    a measurement. Layer figures are medians over layers, the step's over steps."""

    what_if: tuple[str, ...]
    matched: tuple[WhatIfMatch, ...]
    dependencies: str  # what the replayed graph knows (TraceDependencies.note)
    layer_wall_us: Shift
    layer_wall_p20_us: Shift
    layer_wall_p80_us: Shift
    kernel_sum_us: Shift
    bubble_us: Shift
    step_us: Shift  # first start to last end
    layers_per_step: float
    per_layer_us: tuple[Shift, ...]
    per_step_us: tuple[Shift, ...]
    prediction: str = field(init=False, default="replay of the trace's dependency graph with the "
                                                "changes: a prediction, not a measurement")


@dataclass(frozen=True)
class NodeRate:
    """A layer node's kernels against the device's ceilings (trace.roofline)."""

    node: str
    time_us: float  # in-graph median per occurrence
    bytes: float
    flops: float
    floor_us: float  # models.hardware: the one roofline floor
    bound: str  # memory | compute: which ceiling sets the floor
    hbm_gbs: float  # the ceilings that apply to this node
    peak_tflops: float
    achieved_gbs: float = field(init=False)
    of_bandwidth: float = field(init=False)
    achieved_tflops: float = field(init=False)
    of_peak_flops: float = field(init=False)
    of_roofline: float = field(init=False)  # floor / time: 1.0 at the roofline

    def __post_init__(self) -> None:
        t = self.time_us
        gbs = self.bytes / (t * 1e3) if t > 0 else 0.0
        tflops = self.flops / (t * 1e6) if t > 0 else 0.0
        for name, value in (("achieved_gbs", gbs), ("of_bandwidth", gbs / self.hbm_gbs),
                            ("achieved_tflops", tflops), ("of_peak_flops", tflops / self.peak_tflops),
                            ("of_roofline", self.floor_us / t if t > 0 else 0.0)):
            object.__setattr__(self, name, value)


@dataclass(frozen=True)
class Roofline:
    """Roofline per node where the trace's kernels map to layer nodes with known work; none
    otherwise, and `note` says why."""

    note: str  # where the shapes and ceilings came from, or why there are none
    hardware: Hardware | None
    nodes: tuple[NodeRate, ...]


@dataclass(frozen=True)
class TraceSummary:
    """The numbers of a profiler trace (or of a streamlab run's) over its steady-state decode
    layers, and what its dependency graph says (`trace summary --json`). A trace of a graph
    capture or of warm-up only has `not_a_step` and no layer numbers (None, empty)."""

    KIND: ClassVar[str] = "trace-summary"
    file: str
    source: TraceSource
    loader: TraceLoader
    not_a_step: NotAStep | None
    layers: TraceLayers | None
    per_layer: LayerFigures | None
    allreduce_per_call_us: AllReduceCalls | None  # None: no all-reduce
    stall_sites: tuple[StallSite, ...]  # most time first
    nodes: dict[str, NodeStats]  # DAG nodes, when the trace names them
    kernels: tuple[TraceKernel, ...]  # most time first
    streams: tuple[TraceStream, ...]  # most operations first
    hardware_queues: tuple[HardwareQueue, ...]  # when the trace has queue ids
    outside_layers: OutsideLayers | None
    per_step: StepSplit | None
    graph_and_eager: GraphAndEager | None  # None: the trace does not say
    dependencies: TraceDependencies | None  # None: not looked at (a diff's sides, no step)
    critical_path: CriticalPath | None  # of the step of median span
    exposed_communication: ExposedCommunication | None  # None: no collective
    rank_skew: RankSkew | None  # with several ranks' traces
    what_if: WhatIf | None
    roofline: Roofline | None
    plots: tuple[str, ...]  # files written by --out

    @property
    def steady_layers(self) -> int:
        return 0 if self.layers is None else self.layers.steady


@dataclass(frozen=True)
class DiffRow:
    """One per-layer figure of two traces (B - A)."""

    metric: str
    unit: str  # us | ratio | count
    a: float | None  # None: the trace has none (no all-reduce)
    b: float | None
    delta: float | None = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "delta", None if self.a is None or self.b is None else self.b - self.a)


@dataclass(frozen=True)
class KernelChange:
    """One kernel name in two traces: calls and time per layer (0 where absent)."""

    name: str
    per_layer_a: float
    per_layer_b: float
    us_per_layer_a: float
    us_per_layer_b: float
    median_us_a: float | None
    median_us_b: float | None
    count_delta: float = field(init=False)
    us_delta: float = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "count_delta", self.per_layer_b - self.per_layer_a)
        object.__setattr__(self, "us_delta", self.us_per_layer_b - self.us_per_layer_a)


@dataclass(frozen=True)
class TraceDiff:
    """Two traces side by side, B - A (`trace diff --json`), with both summaries."""

    KIND: ClassVar[str] = "trace-diff"
    a: str
    b: str
    metrics: tuple[DiffRow, ...]
    kernel_count_changes: tuple[KernelChange, ...]  # most changed first
    kernel_time_changes: tuple[KernelChange, ...]  # the `top` most changed in time
    summary_a: TraceSummary
    summary_b: TraceSummary


# --- a search on a device profile ---------------------------------------------------------------

@dataclass(frozen=True)
class SearchLimits:
    """How a searched layout may synchronise, per region (search.enumerate.Limits)."""

    streams: int
    max_waits: int  # cross-stream waits
    max_barriers: int  # every stream joined into main and forked back


@dataclass(frozen=True)
class SearchRequest:
    """What `streamlab search` was asked (the profile as given is `SearchProfile.given`)."""

    model: str
    shape: Shape  # each batch replaces its batch
    batches: tuple[int, ...]
    limits: SearchLimits
    layers: int  # layers per simulated graph
    top: int
    budget_s: float | None  # seconds per batch before the search stops (None: none)
    sm_budgets: tuple[float, ...]  # shares of the SMs tried on overlapped pairs
    variant: Variant | None  # the variant asked for; None: every variant the profile measured


@dataclass(frozen=True)
class SearchProfile:
    """The simulator device profile the layouts were ranked on."""

    name: str
    given: str  # as given: a shipped profile's name or a YAML path
    streams: Literal["cuda", "hip"]  # the queue rule: one lane per capture stream, or HIP's depth-first rule
    node_source: str  # where its node latencies come from ("" : the roofline fit)
    pairs_measured: int  # node pairs whose overlap it measured
    pair_source: str


@dataclass(frozen=True)
class SkippedVariant:
    variant: Variant
    why: str


@dataclass(frozen=True)
class SearchLayout:
    """A layout as scenario terms: which nodes run on each stream, the dispatch order, where the
    barriers are, and the SM / CU budgets of budgeted nodes."""

    variant: Variant
    streams: dict[str, tuple[str, ...]]  # stream name -> its nodes in dispatch order
    order: tuple[str, ...]
    barriers_before: tuple[str, ...]  # nodes a barrier precedes
    sms: dict[str, int]  # node -> SMs / CUs it may use


@dataclass(frozen=True)
class SearchOverlap:
    first: str  # dispatched first
    second: str
    us: float  # per layer


@dataclass(frozen=True)
class SlowedNode:
    node: str
    us: float  # in this layout
    serial_us: float


@dataclass(frozen=True)
class LayoutExplanation:
    """Why a layout's prediction differs from serial's, from the two simulated Timelines."""

    overlaps: tuple[SearchOverlap, ...]  # longest first
    overlap_us: float  # all of it
    slowed: tuple[SlowedNode, ...]  # most added time first
    stalls_gone: tuple[StallSite, ...]  # serial's stall sites this layout does not have
    stalls_new: tuple[StallSite, ...]  # this layout's stall sites serial does not have
    bubble_us: dict[str, float]  # all-stream-idle time per layer by gap class
    serial_bubble_us: dict[str, float]
    line: str  # the same in one line


@dataclass(frozen=True)
class RankedLayout:
    """A simulated layout: a prediction, not a measurement."""

    rank: int  # among everything simulated at its batch (1 = best)
    name: str
    predicted_us: float  # per layer
    interval_us: tuple[float, float] | None  # the simulator's prediction interval
    vs_serial_us: float  # predicted_us - serial's
    unmeasured_pairs: tuple[tuple[str, str], ...]  # overlaps it runs that the profile has not measured
    bound_us: float  # the lower bound the search ranked it by
    layout: SearchLayout
    may_overlap: tuple[tuple[str, str], ...]  # node pairs on different streams with nothing ordering them
    explanation: LayoutExplanation | None  # None for serial itself


@dataclass(frozen=True)
class PlacedLayout:
    """Where a shipped scenario lies in the searched space."""

    scenario: str
    path: str
    predicted_us: float | None  # its own program simulated; None when its variant was not searched
    vs_serial_us: float | None
    where: str  # in words
    candidate: int | None  # the rank of the candidate it is, when it was simulated
    serial: bool  # one stream


@dataclass(frozen=True)
class SearchTally:
    """What one batch's search did (search.rank.Tally)."""

    classes: int  # equivalence classes in the space (when not complete: those the walk reached)
    pruned: int  # dominated (P2)
    complete: bool  # every region's classes were listed (else walked with pruning)
    considered: int  # layouts bounded or simulated
    simulated: int
    bounded: int  # not simulated: their bound is no better than the K-th best
    cut: int  # subtrees of a pruned walk cut by their partial bound
    unvisited: int  # listed but not simulated: the time budget ran out first
    stopped: bool  # the time budget ran out
    floor_us: float | None  # no layout the search did not simulate predicts below this (None: none left)
    enumerate_s: float
    bound_s: float
    engine_s: float  # CPU seconds inside the simulator, summed over workers
    wall_s: float
    combine_error_us: float  # largest |sum of region gains - simulated combination|


@dataclass(frozen=True)
class SmBudgetPass:
    """The SM / CU budgets tried on the top layouts' overlapped pairs (modelled, not measured)."""

    source: str
    shares: tuple[float, ...]
    units: int  # SMs / CUs of the device
    tried: int  # budgeted layouts simulated
    layouts: int  # plain layouts they came from


@dataclass(frozen=True)
class BatchRanking:
    batch: int
    programs: int  # every way to write the layer on <= streams streams (exact waits, no barriers)
    gap_us: float  # how much better than the best found a layout left unsimulated could be
    tally: SearchTally
    top: tuple[RankedLayout, ...]
    serial: RankedLayout
    best_shipped: str | None  # the fastest predicted shipped layout on more than one stream
    shipped: tuple[PlacedLayout, ...]
    sm_budgets: SmBudgetPass | None  # when --sm-budgets asked for one


@dataclass(frozen=True)
class SearchRanking:
    """`streamlab search`: the fastest stream layouts of each batch on a device profile, simulated
    (predictions, not measurements), with serial and the shipped layouts placed beside them."""

    KIND: ClassVar[str] = "search"
    source: str  # "simulated, profile <name>"
    request: SearchRequest
    profile: SearchProfile
    warning: str | None  # the profile's kernels are not the installed ones
    variants: tuple[Variant, ...]  # searched
    skipped: tuple[SkippedVariant, ...]
    batches: tuple[BatchRanking, ...]
    written: tuple[str, ...]  # the winners' scenario files and the reports


# --- a search proved on the GPU -----------------------------------------------------------------

FASTER, SLOWER, WITHIN_NOISE = "faster", "slower", "within the noise"


@dataclass(frozen=True)
class Versus:
    """A measured layout against another measured in the same rounds (this - other, us per layer)."""

    other: str  # its scenario name
    other_us: float  # its median over the rounds
    delta_us: float  # the median of the per-round differences
    band_us: float  # the widest per-round noise band (check.band_us)
    round_deltas_us: tuple[float, ...]
    beyond_noise: bool  # |delta| above the band, and every round on the same side

    @property
    def verdict(self) -> str:
        return WITHIN_NOISE if not self.beyond_noise else FASTER if self.delta_us < 0 else SLOWER

    @property
    def percent(self) -> float:
        return 100.0 * self.delta_us / self.other_us


@dataclass(frozen=True)
class MeasuredLayout:
    """One layout of a `search --measure` batch: what the simulator said, what the GPU measured
    over the rounds (each round a fresh process), and how it compares."""

    scenario: str
    path: str  # the scenario file measured
    role: Literal["candidate", "best shipped", "serial"]
    rank: int | None  # the simulator's rank at this batch (candidates, and a shipped one it simulated)
    predicted_us: float
    predicted_low_us: float | None
    predicted_high_us: float | None
    unmeasured_pairs: tuple[str, ...]  # overlaps the profile ranked on still lacks ("first|second")
    median_us: float  # the median of the rounds' medians
    p20_us: float  # the median of the rounds' p20
    p80_us: float
    noise: float  # the largest of the rounds' Latency.noise
    round_medians_us: tuple[float, ...]
    equal_to_serial: bool  # every round's outputs bitwise equal to the serial layout's
    runs: tuple[str, ...]  # the run result files, one per round
    vs_serial: Versus | None
    vs_best_shipped: Versus | None


@dataclass(frozen=True)
class BatchMeasurement:
    batch: int
    layouts: tuple[MeasuredLayout, ...]  # the candidates in the simulator's order, the best shipped, serial
    winner: str | None  # the measured fastest candidate whose outputs equal serial's
    winner_file: str | None  # its scenario file, the comment block with the measured numbers
    report: str | None  # the compare report folder (report.md, plots)


@dataclass(frozen=True)
class SearchMeasurement:
    """`streamlab search --measure`: the top layouts of each batch measured on the GPU beside
    serial and the best shipped layout, after measuring the overlaps they needed."""

    KIND: ClassVar[str] = "search-measure"
    model: str
    shape: Shape  # the search's shape; each batch replaces its batch
    device: str
    backend: str
    profile: str  # as given
    ranked_on: str  # the profile file of the final ranking (with the pairs measured here)
    pairs_added: tuple[str, ...]  # "b<batch>:<first>|<second>" measured and added
    reranks: int  # searches after the first, on the profile with the pairs measured
    top: int
    rounds: int
    gpus: int  # rounds measured side by side, one process per GPU
    command: str
    batches: tuple[BatchMeasurement, ...]


KINDS: dict[str, type] = {cls.KIND: cls for cls in (RunResult, CompareResult, CheckVerdict, TraceSummary,
                                                    TraceDiff, AllReduceSweep, SearchRanking, SearchMeasurement)}
_WHAT = {RunResult: "a run result", CompareResult: "a compare report", CheckVerdict: "a check verdict",
         TraceSummary: "a trace summary", TraceDiff: "a trace diff", AllReduceSweep: "an all-reduce sweep",
         SearchRanking: "a search ranking", SearchMeasurement: "a search measurement"}

R = TypeVar("R")


# --- writing ------------------------------------------------------------------------------------

def to_json(obj: Any) -> dict:
    """The file's JSON: schema and kind first, then the dataclass's fields in order."""
    return {"schema": SCHEMA, "kind": type(obj).KIND, **_encode(obj)}


def dump(obj: Any, path: str | os.PathLike) -> Path:
    """Write a result file atomically (io.write_json_atomic)."""
    return write_json_atomic(path, to_json(obj))


def _encode(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _encode(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items()}
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # numpy scalars
        return value.item()
    return value


# --- reading ------------------------------------------------------------------------------------

class _Bad(Exception):
    """A value that does not fit its type: where in the document, and why."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}" if where else message)


def from_json(doc: Any, kind: type[R], path: str = "<json>") -> R:
    """A current-schema document (with or without its schema and kind keys) as `kind`; any
    value that does not fit names its key path."""
    if isinstance(doc, dict):
        doc = {k: v for k, v in doc.items() if k not in ("schema", "kind")}
    try:
        return _decode(doc, kind, "")
    except _Bad as e:
        raise Failure(f"{path}: {e}", EXIT_BAD_INPUT) from None


def load(path: str | os.PathLike, kind: type[R]) -> R:
    """The result file at `path`, which must be of `kind` (RunResult, CompareResult, ...), in the
    current schema or an older one this module reads; anything else is one Failure naming the
    file and the kind and schema it found."""
    doc, schema, found = _identify(path)
    if found is not kind:
        raise Failure(f"{path}: {_WHAT[found]} (schema {schema}), not {_WHAT[kind]}", EXIT_BAD_INPUT)
    return _convert(doc, schema, kind, str(path))


def load_any(path: str | os.PathLike) -> Any:
    """The result file at `path`, whatever its kind (for tools that sort a folder of them)."""
    doc, schema, found = _identify(path)
    return _convert(doc, schema, found, str(path))


def load_runs(path: str | os.PathLike) -> list[RunResult]:
    """The runs of a run result or a compare report (a GPU matrix included)."""
    doc, schema, found = _identify(path)
    if found not in (RunResult, CompareResult):
        raise Failure(f"{path}: {_WHAT[found]} (schema {schema}), not a run result or a compare report",
                      EXIT_BAD_INPUT)
    got = _convert(doc, schema, found, str(path))
    return [got] if isinstance(got, RunResult) else list(got.runs)


def _identify(path: str | os.PathLike) -> tuple[Any, int, type]:
    """The document, its schema version and its kind's class."""
    try:
        doc = json.loads(Path(path).read_text())
    except OSError as e:
        raise Failure(f"{path}: cannot read a result: {e.strerror or e}", EXIT_BAD_INPUT) from None
    except ValueError as e:
        raise Failure(f"{path}: cannot read a result: not JSON ({e})", EXIT_BAD_INPUT) from None
    if isinstance(doc, list) and doc and all(isinstance(r, dict) and ("measured" in r or "simulated" in r
                                                                       or "error" in r) for r in doc):
        return doc, 0, CompareResult  # a bench matrix
    if not isinstance(doc, dict):
        raise Failure(f"{path}: not a streamlab result (a JSON {type(doc).__name__}, not a list of runs)",
                      EXIT_BAD_INPUT)
    schema = doc.get("schema", 0)
    if schema == SCHEMA:
        kind = doc.get("kind")
        if kind not in KINDS:
            raise Failure(f"{path}: schema {SCHEMA} but kind {kind!r}; known kinds: {', '.join(KINDS)}",
                          EXIT_BAD_INPUT)
        return doc, schema, KINDS[kind]
    if schema == 1 and isinstance(doc.get("runs"), list):
        return doc, 1, CompareResult
    if schema == 0:
        if doc.get("kind") == AllReduceSweep.KIND:
            return doc, 0, AllReduceSweep
        if "measured" in doc or "simulated" in doc:
            return doc, 0, RunResult
        raise Failure(f"{path}: not a streamlab result (no schema, and no measured or simulated run in it)",
                      EXIT_BAD_INPUT)
    raise Failure(f"{path}: result schema {schema!r}; this streamlab reads schemas 0 to {SCHEMA}"
                  + (" (the file is newer: update streamlab)" if isinstance(schema, int) and schema > SCHEMA
                     else " (of schema 1, compare's report.json with its runs; a record `streamlab search "
                          "--json` printed before its kind \"search\": run that search again)" if schema == 1
                     else ""), EXIT_BAD_INPUT)


def _convert(doc: Any, schema: int, kind: type[R], path: str) -> R:
    if schema == SCHEMA:
        return from_json(doc, kind, path)
    try:
        if kind is RunResult:
            return _legacy_run(doc, "")
        if kind is CompareResult:
            return _legacy_compare(doc)
        return _decode({k: v for k, v in doc.items() if k != "kind"}, kind, "")  # a sweep: same fields
    except _Bad as e:
        raise Failure(f"{path} (schema {schema}): {e}", EXIT_BAD_INPUT) from None
    except (TypeError, ValueError, KeyError, IndexError, AttributeError) as e:  # untyped files of before:
        # a value of another type or a part missing somewhere the readers above do not name
        raise Failure(f"{path} (schema {schema}): not a result this streamlab can read: "
                      f"{type(e).__name__}: {e}", EXIT_BAD_INPUT) from None


# --- the codec: dataclass fields and their type hints --------------------------------------------

_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _decode(value: Any, hint: Any, where: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1:
            raise TypeError(f"unsupported union {hint}")
        return _decode(value, rest[0], where)
    if dataclasses.is_dataclass(hint):
        return _decode_dataclass(value, hint, where)
    if origin is Literal:
        if value not in args:
            raise _Bad(where, f"must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, list):
            raise _Bad(where, f"must be a list, got {_show(value)}")
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise _Bad(where, f"must be a list of {len(args)}, got {len(value)} items")
            return tuple(_decode(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        items = [_decode(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise _Bad(where, f"must be a mapping, got {_show(value)}")
        key_t, val_t = args or (str, Any)
        out = {}
        for k, v in value.items():
            if key_t is int:
                try:
                    k = int(k)
                except ValueError:
                    raise _Bad(where, f"key {k!r} must be an integer") from None
            out[k] = _decode(v, val_t, f"{where}.{k}" if where else str(k))
        return out
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise _Bad(where, f"must be a number, got {_show(value)}")
    if hint in (int, bool, str):
        if isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
            return value
        raise _Bad(where, f"must be {_NAMES[hint]}, got {_show(value)}")
    raise TypeError(f"no reader for type {hint!r} ({where})")


_NAMES = {int: "an integer", bool: "true or false", str: "a string"}


def _show(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _decode_dataclass(value: Any, cls: type, where: str) -> Any:
    if not isinstance(value, dict):
        raise _Bad(where, f"must be a mapping, got {_show(value)}")
    hints = _hints(cls)
    known = {f.name: f for f in fields(cls)}
    unknown = [k for k in value if k not in known]
    if unknown:
        raise _Bad(where, f"unknown key {unknown[0]!r}; known: {', '.join(known)}")
    kwargs = {}
    for name, f in known.items():
        if not f.init:
            continue
        at = f"{where}.{name}" if where else name
        if name not in value:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise _Bad(at, "missing")
            continue
        kwargs[name] = _decode(value[name], hints[name], at)
    return cls(**kwargs)


# --- files before schema 2 ----------------------------------------------------------------------

def _need(d: Any, key: str, where: str) -> Any:
    if not isinstance(d, dict) or key not in d:
        raise _Bad(f"{where}.{key}" if where else key, "missing")
    return d[key]


def _stat(d: Any, where: str, n: int = 0) -> Stat:
    """An old {median, p20, p80[, n]}; per-layer latency stats had no n (`n` given)."""
    return Stat(median=_decode(_need(d, "median", where), float, f"{where}.median"),
                p20=_decode(_need(d, "p20", where), float, f"{where}.p20"),
                p80=_decode(_need(d, "p80", where), float, f"{where}.p80"),
                n=_decode(d.get("n", n), int, f"{where}.n"))


def _node_time(d: Any, where: str) -> NodeTime:
    """An old node's {median, p20, p80, n[, mean]}."""
    return NodeTime(**vars(_stat(d, where)), mean=_decode(d.get("mean"), float | None, f"{where}.mean"))


def _latency(part: dict, where: str) -> Latency:
    lay = _stat(_need(part, "per_layer_us", where), f"{where}.per_layer_us")
    repeats = tuple(_decode(part.get("repeat_medians_us") or [], list[float], f"{where}.repeat_medians_us"))
    blocks = tuple(_decode(part.get("block_medians_us") or [], list[float], f"{where}.block_medians_us"))
    return Latency(median=lay.median, p20=lay.p20, p80=lay.p80, per_replay_us=(),
                   repeat_medians_us=repeats,
                   repeat_spread=float(part.get("repeat_spread",
                                                spread(repeats) if len(repeats) > 1 else 0.0)),
                   block_medians_us=blocks, drift=float(part.get("drift", 0.0)))


def _legacy_run(d: dict, where: str) -> RunResult:
    """A schema-0 run (also each run of a schema-1 compare report or a bench matrix)."""
    measured = "measured" in d
    key = "measured" if measured else "simulated"
    at = f"{where}.{key}" if where else key
    part = _need(d, key, where)
    prof = _need(part, "profile", at)
    pat = f"{at}.profile"
    layers_seen = _stat(_need(prof, "wall_us", pat), f"{pat}.wall_us").n
    ar = prof.get("allreduce_per_call_us")
    sites = tuple(StallSite(before=s["after"], after=s["before"], count=s["count"],  # the old names, swapped
                            per_layer=s["count"] / layers_seen if layers_seen else math.nan,
                            total_us=math.nan, median_us=s["median_us"], max_us=math.nan)
                  for s in prof.get("stall_sites", []))
    anatomy = Anatomy(
        wall_us=_stat(prof["wall_us"], f"{pat}.wall_us"),
        kernel_sum_us=_stat(_need(prof, "kernel_sum_us", pat), f"{pat}.kernel_sum_us"),
        overlap=_stat(_need(prof, "overlap", pat), f"{pat}.overlap"),
        bubble_us=_stat(_need(prof, "bubble_us", pat), f"{pat}.bubble_us"),
        bubble_by_class_us={c: _stat(s, f"{pat}.bubble_by_class_us.{c}")
                            for c, s in _need(prof, "bubble_by_class_us", pat).items()},
        stalls_per_layer=_stat(_need(prof, "stalls_per_layer", pat), f"{pat}.stalls_per_layer"),
        allreduce_per_call_us=_stat(ar, f"{pat}.allreduce_per_call_us") if ar else None,
        allreduce=str(prof.get("allreduce", "")),
        physical_streams=_decode(_need(prof, "physical_streams", pat), int, f"{pat}.physical_streams"),
        stall_sites=sites)
    nodes = {}
    for name, n in _need(part, "nodes", at).items():
        nat = f"{at}.nodes.{name}"
        g = n.get("in_graph_us")
        nodes[name] = NodeResult(
            in_graph_us=_node_time(g, f"{nat}.in_graph_us") if g else None,
            isolated_us=_decode(_need(n, "isolated_us", nat), float, f"{nat}.isolated_us"),
            slowdown=_decode(_need(n, "slowdown", nat), float, f"{nat}.slowdown"),
            floor_us=_decode(_need(n, "floor_us", nat), float, f"{nat}.floor_us"),
            kernels=_decode(_need(n, "kernels", nat), int, f"{nat}.kernels"),
            flops=float(n.get("flops", 0.0)), bytes=float(n.get("bytes", 0.0)),
            backend=str(n.get("backend", "")))
    kernels = _decode(_need(part, "kernels_per_layer", at), int, f"{at}.kernels_per_layer")
    budget_us = _decode(_need(part, "budget_us", at), float, f"{at}.budget_us")
    floor_sum = _decode(_need(part, "floor_sum_us", at), float, f"{at}.floor_sum_us")
    ceil = part.get("ceilings")
    return RunResult(
        scenario=str(_need(d, "scenario", where)), path=str(d.get("path", "")),
        model=str(_need(d, "model", where)),
        shape=_decode(_need(d, "shape", where), Shape, f"{where}.shape" if where else "shape"),
        variant=_decode(d.get("variant", {}), Variant, f"{where}.variant" if where else "variant"),
        layers=int(d.get("layers", 0)), device=str(d.get("device", "")),
        versions={k: str(v) for k, v in d.get("versions", {}).items()},
        backends={k: str(v) for k, v in d.get("backend", {}).items()},
        equal_to_serial=bool(d.get("equal_to_serial", True)),
        differences=tuple(Difference(**x) for x in d.get("differences", [])),
        measured=measured, source=str(part.get("source", key)), protocol=None,
        latency=_latency(part, at),
        budget=Budget(us=budget_us, floor_sum_us=floor_sum,
                      floor_held_us=float(part.get("floor_held_us", 0.0)),
                      roofline_us=float(part.get("budget_roofline_us", budget_us)),
                      launch_us=(budget_us - floor_sum) / kernels if kernels else 0.0, kernels=kernels),
        anatomy=anatomy, nodes=nodes,
        ceilings=_decode(ceil, Ceilings, f"{at}.ceilings") if ceil else None,
        trace=part.get("trace"),
        device_profile=tuple(ProfileParameter(str(p["parameter"]), str(p["value"]), str(p["source"]))
                             for p in part.get("sim_profile", [])),
        ranks=_legacy_ranks(d, where) if "ranks" in d else None)


def _legacy_ranks(d: dict, where: str) -> Ranks:
    figures = []
    for i, r in enumerate(d["ranks"]):
        at = f"{where}.ranks[{i}]" if where else f"ranks[{i}]"
        nodes = {name: AllReduceOnRank(bytes=int(d["allreduce_nodes"][name]["bytes"]),
                                       in_graph_us=_node_time(x["in_graph_us"], f"{at}.{name}")
                                       if x.get("in_graph_us") else None,
                                       **{k: x.get(k) for k in ("isolated_us", "slowdown", "algbw_gbs", "busbw_gbs",
                                                                "isolated_algbw_gbs", "isolated_busbw_gbs")})
                 for name, x in r.get("allreduce_nodes", {}).items()}
        ar, bub = r.get("allreduce_per_call_us"), r.get("bubble_us")
        figures.append(RankFigures(
            rank=int(r["rank"]), local_rank=int(r.get("local_rank", r["rank"])), host=str(r.get("host", "")),
            pid=int(r.get("pid", 0)), device=str(r.get("device", "")),
            equal_to_serial=bool(r["equal_to_serial"]), latency=_latency(r, at),
            allreduce_per_call_us=_stat(ar, f"{at}.allreduce_per_call_us") if ar else None,
            bubble_us=_stat(bub, f"{at}.bubble_us") if bub else None, physical_streams=r.get("physical_streams"),
            allreduce_nodes=nodes))
    return Ranks(world=int(d["world"]), complete=bool(d.get("complete", True)),
                 allreduce=dict(d.get("allreduce", {})), figures=tuple(figures))


def _legacy_compare(doc: Any) -> CompareResult:
    entries = doc if isinstance(doc, list) else doc["runs"]
    runs, failures = [], []
    for i, r in enumerate(entries):
        if not isinstance(r, dict):
            raise _Bad(f"[{i}]", "a run must be a mapping")
        if "error" in r:
            failures.append(RunFailure(str(r.get("scenario", "?")), int(r.get("batch", 0)), str(r["error"])))
        else:
            runs.append(_legacy_run(r, f"runs[{i}]"))
    return CompareResult(tuple(runs), tuple(failures), True)


# --- JSON Schema, from the same type hints --------------------------------------------------------

def json_schema(kind: type) -> dict:
    """The JSON Schema (draft 2020-12) of a result file of `kind`."""
    defs: dict[str, dict] = {}
    body = _object_schema(kind, defs)
    body["properties"] = {"schema": {"const": SCHEMA}, "kind": {"const": kind.KIND}, **body["properties"]}
    body["required"] = ["schema", "kind", *body["required"]]
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"https://streamlab.invalid/schemas/{kind.KIND}.schema.json",
            "title": f"{_WHAT[kind]} written by streamlab (schema {SCHEMA})", **body,
            "$defs": dict(sorted(defs.items()))}


def _object_schema(cls: type, defs: dict) -> dict:
    hints = _hints(cls)
    fs = list(fields(cls))
    doc = (cls.__doc__ or "").strip().split("\n\n")[0]
    return {"description": " ".join(doc.split()), "type": "object",
            "properties": {f.name: _type_schema(hints[f.name], defs) for f in fs},
            "required": [f.name for f in fs if not f.init or (f.default is dataclasses.MISSING
                                                               and f.default_factory is dataclasses.MISSING)],
            "additionalProperties": False}


def _type_schema(hint: Any, defs: dict) -> dict:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return {}
    if origin in (Union, types.UnionType):
        return {"anyOf": [_type_schema(a, defs) for a in args]}
    if dataclasses.is_dataclass(hint):
        name = hint.__name__
        if name not in defs:
            defs[name] = {}  # placeholder: a type that refers to itself
            defs[name] = _object_schema(hint, defs)
        return {"$ref": f"#/$defs/{name}"}
    if origin is Literal:
        return {"enum": list(args)}
    if origin in (tuple, list):
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            return {"type": "array", "prefixItems": [_type_schema(a, defs) for a in args],
                    "minItems": len(args), "maxItems": len(args)}
        return {"type": "array", "items": _type_schema(args[0], defs)}
    if origin is dict or hint is dict:
        key_t, val_t = args or (str, Any)
        if key_t is int:
            return {"type": "object", "patternProperties": {"^-?[0-9]+$": _type_schema(val_t, defs)},
                    "additionalProperties": False}
        return {"type": "object", "additionalProperties": _type_schema(val_t, defs)}
    simple = {float: "number", int: "integer", bool: "boolean", str: "string", type(None): "null"}
    if hint in simple:
        return {"type": simple[hint]}
    raise TypeError(f"no schema for type {hint!r}")
