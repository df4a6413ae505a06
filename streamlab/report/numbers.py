"""Numbers as every report prints them, with a precision that means something at every size: a
roofline floor of a small norm is a fraction of a nanosecond, a MoE node's tens of microseconds,
and either printed with two decimals in microseconds reads "0.00" beside a ratio of 20202."""

from __future__ import annotations

import math

__all__ = ["duration", "ratio"]


def duration(us: float | None) -> str:
    """A time given in microseconds, in the unit that keeps three significant digits readable:
    `12.3 us`, `1.25 ms`, `30.5 ns`, `0.412 ns`; `-` for none or NaN."""
    if us is None or math.isnan(us):
        return "-"
    if math.isinf(us):
        return "inf"
    size = abs(us)
    if size == 0:
        return "0 us"
    if size >= 1000:
        return f"{us / 1000:.3g} ms" if size < 1e5 else f"{us / 1000:,.0f} ms"
    if size >= 1:
        return f"{us:.3g} us" if size < 100 else f"{us:.0f} us"
    return f"{us * 1000:.3g} ns"


def ratio(x: float | None) -> str:
    """A ratio with three significant digits at most and whole above 100: `1.18`, `36.5`, `20,202`;
    `-` for none or NaN."""
    if x is None or math.isnan(x):
        return "-"
    if math.isinf(x):
        return "inf"
    size = abs(x)
    if size < 10:
        return f"{x:.2f}"
    if size < 100:
        return f"{x:.1f}"
    return f"{x:,.0f}"
