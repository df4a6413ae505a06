"""How timed replays are read: interleaved repeats and contiguous blocks (drift)."""

from __future__ import annotations

import pytest

from streamlab.analysis import spread
from streamlab.exec.measure import GraphTiming


def _ramp(n: int, lo: float, hi: float) -> list[float]:
    """A layer that slows down steadily over the window, with a replay-to-replay wobble."""
    return [lo + (hi - lo) * i / (n - 1) + (0.3 if i % 3 == 0 else -0.1) for i in range(n)]


def test_interleaved_repeats_span_the_window_and_blocks_show_the_drift():
    t = GraphTiming(_ramp(500, 200.0, 210.0), block=50, repeats=5)
    assert len(t.block_medians) == 10
    assert t.block_medians[0] == pytest.approx(200.5, abs=0.3)
    assert t.block_medians[-1] == pytest.approx(209.5, abs=0.3)
    assert spread(t.block_medians) == pytest.approx(0.044, abs=0.003)
    # every repeat takes every fifth replay of the whole window: the same ramp, a tiny spread
    assert len(t.repeat_medians) == 5
    assert all(m == pytest.approx(205.0, abs=0.5) for m in t.repeat_medians)
    assert spread(t.repeat_medians) < 0.003


def test_a_partial_last_block_is_left_out_of_the_drift():
    t = GraphTiming([100.0] * 50 + [110.0] * 20, block=50, repeats=5)
    assert t.block_medians == [100.0]
    assert len(t.per_replay_us) == 70
