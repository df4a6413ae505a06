"""The critical path drawn on the timeline of one step (matplotlib; PNG and SVG, each written
atomically): a lane per stream, every kernel coloured by its class and faded, the kernels on the
critical path solid with a dark outline, and an arrow wherever the path waits for a kernel of
another stream; stalls (>= 2 us all-stream idle) shaded."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import Patch

from streamlab.analysis import STALL_US, gaps, kernel_class
from streamlab.report.plots import save
from streamlab.results import CriticalPath
from streamlab.trace.deps import DepGraph

__all__ = ["critical_path_files", "critical_path_plot", "write_critical_path"]

CLASS_COLOURS = {
    "allreduce": "#8C8C8C", "allgather": "#6F6F6F", "reducescatter": "#5A5A5A",
    "alltoall": "#474747", "moe": "#C44E52", "attention": "#55A868", "gemm": "#4C72B0",
    "norm": "#8172B3", "rope": "#937860", "topk": "#DD8452", "quant": "#DA8BC3",
    "memcpy": "#64B5CD", "memset": "#B0D6E3", "other": "#CCB974",
}


def critical_path_plot(graph: DepGraph, path: CriticalPath, title: str, out: Path) -> list[Path]:
    """One step of `graph`'s timeline with `path` on it (see the module doc); returns the
    files written (`out`.png and `out`.svg)."""
    ivs = graph.timeline.intervals
    members = graph.members[path.step]
    t0 = path.start_us
    lanes = sorted({ivs[i].stream for i in members},
                   key=lambda s: min(ivs[i].start for i in members if ivs[i].stream == s))
    lane = {s: k for k, s in enumerate(lanes)}
    on_path = {k.index for k in path.kernels}
    fig, ax = plt.subplots(figsize=(15, 1.2 + 0.45 * len(lanes)))
    used = set()
    for i in members:
        iv = ivs[i]
        cls = kernel_class(iv)
        used.add(cls)
        crit = i in on_path
        ax.barh(lane[iv.stream], iv.duration, left=iv.start - t0, height=0.8 if crit else 0.6,
                color=CLASS_COLOURS.get(cls, CLASS_COLOURS["other"]), alpha=1.0 if crit else 0.3,
                edgecolor="black" if crit else "none", linewidth=0.6 if crit else 0)
    for k in path.kernels:
        if not k.cross_stream:
            continue
        a, b = ivs[k.waited_index], ivs[k.index]
        ax.annotate("", xy=(b.start - t0, lane[b.stream]), xytext=(a.end - t0, lane[a.stream]),
                    arrowprops={"arrowstyle": "->", "color": "black", "linewidth": 0.7})
    for g in gaps([ivs[i] for i in members], t0, path.end_us):
        if g.duration >= STALL_US:
            ax.axvspan(g.start - t0, g.end - t0, color="red", alpha=0.15)
    ax.set_yticks(range(len(lanes)), [f"stream {s}" for s in lanes], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, path.span_us * 1.005)
    ax.set_xlabel(f"us from the step's first kernel (step {path.step}, {path.span_us:.1f} us)")
    ax.set_title(f"{title}: critical path {len(path.kernels)} kernels, {path.busy_us:.1f} us of "
                 f"kernels + {path.gaps_us:.1f} us of gaps (solid, outlined); arrows: waits on another "
                 "stream", fontsize=9, loc="left")
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(handles=[Patch(color=c, label=k) for k, c in CLASS_COLOURS.items() if k in used],
              loc="upper center", ncol=8, fontsize=7, frameon=False, bbox_to_anchor=(0.5, -0.25))
    fig.tight_layout()
    return save(fig, out)


def critical_path_files(trace: str | Path, out: Path) -> list[Path]:
    """The files `write_critical_path` writes for `trace`: `out`/<trace name>-critical-path.png
    and .svg (claimed before the trace is read)."""
    base = _critical_path_base(trace, out)
    return [base.with_name(f"{base.name}.{ext}") for ext in ("png", "svg")]


def _critical_path_base(trace: str | Path, out: Path) -> Path:
    name = Path(trace).name
    for suffix in (".gz", ".json", ".trace"):
        name = name.removesuffix(suffix)
    return out / f"{name}-critical-path"


def write_critical_path(graph: DepGraph, path: CriticalPath, trace: str, out: Path) -> list[Path]:
    """The plot of `path` (of `graph`, the trace's dependency graph), as
    `critical_path_files(trace, out)`."""
    return critical_path_plot(graph, path, Path(trace).name, _critical_path_base(trace, out))
