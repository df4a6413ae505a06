"""The regression gate before enabling a layout (SGLANG_ENABLE_HIP_DUAL_STREAM): candidate vs
baseline at each batch size, decided against the measured noise, with where the difference goes.

A difference is a verdict only when it exceeds the noise band: twice the larger noise of the two
runs (`results.Latency.noise`, times the baseline latency), and never less than `MIN_BAND` of it.
Two simulated runs are predictions with intervals, and the band is the half-width of the
difference's interval: a part both intervals carry (the calibration's noise, a parameter's spread)
moves both predictions together, so only the difference of its two widths counts; a part only one
carries (an overlap the profile never measured) counts whole. A prediction the profile cannot
back thus answers inconclusive rather than guessing, while a shared calibration error does not
hide a difference the model is sure of. Two sides that are not comparable
(another model, shape, device, software versions, or measured against simulated) are
inconclusive whatever the numbers say, with the reason. The verdict types live in
`streamlab.results` (CheckVerdict, BatchVerdict, Attribution).
"""

from __future__ import annotations

from streamlab.results import (DO_NOT_ENABLE, ENABLE, INCONCLUSIVE, Attribution, BatchVerdict, CheckVerdict,
                               RunResult)

__all__ = ["MIN_BAND", "attribute", "band_us", "incomparable", "judge", "judge_batch"]

MIN_BAND = 0.005  # 0.5% of the baseline


def attribute(base: RunResult, cand: RunResult) -> Attribution:
    """Split cand - base per-layer latency using the layer anatomy of both runs."""
    pb, pc = base.anatomy, cand.anatomy
    total = cand.latency.median - base.latency.median

    def ar(r: RunResult) -> float:
        per = r.anatomy.allreduce_per_call_us
        return per.median * r.allreduce_calls() if per else 0.0

    def hidden(r: RunResult) -> float:
        a = r.anatomy
        return a.kernel_sum_us.median - a.wall_us.median + a.bubble_us.median

    ar_delta = ar(cand) - ar(base)
    ks = pc.kernel_sum_us.median - pb.kernel_sum_us.median
    stall = pc.bubble_by_class_us["stall"].median - pb.bubble_by_class_us["stall"].median
    return Attribution(total=total, kernel_time=ks - ar_delta, allreduce=ar_delta,
                       overlap_saved=hidden(cand) - hidden(base),
                       bubble=pc.bubble_us.median - pb.bubble_us.median, bubble_stall=stall,
                       other=total - (pc.wall_us.median - pb.wall_us.median))


def incomparable(base: RunResult, cand: RunResult) -> list[str]:
    """Why two runs cannot be judged against each other: what differs besides the layout."""
    out = []
    if base.measured != cand.measured:
        out.append("measured vs simulated")
    elif not base.measured and base.source != cand.source:
        out.append(f"{base.source} vs {cand.source}")
    world = lambda r: r.ranks.world if r.ranks else 1
    for what, a, b in (("model", base.model, cand.model), ("device", base.device, cand.device),
                       ("world", world(base), world(cand))):
        if a != b:
            out.append(f"{what} {a} vs {b}")
    shape = [f"{k} {v} vs {getattr(cand.shape, k)}" for k, v in vars(base.shape).items()
             if getattr(cand.shape, k) != v]
    if shape:
        out.append("shape " + ", ".join(shape))
    versions = [f"{k} {base.versions.get(k, '-')} vs {cand.versions.get(k, '-')}"
                for k in dict.fromkeys([*base.versions, *cand.versions])
                if base.versions.get(k) != cand.versions.get(k)]
    if versions:
        out.append("versions " + ", ".join(versions))
    return out


def band_us(base: RunResult, cand: RunResult) -> float:
    """How far apart the two must land to differ: the noise band, or for two predictions the
    half-width of their difference's interval (see the module docstring)."""
    if base.prediction is not None and cand.prediction is not None:
        parts_b = {p.name: p.us for p in base.prediction.parts}
        parts_c = {p.name: p.us for p in cand.prediction.parts}
        return sum(abs(parts_c.get(n, 0.0) - parts_b.get(n, 0.0)) for n in parts_b.keys() | parts_c.keys())
    return base.latency.median * max(MIN_BAND, 2 * max(base.latency.noise, cand.latency.noise))


def judge_batch(batch: int, base: RunResult, cand: RunResult, comparable: bool = True) -> BatchVerdict:
    bu, cu = base.latency.median, cand.latency.median
    band = band_us(base, cand)
    delta = cu - bu
    verdict = (INCONCLUSIVE if not comparable else DO_NOT_ENABLE if delta > band
               else ENABLE if delta < -band else INCONCLUSIVE)
    return BatchVerdict(batch, bu, cu, delta, band, verdict, attribute(base, cand))


def judge(baseline: str, candidate: str, pairs: list[tuple[int, RunResult, RunResult]]) -> CheckVerdict:
    """A regression at any batch fails; enable only when the candidate wins at every batch; sides
    that are not comparable are inconclusive, with the reason."""
    why = list(dict.fromkeys(w for _, b, c in pairs for w in incomparable(b, c)))
    batches = tuple(judge_batch(batch, b, c, comparable=not why) for batch, b, c in pairs)
    kinds = {v.verdict for v in batches}
    verdict = DO_NOT_ENABLE if DO_NOT_ENABLE in kinds else ENABLE if kinds == {ENABLE} else INCONCLUSIVE
    source = pairs[0][1].source if pairs else ""
    return CheckVerdict(baseline, candidate, verdict, batches, source, "; ".join(why) or None)
