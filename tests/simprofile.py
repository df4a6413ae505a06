"""A device profile with every cost at zero unless a test sets it, for engine tests on small
hand-made layers (TINY model, tp 1: the calibration shape the profile claims)."""

from __future__ import annotations

from streamlab.sim.profile import DeviceProfile, PairMeasure, Param
from streamlab.sim.provenance import PUBLISHED, CalibrationShape, Provenance

TINY_SHAPE = CalibrationShape(model="tiny", context=8192, tp=1, page_size=64, kv_cache="fp8")


def pair_measures(excess: dict[str, dict[int, float]]) -> tuple[PairMeasure, ...]:
    """Pair timings that give these excesses ("first|second" -> batch -> e): both nodes 1 us
    alone, 1 + e together."""
    return tuple(PairMeasure(b, *key.split("|"), 1.0, 1.0, 1.0 + e) for key, t in excess.items() for b, e in t.items())


def bare_profile(pair_excess: dict[str, dict[int, float]] | None = None, **over) -> DeviceProfile:
    """`pair_excess`: measured pairs, as the excess each gives."""
    base = {"name": "test", "streams": "cuda", "hbm_gbs": Param(1000.0, "t"), "launch_gap_us": Param(0.0, "t"),
            "fence_us": Param(0.0, "t"), "graph_entry_us": Param(0.0, "t"),
            "ar_concurrency_factor": Param(2.0, "t"), "multi_stream_entry_us": Param(0.0, "t"),
            "concurrency_slowdown": Param(0.0, "t"), "calibration_noise": Param(0.0, "t"),
            "provenance": Provenance(PUBLISHED, "test device", TINY_SHAPE, (2,), "2026-12-03", "tests")}
    if pair_excess:
        over["pair_measures"] = pair_measures(pair_excess)
    return DeviceProfile(**{**base, **over})
