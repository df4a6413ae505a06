"""The regression gate before enabling a layout (SGLANG_ENABLE_HIP_DUAL_STREAM): candidate vs
baseline at each batch size, decided against the measured noise, with where the difference goes.

A difference is a verdict only when it exceeds the noise band: twice the larger `run_noise` of
the two runs (times the baseline latency), and never less than `MIN_BAND` of it. Simulated runs
have no spread; the floor band applies.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

ENABLE, DO_NOT_ENABLE, INCONCLUSIVE = "enable", "do not enable", "inconclusive"
EXIT = {ENABLE: 0, DO_NOT_ENABLE: 1, INCONCLUSIVE: 2}
MIN_BAND = 0.005  # 0.5% of the baseline


def run_noise(part: dict) -> float:
    """How far another run of the same layout could land, as a fraction of the median: the
    larger of the repeat spread (how well the timed window pins its median) and half the drift
    (the layer's speed wanders within a window, so a fresh run's window can sit elsewhere: on an
    H100 three fresh runs of serial at batch 4 measured 200.1 / 203.9 / 200.1 us with drifts of
    2.4 / 4.6 / 2.7%; bench/results/h100-2026-11-22/fresh_process_rounds.json)."""
    return max(part.get("repeat_spread", 0.0), part.get("drift", 0.0) / 2)


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
    band_us: float
    verdict: str
    attribution: Attribution


@dataclass(frozen=True)
class Verdict:
    baseline: str
    candidate: str
    verdict: str
    batches: list[BatchVerdict]
    source: str

    @property
    def exit_code(self) -> int:
        return EXIT[self.verdict]

    def line(self) -> str:
        worst = max(self.batches, key=lambda b: b.delta_us)
        a = worst.attribution
        where = ", ".join(f"{name} {v:+.1f}" for name, v in a.parts() if abs(v) >= 0.05)
        deltas = ", ".join(f"batch {b.batch} {b.delta_us:+.1f} us ({100 * b.delta_us / b.baseline_us:+.1f}%"
                           f", noise +-{b.band_us:.1f})" for b in self.batches)
        return (f"{self.verdict.upper()}: {self.candidate} vs {self.baseline}: {deltas}. "
                f"At batch {worst.batch} the difference is {where} ({self.source}).")

    def to_json(self) -> dict:
        return {**asdict(self), "exit_code": self.exit_code}


def _part(result: dict) -> dict:
    return result.get("measured") or result.get("simulated") or result


def attribute(base: dict, cand: dict) -> Attribution:
    """Split cand - base per-layer latency using the layer anatomy of both runs."""
    b, c = _part(base), _part(cand)
    pb, pc = b["profile"], c["profile"]
    total = c["per_layer_us"]["median"] - b["per_layer_us"]["median"]

    def ar(p: dict, result: dict) -> float:
        calls = sum(1 for n in result["nodes"] if n.startswith("allreduce"))
        per = p["allreduce_per_call_us"]
        return per["median"] * calls if per else 0.0

    ar_delta = ar(pc, c) - ar(pb, b)
    ks = pc["kernel_sum_us"]["median"] - pb["kernel_sum_us"]["median"]
    hidden_b = pb["kernel_sum_us"]["median"] - pb["wall_us"]["median"] + pb["bubble_us"]["median"]
    hidden_c = pc["kernel_sum_us"]["median"] - pc["wall_us"]["median"] + pc["bubble_us"]["median"]
    bubble = pc["bubble_us"]["median"] - pb["bubble_us"]["median"]
    stall = pc["bubble_by_class_us"]["stall"]["median"] - pb["bubble_by_class_us"]["stall"]["median"]
    wall = pc["wall_us"]["median"] - pb["wall_us"]["median"]
    return Attribution(total=total, kernel_time=ks - ar_delta, allreduce=ar_delta,
                       overlap_saved=hidden_c - hidden_b, bubble=bubble, bubble_stall=stall,
                       other=total - wall)


def judge_batch(batch: int, base: dict, cand: dict) -> BatchVerdict:
    b, c = _part(base), _part(cand)
    bu, cu = b["per_layer_us"]["median"], c["per_layer_us"]["median"]
    band = bu * max(MIN_BAND, 2 * max(run_noise(b), run_noise(c)))
    delta = cu - bu
    verdict = DO_NOT_ENABLE if delta > band else ENABLE if delta < -band else INCONCLUSIVE
    return BatchVerdict(batch, bu, cu, delta, band, verdict, attribute(base, cand))


def judge(baseline: str, candidate: str, pairs: list[tuple[int, dict, dict]]) -> Verdict:
    """A regression at any batch fails; enable only when the candidate wins at every batch."""
    batches = [judge_batch(batch, b, c) for batch, b, c in pairs]
    kinds = {v.verdict for v in batches}
    verdict = DO_NOT_ENABLE if DO_NOT_ENABLE in kinds else ENABLE if kinds == {ENABLE} else INCONCLUSIVE
    source = _part(pairs[0][1]).get("source", "") if pairs else ""
    return Verdict(baseline, candidate, verdict, batches, source)
