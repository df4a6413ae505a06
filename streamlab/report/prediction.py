"""Predictions as the terminal shows them: a simulated latency with its interval and the overlaps
it rests on, the whole decode step, and a layout's simulated cost against serial part by part.
Always labelled as predictions: nothing here reads like a measurement."""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table

from streamlab.results import PredictedLatency, PredictedStep
from streamlab.sim.explain import Part

__all__ = ["breakdown_table", "prediction_lines", "step_lines"]


def prediction_lines(p: PredictedLatency, profile: str) -> list[str]:
    parts = ", ".join(f"{b.name} +-{b.us:.1f}" for b in p.parts)
    lines = [f"[bold]prediction[/] {p.per_layer_us:.1f} us per layer, interval {p.low_us:.1f} - "
             f"{p.high_us:.1f} us (simulated on profile {profile}: a prediction, not a measurement)",
             f"  interval: {parts} us", f"  overlaps: {p.overlaps_line}"]
    if p.moved:
        why = sorted({m.moved_from for m in p.moved})
        lines.append(f"  shape: extrapolates {len(p.moved)} node latencies from the calibrated shape: "
                     + "; ".join(why))
    if p.measure_command:
        lines.append(f"  measure them: {escape(p.measure_command)}")
    return lines


def step_lines(s: PredictedStep, profile: str) -> list[str]:
    def half(p: PredictedLatency) -> float:
        return (p.high_us - p.low_us) / 2

    layers_ms = (s.dense_layers * s.dense_layer.per_layer_us + s.moe_layers * s.moe_layer.per_layer_us) / 1e3
    head = (f"[bold]decode step[/] (time per output token, simulated on profile {profile}: a prediction) "
            f"{s.per_token_ms:.2f} ms, interval {s.low_ms:.2f} - {s.high_ms:.2f} ms"
            + (f"; published {s.published_ms:.2f} ms" if s.published_ms else ""))
    lines = [head, (f"  {s.dense_layers} dense layers x {s.dense_layer.per_layer_us:.1f} us "
                    f"(+-{half(s.dense_layer):.1f}) + {s.moe_layers} MoE layers x {s.moe_layer.per_layer_us:.1f} us "
                    f"(+-{half(s.moe_layer):.1f}) = {layers_ms:.2f} ms")]
    lines += [f"  {o.name}: {o.us:.1f} us +-{o.spread_us:.1f} ({o.how})" for o in s.outside]
    lines.append("  not modelled: the host's time between steps (scheduler, input preparation)")
    return lines


def breakdown_table(parts: list[Part], *, layout: str, baseline: str, profile: str, batch: int,
                    published_source: str) -> Table:
    """A layout's simulated cost against `baseline`, part by part, beside the published figures."""
    table = Table(title=f"{layout} vs {baseline} on profile {profile}, batch {batch}, per layer "
                  f"(simulated; published: {published_source})", title_justify="left")
    for col in ("part", baseline, layout, "difference", "published", "off by", "from parameters"):
        table.add_column(col, justify="left" if col in ("part", "from parameters") else "right")
    for p in parts:
        table.add_row(p.name, f"{p.baseline_us:.1f}", f"{p.layout_us:.1f}", f"{p.difference_us:+.1f}",
                      "" if p.published_us is None else f"{p.published_us:+.1f}",
                      "" if p.off is None else f"{100 * p.off:+.0f}%", p.parameters)
    return table
