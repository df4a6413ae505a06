"""Plots for reports (matplotlib, PNG and SVG): one layer per stream for several layouts stacked,
per-layer latency over batch sizes, per-node slowdown, and the waterfall of a difference."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from streamlab.analysis import STALL_US, gaps, is_allreduce_node  # noqa: E402
from streamlab.io import write_atomic  # noqa: E402
from streamlab.results import NodeResult  # noqa: E402
from streamlab.timeline import Timeline  # noqa: E402

# one colour per part of the layer, so the same work looks the same in every layout
PART_COLOURS = {
    "attn_prep": "#4C72B0", "indexer": "#DD8452", "mla": "#55A868", "rope_and_cache": "#8172B3",
    "post_attn": "#937860", "routed_moe": "#C44E52", "shared_expert": "#DA8BC3", "moe": "#C44E52",
    "allreduce": "#8C8C8C", "other": "#CCB974",
}


def _part(node: str | None, groups: dict[str, list[str]]) -> str:
    if is_allreduce_node(node):
        return "allreduce"
    for g, members in groups.items():
        if g != "moe" and node in members:
            return g
    return "other"


def save(fig, path: Path) -> list[Path]:
    """PNG and SVG beside each other (`path` with each suffix), each rendered in memory and then
    written atomically: an interrupted plot leaves the old file or none, never a cut one.
    Returns both paths."""
    out = []
    try:
        for ext in ("png", "svg"):
            buf = io.BytesIO()
            fig.savefig(buf, format=ext, dpi=150, bbox_inches="tight")
            out.append(write_atomic(path.parent / f"{path.name}.{ext}", buf.getvalue()))
    finally:
        plt.close(fig)
    return out


def layer_timelines(runs: list[tuple[str, Timeline, dict[str, list[str]]]], layer: int,
                    path: Path) -> list[Path]:
    """Per-stream lanes of one layer for each layout, stacked on a shared time axis (time from
    the layer's first kernel); stalls (>= 2 us all-stream idle) are shaded red."""
    lanes_per_run = [max(1, len({iv.stream for iv in t.in_layer(layer)})) for _, t, _ in runs]
    fig, axes = plt.subplots(len(runs), 1, figsize=(14, 0.6 + sum(0.4 * n + 0.6 for n in lanes_per_run)),
                             sharex=True, squeeze=False,
                             gridspec_kw={"height_ratios": [n + 1 for n in lanes_per_run]})
    longest = 0.0
    for ax, (title, tl, groups) in zip(axes[:, 0], runs):
        ivs = tl.in_layer(layer)
        if not ivs:
            ax.set_title(f"{title}: no kernels in layer {layer}")
            continue
        t0 = min(iv.start for iv in ivs)
        t1 = max(iv.end for iv in ivs)
        longest = max(longest, t1 - t0)
        lanes = sorted({iv.stream for iv in ivs}, key=lambda s: min(iv.start for iv in ivs if iv.stream == s))
        for iv in ivs:
            y = lanes.index(iv.stream)
            ax.barh(y, iv.end - iv.start, left=iv.start - t0, height=0.8,
                    color=PART_COLOURS[_part(iv.node, groups)], edgecolor="white", linewidth=0.3)
            if iv.end - iv.start > 0.035 * (t1 - t0):
                ax.text((iv.start + iv.end) / 2 - t0, y, iv.node or iv.name, ha="center",
                        va="center", fontsize=6, clip_on=True)
        for g in gaps(ivs, t0, t1):
            if g.duration >= STALL_US:
                ax.axvspan(g.start - t0, g.end - t0, color="red", alpha=0.15)
        ax.set_yticks(range(len(lanes)), [f"stream {s}" for s in lanes], fontsize=7)
        ax.invert_yaxis()
        ax.set_title(f"{title}: layer {t1 - t0:.1f} us", fontsize=9, loc="left")
        ax.spines[["top", "right"]].set_visible(False)
    axes[-1, 0].set_xlabel("us from the layer's first kernel")
    axes[-1, 0].set_xlim(0, longest * 1.01)
    used = {_part(iv.node, g) for _, t, g in runs for iv in t.in_layer(layer)}
    fig.legend(handles=[Patch(color=c, label=p) for p, c in PART_COLOURS.items() if p in used],
               loc="upper center", ncol=8, fontsize=7, frameon=False, bbox_to_anchor=(0.5, 1.02))
    fig.tight_layout()
    return save(fig, path)


def latency_bars(rows: list[dict], path: Path, spread: str = "median, p20-p80") -> list[Path]:
    """Per-layer latency (median, p20-p80 whiskers; for predictions, the interval: `spread`
    says which) per layout, grouped by batch size.

    rows: {"scenario", "batch", "median", "p20", "p80"}."""
    scenarios = list(dict.fromkeys(r["scenario"] for r in rows))
    batches = sorted({r["batch"] for r in rows})
    width = 0.8 / len(scenarios)
    fig, ax = plt.subplots(figsize=(max(6, 1.8 * len(batches) * len(scenarios) / 2), 4))
    cmap = plt.get_cmap("tab10")
    for i, s in enumerate(scenarios):
        pts = {r["batch"]: r for r in rows if r["scenario"] == s}
        xs = [j + (i - (len(scenarios) - 1) / 2) * width for j, b in enumerate(batches) if b in pts]
        med = [pts[b]["median"] for b in batches if b in pts]
        err = [[pts[b]["median"] - pts[b]["p20"] for b in batches if b in pts],
               [pts[b]["p80"] - pts[b]["median"] for b in batches if b in pts]]
        ax.bar(xs, med, width, yerr=err, capsize=2, label=s, color=cmap(i))
        for x, m in zip(xs, med):
            ax.text(x, m, f"{m:.0f}", ha="center", va="bottom", fontsize=6)
    ax.set_xticks(range(len(batches)), [f"batch {b}" for b in batches])
    ax.set_ylabel(f"us per layer ({spread})")
    ax.legend(fontsize=7, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return save(fig, path)


def slowdown_bars(nodes: dict[str, NodeResult], title: str, path: Path) -> list[Path]:
    """In-graph / isolated latency per node: contention from the other stream shows above 1."""
    names = [n for n, v in nodes.items() if v.in_graph_us]
    vals = [nodes[n].slowdown for n in names]
    fig, ax = plt.subplots(figsize=(10, 0.22 * len(names) + 1))
    ax.barh(names, vals, color=["#C44E52" if v > 1.1 else "#4C72B0" for v in vals])
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.invert_yaxis()
    ax.tick_params(labelsize=7)
    ax.set_xlabel("slowdown: in-graph / isolated (cold L2)")
    ax.set_title(title, fontsize=9, loc="left")
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return save(fig, path)


def waterfall(base: str, cand: str, parts: list[tuple[str, float]], total: float,
              path: Path) -> list[Path]:
    """Where a per-layer difference goes: each part's contribution (us), then the total."""
    fig, ax = plt.subplots(figsize=(8, 3.5))
    running = 0.0
    for i, (label, v) in enumerate(parts):
        ax.bar(i, abs(v), bottom=min(running, running + v), color="#C44E52" if v > 0 else "#55A868")
        ax.text(i, running + v, f"{v:+.1f}", ha="center", va="bottom" if v >= 0 else "top", fontsize=7)
        running += v
    ax.bar(len(parts), total, color="#4C72B0")
    ax.text(len(parts), total, f"{total:+.1f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(parts) + 1), [p for p, _ in parts] + ["total"], fontsize=7, rotation=20)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_ylabel(f"us per layer, {cand} - {base}")
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return save(fig, path)
