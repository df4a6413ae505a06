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

from streamlab.errors import EXIT_BAD_INPUT, Failure
from streamlab.io import parse_yaml
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
    period: int | None = None  # pattern: kernels per repeating unit on the reference stream
    layers_per_unit: int = 1  # pattern: decoder layers in one repeating unit (gpt-oss: 2)
    ars_per_layer: int | None = None
    ar_offset: int | None = None
    ops: DeviceOps | None = None  # the timeline's intervals as columns, layer included
    # windows of every layer found, steady or not (step prologues and epilogues excluded)
    windows: list[tuple[float, float]] = field(default_factory=list)

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
                steady_only: bool = True, only: np.ndarray | None = None) -> Segmentation:
    """Layers of device operations in timeline order (see the module doc); their Timeline
    is made once, with its layers.

    `replays`: graph replays (start, end, operations) from the loader, to restart all-reduce
    counting at every decode step. `only`: the operations layers are made of (the graph-replayed
    ones of a trace that also ran kernels eagerly); the others stay outside layers. Raises
    Failure when asked for something the trace lacks."""
    if ars_per_layer is not None and ars_per_layer < 1:
        raise Failure("--ars-per-layer must be at least 1", EXIT_BAD_INPUT)
    everything = ops
    if only is not None:
        ops = ops.take(only)
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
        cands, period, where, per_unit = _by_pattern(ops)
        method = "pattern"
        desc = (f"the kernel sequence of {where} repeats every {period} kernels"
                if period else "no repeating kernel pattern")
        if per_unit > 1:
            desc += f", a unit of {per_unit} layers"
        extra = {"period": period, "layers_per_unit": per_unit}
    if not cands:
        method, desc = "whole", desc + "; no layer structure found: the whole trace is one window"
        cands = [_Candidate(0, len(ops))] if len(ops) else []
        steady_only = False
    found = len(cands)
    keep, dropped = _steady(cands) if steady_only else (cands, {})
    layer, bounds = _number(ops, cands, keep)
    windows = _windows(ops, cands, sorted((c for c in cands if not c.edge), key=lambda c: c.lo))
    if only is not None:
        inside = layer
        layer, ops = np.full(len(everything), -1, np.int64), everything
        layer[only] = inside
    ops = replace(ops, layer=layer)
    out = Timeline(ops.intervals(), source, bounds)
    if node_map is not None:
        out = map_nodes(out, node_map)
        ops = replace(ops, nodes=[iv.node for iv in out.intervals])
    return Segmentation(out, method, desc, found, dropped, ops=ops, windows=windows, **extra)


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


def _by_pattern(ops: DeviceOps) -> tuple[list[_Candidate], int | None, str | None, int]:
    """Layers from the period of the kernel-name sequence: first of all streams' kernels in start
    order (graph replays put a layer's kernels on executor-chosen streams that repeat only per
    replay, so one stream's period can span several layers), else, where concurrent kernels
    scramble that order, of the stream with the most kernels. Also the layers in one unit."""
    kernels = np.flatnonzero(np.array([k != "memset" for k in ops.kinds])[ops.kind])
    if not kernels.size:
        return [], None, None, 1
    cands, p, covered, per_unit = _pattern_blocks(ops, kernels)
    if p is not None and p > 1 and covered * 2 >= kernels.size:  # one kernel is no layer
        return cands, p, "all streams (in start order)", per_unit
    on = ops.stream[kernels]
    count = np.bincount(on)
    first = np.full(count.size, kernels.size)
    np.minimum.at(first, on, np.arange(kernels.size))
    busiest = np.flatnonzero(count == count.max())  # ties: the stream seen first
    sid = int(busiest[np.argmin(first[busiest])])
    cands, p, _, per_unit = _pattern_blocks(ops, kernels[on == sid])
    return cands, p, f"stream {ops.streams[sid]}", per_unit


def _pattern_blocks(ops: DeviceOps, ref: np.ndarray) -> tuple[list[_Candidate], int | None, int, int]:
    """Blocks of one period of the names of the operations `ref` (indices in start order): in
    every stretch where the sequence repeats, whole periods in the phase `_phase` picks, plus
    at each end of the stretch one block that differs from its neighbour by a few kernels
    (`_edge`: the first layer of a step often runs another variant of its first kernel, or
    one kernel fewer). Returns the candidates, the period, how many of `ref` the blocks cover
    and the decoder layers in one period (`layers_per_unit`)."""
    codes = ops.name[ref]
    p = find_period(codes)
    if p is None:
        return [], None, 0, 1
    aligned = _stretches(codes, p)
    if not aligned:
        return [], p, 0, 1
    variants = _Variants(ops.names)
    phase = _phase(codes, aligned, p, variants)
    blocks, bound = [], 0
    for k, (s, e, a) in enumerate(aligned):
        run = _blocks(codes, s, e, (a + phase) % p, p, bound,
                      aligned[k + 1][0] if k + 1 < len(aligned) else codes.size, variants)
        if run:
            blocks.append(run)
            bound = run[-1][1]
    if not blocks:
        return [], p, 0, 1
    covered = sum(hi - lo for run in blocks for lo, hi in run)
    s, _, a = aligned[0]
    first = s + (a + phase) % p
    per_unit = layers_per_unit(codes[first:first + p])
    cands = []
    for run in blocks:
        lo = np.searchsorted(ops.start, ops.start[ref[[b for b, _ in run]]], "left")
        last = np.searchsorted(ops.start, ops.end[ref[run[-1][1] - 1]], "left")
        hi = np.append(lo[1:], last)
        cands += [_Candidate(x, max(y, x + 1)) for x, y in zip(lo.tolist(), hi.tolist())]
    return cands, p, covered, per_unit


