"""Decode layers in a trace: cut a Timeline into layers, keep the steady-state ones, and
optionally name each kernel's DAG node.

Three ways to find layer boundaries (`segment`):

- **all-reduce** (default when the trace has all-reduce kernels, i.e. TP > 1): a layer ends after
  every `ars_per_layer`-th all-reduce call (2: attention and MoE/MLP); the next layer starts at
  the next kernel. Consecutive all-reduce kernels with nothing in between count as one call
  here (the AR-per-call statistic of `analysis` counts each unattributed AR kernel as a call).
  Counting restarts at every graph replay (decode step) when the loader found graph launches;
  all-reduces before the first layer of a step (the vocab-parallel embedding's) are skipped:
  `ar_offset`, by default the number of all-reduces per replay modulo `ars_per_layer` when
  replays are known, else 0. The first segment of every step holds the step's prologue
  (embedding, ...) and what follows the last full layer holds its epilogue (final norm,
  LM head, sampling): both are dropped.
- **pattern** (no all-reduce): the period of the kernel-name sequence (`find_period`) of all
  streams' kernels in start order, or, when concurrency scrambles that order so that repeating
  stretches cover less than half of the kernels (or the period is one kernel), of the stream
  with the most kernels; every
  maximal stretch where the sequence repeats with that period is cut into blocks of one period,
  all in the phase of the longest stretch. Operations not in the reference sequence belong to
  the block their start time falls in.
- **regex** (`layer_regex`): a kernel whose name matches (re.search) starts a layer; what comes
  before the first match and after the last one in a step is dropped.

Steady state: besides the step edges above, layers whose kernel count differs from the most
common count are dropped (warm-up, a step boundary in an eager trace, dense layers among MoE
ones); `Segmentation.dropped` says how many and why. Steady layers are numbered 0, 1, ... in time
order; each window runs from its first kernel's start to the next layer's first kernel (so an
idle gap at a boundary counts in the layer before it, as in `analysis.chained_bounds`), or to its
last kernel's end when no layer follows directly. Intervals outside steady layers keep layer None.

Node mapping (`load_node_map`, YAML `node: [regex, ...]`): a kernel gets the node whose patterns
match its name (re.search); when several nodes match the same kernel name, the k-th kernel of
that name inside a layer gets the k-th of those nodes (file order), so two all-reduces or two
RMSNorms of one layer map to `allreduce_attn`/`allreduce_moe` or `input_norm`/`post_norm`.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from itertools import pairwise
from pathlib import Path

import numpy as np
import yaml

from streamlab.errors import EXIT_BAD_INPUT, Failure
from streamlab.timeline import Interval, Source, Timeline
from streamlab.trace.loaded import DeviceOps

DEFAULT_ARS_PER_LAYER = 2
MIN_MATCH = 0.5  # share of names equal one period later below which there is no period
PERIOD_TOLERANCE = 0.05
MAX_PERIOD = 2048  # kernels per layer on one stream
PERIOD_SAMPLE = 32768  # names looked at to find the period (the middle of the sequence)
PROLOGUE = "first of a step (prologue)"
EPILOGUE = "after the last full layer (epilogue)"


@dataclass
class Segmentation:
    timeline: Timeline  # steady layers numbered 0..n-1, with their windows in `layers`
    method: str  # allreduce | pattern | regex | whole
    description: str
    found: int  # candidate layers before the steady-state filter
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> layers dropped
    period: int | None = None  # pattern: kernels per layer on the reference stream
    ars_per_layer: int | None = None
    ar_offset: int | None = None
    ops: DeviceOps | None = None  # the timeline's intervals as columns, layer included

    @property
    def steady(self) -> int:
        return len(self.timeline.layers)


@dataclass
class _Candidate:
    lo: int  # index range into the start-ordered intervals
    hi: int
    edge: str | None = None  # why it is not a steady-state layer, if known up front


def segment(timeline: Timeline, *, ars_per_layer: int | None = None,
            layer_regex: str | None = None, replays: list[tuple[float, float, int]] | None = None,
            ar_offset: int | None = None, node_map: NodeMap | None = None,
            steady_only: bool = True) -> Segmentation:
    """Layers of a Timeline whose intervals carry no layer index yet: `segment_ops` on its
    columns."""
    ordered = sorted(timeline.intervals, key=lambda iv: (iv.start, iv.end))
    return segment_ops(DeviceOps.of(ordered), timeline.source, ars_per_layer=ars_per_layer,
                       layer_regex=layer_regex, replays=replays, ar_offset=ar_offset,
                       node_map=node_map, steady_only=steady_only)


def segment_ops(ops: DeviceOps, source: Source, *, ars_per_layer: int | None = None,
                layer_regex: str | None = None,
                replays: list[tuple[float, float, int]] | None = None,
                ar_offset: int | None = None, node_map: NodeMap | None = None,
                steady_only: bool = True) -> Segmentation:
    """Layers of device operations in timeline order (see the module doc); their Timeline
    is made once, with its layers.

    `replays`: graph replays (start, end, operations) from the loader, to restart all-reduce
    counting at every decode step. Raises Failure when asked for something the trace lacks."""
    if ars_per_layer is not None and ars_per_layer < 1:
        raise Failure("--ars-per-layer must be at least 1", EXIT_BAD_INPUT)
    ar = ops.allreduce
    extra: dict = {}
    if layer_regex is not None:
        try:
            rx = re.compile(layer_regex)
        except re.error as e:
            raise Failure(f"--layer-regex {layer_regex!r} is not a valid regular expression: {e}",
                          EXIT_BAD_INPUT) from None
        marks = np.array([bool(rx.search(n)) for n in ops.names], bool)[ops.name]
        cands = _by_regex(marks, _runs(ops.start, replays))
        if not cands:
            raise Failure(f"--layer-regex {layer_regex!r} matches no kernel name", EXIT_BAD_INPUT)
        method, desc = "regex", f"a kernel matching {layer_regex!r} starts a layer"
    elif ars_per_layer is not None or ar.any():
        if not ar.any():
            raise Failure("--ars-per-layer: the trace has no all-reduce kernels (names matching "
                          "all_reduce / allreduce / cross_device_reduce)", EXIT_BAD_INPUT)
        n = ars_per_layer or DEFAULT_ARS_PER_LAYER
        cands, offset = _by_allreduce(ar, n, _runs(ops.start, replays), ar_offset, bool(replays))
        method = "allreduce"
        desc = f"a layer ends after every {n} all-reduce call{'s' if n > 1 else ''}" + (
            f", skipping the first {offset} of each step" if offset else "")
        extra = {"ars_per_layer": n, "ar_offset": offset}
    else:
        cands, period, where = _by_pattern(ops)
        method = "pattern"
        desc = (f"the kernel sequence of {where} repeats every {period} kernels"
                if period else "no repeating kernel pattern")
        extra = {"period": period}
    if not cands:
        method, desc = "whole", desc + "; no layer structure found: the whole trace is one window"
        cands = [_Candidate(0, len(ops))] if len(ops) else []
        steady_only = False
    found = len(cands)
    keep, dropped = _steady(cands) if steady_only else (cands, {})
    layer, bounds = _number(ops, cands, keep)
    ops = replace(ops, layer=layer)
    out = Timeline(ops.intervals(), source, bounds)
    if node_map is not None:
        out = map_nodes(out, node_map)
        ops = replace(ops, nodes=[iv.node for iv in out.intervals])
    return Segmentation(out, method, desc, found, dropped, ops=ops, **extra)


def _runs(starts: np.ndarray, replays) -> list[tuple[int, int]]:
    """Index ranges of the start-ordered operations that belong to one graph replay, or lie
    between two (or before the first, or after the last); the whole trace without replays."""
    n = starts.size
    if not n:
        return []
    if not replays:
        return [(0, n)]
    wins = np.array(sorted((s, e) for s, e, _ in replays), np.float64)
    k = np.searchsorted(wins[:, 0], starts, "right") - 1  # the last replay starting before
    inside = (k >= 0) & (starts <= wins[np.maximum(k, 0), 1])
    key = np.where(inside, 2 * k + 1, 2 * k + 2)  # inside replay k, or after it
    bounds = np.concatenate(([0], np.flatnonzero(np.diff(key)) + 1, [n])).tolist()
    return list(pairwise(bounds))


def _by_allreduce(ar: np.ndarray, n: int, runs, offset: int | None, replayed: bool):
    """Cut after every n-th all-reduce call of each run; consecutive all-reduce operations
    are one call, which ends at the last of them."""
    ends = ar.copy()
    ends[:-1] &= ~ar[1:]
    last = np.array([hi - 1 for _, hi in runs], np.int64)
    ends[last] = ar[last]  # a call ends where its run does
    call_ends = np.flatnonzero(ends)
    calls_per_run = [call_ends[np.searchsorted(call_ends, lo):np.searchsorted(call_ends, hi)].tolist()
                     for lo, hi in runs]
    if offset is None:
        counts = Counter(len(c) for c in calls_per_run if c)
        offset = counts.most_common(1)[0][0] % n if replayed and counts else 0
    cands = []
    for (lo, hi), calls in zip(runs, calls_per_run):
        if not calls:
            continue
        cuts = calls[offset + n - 1::n]
        start = lo
        for k, cut in enumerate(cuts):
            cands.append(_Candidate(start, cut + 1, PROLOGUE if k == 0 else None))
            start = cut + 1
        if start < hi:
            cands.append(_Candidate(start, hi, EPILOGUE))
    return cands, offset


def _by_regex(marks: np.ndarray, runs) -> list[_Candidate]:
    at = np.flatnonzero(marks)
    cands = []
    for lo, hi in runs:
        starts = at[np.searchsorted(at, lo):np.searchsorted(at, hi)].tolist()
        for k, m in enumerate(starts):
            last = k == len(starts) - 1
            cands.append(_Candidate(m, hi if last else starts[k + 1], EPILOGUE if last else None))
    return cands


def find_period(codes, max_period: int = MAX_PERIOD, sample: int = PERIOD_SAMPLE,
                tolerance: float = PERIOD_TOLERANCE) -> int | None:
    """The period of a sequence: for every shift p (at least 3 repetitions), the share of
    elements equal to the one p later, over the middle `sample` elements; the smallest p whose
    share is within `tolerance` of the best share (multiples of the period score about as
    well, so the smallest is the period). None when no shift reaches MIN_MATCH."""
    a = np.asarray(codes)
    if a.size > sample:
        mid = (a.size - sample) // 2
        a = a[mid:mid + sample]
    top = min(max_period, a.size // 3)
    if top < 1:
        return None
    share = np.array([np.count_nonzero(a[:-p] == a[p:]) / (a.size - p) for p in range(1, top + 1)])
    best = float(share.max())
    if best < MIN_MATCH:
        return None
    return int(np.flatnonzero(share >= best - tolerance)[0]) + 1


def _by_pattern(ops: DeviceOps) -> tuple[list[_Candidate], int | None, str | None]:
    """Layers from the period of the kernel-name sequence: first of all streams' kernels in start
    order (graph replays put a layer's kernels on executor-chosen streams that repeat only per
    replay, so one stream's period can span several layers), else, where concurrent kernels
    scramble that order, of the stream with the most kernels."""
    kernels = np.flatnonzero(np.array([k != "memset" for k in ops.kinds])[ops.kind])
    if not kernels.size:
        return [], None, None
    cands, p, covered = _pattern_blocks(ops, kernels)
    if p is not None and p > 1 and covered * 2 >= kernels.size:  # one kernel is no layer
        return cands, p, "all streams (in start order)"
    on = ops.stream[kernels]
    count = np.bincount(on)
    first = np.full(count.size, kernels.size)
    np.minimum.at(first, on, np.arange(kernels.size))
    busiest = np.flatnonzero(count == count.max())  # ties: the stream seen first
    sid = int(busiest[np.argmin(first[busiest])])
    cands, p, _ = _pattern_blocks(ops, kernels[on == sid])
    return cands, p, f"stream {ops.streams[sid]}"


def _pattern_blocks(ops: DeviceOps, ref: np.ndarray) -> tuple[list[_Candidate], int | None, int]:
    """Blocks of one period of the names of the operations `ref` (indices in start order), in
    the phase of the longest repeating stretch; and how many of `ref` the blocks cover."""
    codes = ops.name[ref]
    p = find_period(codes)
    if p is None:
        return [], None, 0
    eq = np.concatenate((codes[:-p] == codes[p:], [False]))
    stretches = []  # [s, e): codes[s:e] repeats with period p, at least two periods long
    flips = np.flatnonzero(np.diff(np.concatenate(([0], eq.astype(np.int8)))))
    for s, e in zip(flips[::2], flips[1::2]):
        if e - s >= p:
            stretches.append((int(s), int(e) + p))
    if not stretches:
        return [], p, 0
    s0, _ = max(stretches, key=lambda se: se[1] - se[0])
    pattern = codes[s0:s0 + p]
    cands, covered = [], 0
    for s, e in stretches:
        rot = next((o for o in range(p) if np.array_equal(codes[s + o:s + o + p], pattern)), None)
        if rot is None:
            continue
        blocks = np.arange(s + rot, e - p + 1, p)
        if not blocks.size:
            continue
        covered += blocks.size * p
        lo = np.searchsorted(ops.start, ops.start[ref[blocks]], "left")
        hi = np.append(lo[1:], np.searchsorted(ops.start, ops.end[ref[blocks[-1] + p - 1]], "left"))
        cands += [_Candidate(a, max(b, a + 1)) for a, b in zip(lo.tolist(), hi.tolist())]
    return cands, p, covered


def _steady(cands: list[_Candidate]) -> tuple[list[_Candidate], dict[str, int]]:
    dropped: Counter = Counter(c.edge for c in cands if c.edge)
    inner = [c for c in cands if not c.edge]
    if inner:
        mode = Counter(c.hi - c.lo for c in inner).most_common(1)[0][0]
        odd = sum(c.hi - c.lo != mode for c in inner)
        if odd:
            dropped[f"kernel count other than {mode}"] = odd
        inner = [c for c in inner if c.hi - c.lo == mode]
    return inner, dict(dropped)


def _number(ops: DeviceOps, cands: list[_Candidate], keep: list[_Candidate]):
    """Layer index per operation (-1 outside steady layers) and each layer's window."""
    starts = {c.lo for c in cands}
    layer = np.full(len(ops), -1, np.int64)
    bounds = []
    for k, c in enumerate(sorted(keep, key=lambda c: c.lo)):
        layer[c.lo:c.hi] = k
        end = (ops.start[c.hi] if c.hi in starts and c.hi < len(ops)
               else ops.end[c.lo:c.hi].max())
        bounds.append((float(ops.start[c.lo]), float(end)))
    return layer, bounds


# --- kernel names -> DAG nodes --------------------------------------------------------------

@dataclass
class NodeMap:
    path: str
    rules: list[tuple[str, list[re.Pattern]]]  # in file order

    def candidates(self, name: str) -> list[str]:
        return [node for node, pats in self.rules if any(p.search(name) for p in pats)]


def load_node_map(path: str | os.PathLike) -> NodeMap:
    """YAML mapping `node: [regex, ...]` (or `node: regex`)."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except OSError as e:
        raise Failure(f"{p}: cannot read the node map: {e.strerror or e}", EXIT_BAD_INPUT) from None
    except yaml.YAMLError as e:
        raise Failure(f"{p}: not valid YAML: {str(e).splitlines()[0]}", EXIT_BAD_INPUT) from None
    if not isinstance(data, dict) or not data:
        raise Failure(f"{p}: expected a mapping `node: [kernel-name regex, ...]`", EXIT_BAD_INPUT)
    rules = []
    for node, pats in data.items():
        pats = [pats] if isinstance(pats, str) else pats
        if not isinstance(pats, list) or not all(isinstance(x, str) for x in pats) or not pats:
            raise Failure(f"{p}: node {node!r}: expected a regex or a list of regexes",
                          EXIT_BAD_INPUT)
        compiled = []
        for x in pats:
            try:
                compiled.append(re.compile(x))
            except re.error as e:
                raise Failure(f"{p}: node {node!r}: {x!r} is not a valid regex: {e}",
                              EXIT_BAD_INPUT) from None
        rules.append((str(node), compiled))
    return NodeMap(str(p), rules)


def map_nodes(timeline: Timeline, node_map: NodeMap) -> Timeline:
    """Set Interval.node from kernel names (see the module doc); occurrences of a name are
    counted per layer (per stretch of unlayered intervals otherwise), in start order."""
    cache: dict[str, list[str]] = {}
    per_layer: dict[int, Counter] = {}
    stretch: Counter = Counter()
    out = []
    for iv in sorted(timeline.intervals, key=lambda iv: (iv.start, iv.end)):
        if iv.layer is None:
            seen = stretch
        else:
            seen = per_layer.setdefault(iv.layer, Counter())
            stretch = Counter()
        cands = cache.get(iv.name)
        if cands is None:
            cands = cache[iv.name] = node_map.candidates(iv.name)
        if cands:
            k = seen[iv.name]
            seen[iv.name] += 1
            iv = Interval(iv.name, iv.stream, iv.start, iv.end, cands[min(k, len(cands) - 1)],
                          iv.layer, iv.kind)
        out.append(iv)
    return Timeline(out, timeline.source, list(timeline.layers))