def _stretches(codes: np.ndarray, p: int) -> list[tuple[int, int, int]]:
    """Maximal stretches [s, e) where the sequence repeats with period p, at least two periods
    long, with the offset a at which the pattern of the longest one starts in each (those
    without it dropped): (s, e, a). Two stretches a few kernels apart whose periods line up
    are one (concurrent kernels that swapped places in start order cut the repetition, not
    the layers)."""
    eq = np.concatenate((codes[:-p] == codes[p:], [False]))
    flips = np.flatnonzero(np.diff(np.concatenate(([0], eq.astype(np.int8)))))
    stretches = [(int(s), int(e) + p) for s, e in zip(flips[::2], flips[1::2]) if e - s >= p]
    if not stretches:
        return []
    s0, _ = max(stretches, key=lambda se: se[1] - se[0])
    pattern = codes[s0:s0 + p]
    out: list[tuple[int, int, int]] = []
    for s, e in stretches:
        a = next((o for o in range(p) if np.array_equal(codes[s + o:s + o + p], pattern)), None)
        if a is None:
            continue
        if out and s - out[-1][1] < p and (s + a - out[-1][0] - out[-1][2]) % p == 0:
            out[-1] = (out[-1][0], e, out[-1][2])  # a few kernels reordered: the same run goes on
        else:
            out.append((s, e, a))
    return out


PHASE_SAMPLE = 8  # longest stretches looked at to choose the phase


def _phase(codes: np.ndarray, aligned: list[tuple[int, int, int]], p: int,
           variants: _Variants) -> int:
    """Where in the pattern a layer starts: the phase giving the most blocks (whole periods plus
    near-matching end blocks) over the longest stretches; on a tie the one whose blocks start
    earliest. A pre-norm decoder layer starts with its norm and the model's final norm follows
    the last layer, so a stretch of layers ends with one norm too many: ties go to the phase
    that leaves that extra norm after the last layer (the head), not before the first."""
    ends = [0] + [e for _, e, _ in aligned]
    starts = [s for s, _, _ in aligned] + [codes.size]
    bounded = [(s, e, a, ends[k], starts[k + 1]) for k, (s, e, a) in enumerate(aligned)]
    sample = sorted(bounded, key=lambda x: x[0] - x[1])[:PHASE_SAMPLE]
    best, key = 0, None
    for r in range(p):
        count, start = 0, 0
        for s, e, a, lo, hi in sample:
            run = _blocks(codes, s, e, (a + r) % p, p, lo, hi, variants)
            count += len(run)
            start += run[0][0] if run else e
        if key is None or (-count, start) < key:
            best, key = r, (-count, start)
    return best


def _blocks(codes: np.ndarray, s: int, e: int, offset: int, p: int, lo: int, hi: int,
            variants: _Variants) -> list[tuple[int, int]]:
    """Whole periods of the stretch [s, e) from s + offset, and a near-matching block before
    (not before lo) and after (not past hi) them: [(start, end)] in ref indices."""
    starts = range(s + offset, e - p + 1, p)
    run = [(b, b + p) for b in starts]
    if not run:
        return run
    before = _edge(codes, run[0][0], p, lo, variants, backwards=True)
    after = _edge(codes, run[-1][1], p, hi, variants, backwards=False)
    return ([before] if before else []) + run + ([after] if after else [])


def _edge(codes: np.ndarray, at: int, p: int, limit: int, variants: _Variants,
          backwards: bool) -> tuple[int, int] | None:
    """The block that ends (backwards) or starts at `at`, starts with the same kernel as the
    neighbouring whole period or a variant of it (a layer starts alike), and differs from that
    period by at most max(1, p // 10) edits: a kernel left out or added costs 1, one replaced
    by a variant of it 1 (module doc), by another kernel 2."""
    if p > MAX_EDGE_PERIOD:
        return None
    tol = max(1, p // 10)
    ref = codes[at:at + p] if backwards else codes[at - p:at]
    best = None
    for length in sorted(range(max(1, p - tol), p + tol + 1), key=lambda n: abs(n - p)):
        lo, hi = (at - length, at) if backwards else (at, at + length)
        if ((lo < limit) if backwards else (hi > limit)) or variants.cost(codes[lo], ref[0]) > 1:
            continue
        d = _edits(codes[lo:hi], ref, tol, variants)
        if d <= tol and (best is None or d < best[0]):
            best = (d, (lo, hi))
    return best[1] if best else None


def _edits(a: np.ndarray, b: np.ndarray, band: int, variants: _Variants) -> int:
    """Edit distance of two kernel sequences (costs as in `_edge`) when it is at most `band`
    (else band + 1)."""
    if abs(a.size - b.size) > band or (_bag_distance(a, b) + 1) // 2 > band:
        return band + 1  # each edit changes the kernels in one and not the other by <= 2
    x, y = a.tolist(), b.tolist()
    big = band + 1
    prev = {j: j for j in range(min(len(y), band) + 1)}
    for i in range(1, len(x) + 1):
        cur = {}
        for j in range(max(0, i - band), min(len(y), i + band) + 1):
            if j == 0:
                cur[j] = i
                continue
            cur[j] = min(prev.get(j, big) + 1, cur.get(j - 1, big) + 1,
                         prev.get(j - 1, big) + variants.cost(x[i - 1], y[j - 1]))
        prev = cur
    return min(prev.get(len(y), big), big)


VARIANT_PREFIX = 24  # characters two kernel names share at their start to be variants, at least
VARIANT_SHARE = 0.4  # and this share of the longer name (template arguments differ at the end)
MAX_EDGE_PERIOD = 512  # kernels per unit above which no near-matching end block is looked for


class _Variants:
    """Whether two kernels are variants of one (another template instance: the first layer's
    norm without the residual add, a norm kernel of another width): names that share their
    first VARIANT_PREFIX characters and VARIANT_SHARE of the longer one. Cost of putting one for
    the other: 0 same, 1 variant, 2 else."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.memo: dict[tuple[int, int], int] = {}

    def cost(self, a: int, b: int) -> int:
        if a == b:
            return 0
        key = (a, b) if a < b else (b, a)
        c = self.memo.get(key)
        if c is None:
            x, y = self.names[a], self.names[b]
            need = max(VARIANT_PREFIX, VARIANT_SHARE * max(len(x), len(y)))
            shared = next((i for i, (u, v) in enumerate(zip(x, y)) if u != v), min(len(x), len(y)))
            c = self.memo[key] = 1 if shared >= need else 2
        return c


def layers_per_unit(unit: np.ndarray) -> int:
    """How many decoder layers one repeating unit holds: the smallest k (2 to 4) for which the
    unit splits, at kernels equal to its first (each layer starts alike), into k parts of about
    equal length whose kernels are nearly the same (at most a quarter differ: gpt-oss
    alternates sliding-window and full attention layers, which differ in their attention
    kernels only); else 1."""
    p = unit.size
    starts = np.flatnonzero(unit == unit[0])
    for k in (2, 3, 4):
        if p // k < 3:
            break
        cuts = [int(starts[np.argmin(np.abs(starts - j * p / k))]) for j in range(k)] + [p]
        parts = [unit[a:b] for a, b in pairwise(cuts)]
        if len(set(cuts)) != k + 1 or any(abs(x.size - p / k) > p / (4 * k) for x in parts):
            continue
        if all(_bag_distance(x, parts[0]) <= max(x.size, parts[0].size) / 4 for x in parts[1:]):
            return k
    return 1


def _bag_distance(a: np.ndarray, b: np.ndarray) -> int:
    """Kernels in one sequence and not the other, counted with multiplicity."""
    ids, inverse = np.unique(np.concatenate((a, b)), return_inverse=True)
    counts = np.zeros((2, ids.size), np.int64)
    np.add.at(counts, (np.repeat([0, 1], [a.size, b.size]), inverse), 1)
    return int(np.abs(counts[0] - counts[1]).sum())


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
    layer = np.full(len(ops), -1, np.int64)
    chosen = sorted(keep, key=lambda c: c.lo)
    for k, c in enumerate(chosen):
        layer[c.lo:c.hi] = k
    return layer, _windows(ops, cands, chosen)


def _windows(ops: DeviceOps, cands: list[_Candidate],
             chosen: list[_Candidate]) -> list[tuple[float, float]]:
    """The window of each chosen candidate: from its first operation's start to the next
    candidate's first start, or to its last end when no candidate follows directly."""
    starts = {c.lo for c in cands}
    return [(float(ops.start[c.lo]), float(ops.start[c.hi] if c.hi in starts and c.hi < len(ops)
                                           else ops.end[c.lo:c.hi].max())) for c in chosen]


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
        data = parse_yaml(p.read_bytes(), str(p), "node map")
    except OSError as e:
        raise Failure(f"{p}: cannot read the node map: {e.strerror or e}", EXIT_BAD_INPUT) from None
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
