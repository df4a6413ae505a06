"""The result of a run, measured or simulated, as a JSON-ready dict and as rich tables.

Both kinds go through `layer_result`, so a simulated layout prints, exports and compares exactly
like a measured one; `source` says which it is.
"""

from __future__ import annotations

from dataclasses import asdict

from rich.console import Console
from rich.table import Table

from streamlab.analysis import Stat, Summary, percentiles, spread, stall_sites
from streamlab.kernels import backend_kind
from streamlab.models.hardware import FP8_OPS
from streamlab.scenario import Scenario

LAUNCH_US = 2.0  # per-kernel allowance in the layer budget: decode is launch-latency heavy


def _stat(values) -> dict:
    p20, p50, p80 = percentiles(values)
    return {"median": p50, "p20": p20, "p80": p80}


def _stat_dict(s: Stat | None) -> dict | None:
    return None if s is None else {"median": s.median, "p20": s.p20, "p80": s.p80, "n": s.n}


def floor_us(node, copy_gbs: float, bf16_tflops: float, fp8_tflops: float) -> float:
    peak = fp8_tflops if node.op in FP8_OPS else bf16_tflops
    return max(node.bytes / (copy_gbs * 1e3), node.flops / (peak * 1e6))


def layer_result(scen: Scenario, source: str, per_layer_us: list[float], repeat_medians: list[float],
                 summary: Summary, isolated_us: dict[str, float], kernels: dict[str, int],
                 floors: dict[str, float], backends: dict[str, str], allreduce: str,
                 held_us: dict[str, float] | None = None,
                 block_medians: list[float] | None = None) -> dict:
    """per_layer_us: every timed replay's graph time / layers (one value for a simulation);
    block_medians: those of consecutive blocks of replays, whose spread is the drift over the
    timed window.

    held_us: nodes that hold their stream for a set time by design (the emulated all-reduce);
    that time is their floor, so the budget judges the kernels, not the stand-in."""
    held_us = held_us or {}
    roofline_sum = sum(floors.values())
    floors = {n: max(f, held_us.get(n, 0.0)) for n, f in floors.items()}
    nodes = {}
    for node in scen.layer.nodes:
        ns = summary.nodes.get(node.name)
        iso = isolated_us[node.name]
        nodes[node.name] = {
            "in_graph_us": ({**_stat_dict(Stat(ns.median, ns.p20, ns.p80, ns.occurrences)),
                             "mean": ns.mean} if ns else None),
            "isolated_us": iso, "slowdown": ns.median / iso if ns and iso > 0 else float("nan"),
            "floor_us": floors[node.name], "kernels": kernels[node.name],
            "flops": node.flops, "bytes": node.bytes, "backend": backends[node.name],
        }
    n_kernels = sum(kernels.values())
    floor_sum = sum(floors.values())
    return {
        "source": source,
        "per_layer_us": _stat(per_layer_us),
        "repeat_medians_us": repeat_medians,
        "repeat_spread": spread(repeat_medians) if len(repeat_medians) > 1 else 0.0,
        "block_medians_us": block_medians or [],
        "drift": spread(block_medians) if block_medians and len(block_medians) > 1 else 0.0,
        "budget_us": floor_sum + LAUNCH_US * n_kernels,
        "floor_sum_us": floor_sum,
        "floor_held_us": sum(held_us.values()),
        "budget_roofline_us": roofline_sum + LAUNCH_US * n_kernels,  # held time not counted
        "kernels_per_layer": n_kernels,
        "profile": {
            "wall_us": _stat_dict(summary.wall), "kernel_sum_us": _stat_dict(summary.kernel_sum),
            "overlap": _stat_dict(summary.overlap), "bubble_us": _stat_dict(summary.bubble),
            "bubble_by_class_us": {k: _stat_dict(v) for k, v in summary.bubble_by_class.items()},
            "stalls_per_layer": _stat_dict(summary.stalls),
            "allreduce_per_call_us": _stat_dict(summary.allreduce),
            "allreduce": allreduce,
            "physical_streams": len(summary.streams),
            "stall_sites": [asdict(site) for site in stall_sites(summary)],
        },
        "nodes": nodes,
    }


def print_result(console: Console, scen: Scenario, m: dict) -> None:
    p = m["profile"]
    lay = m["per_layer_us"]
    if len(m["repeat_medians_us"]) > 1:
        console.print(
            f"[bold]per-layer latency[/] {lay['median']:.1f} us (p20 {lay['p20']:.1f}, p80 "
            f"{lay['p80']:.1f}); repeat medians spread {100 * m['repeat_spread']:.2f}% over "
            f"{len(m['repeat_medians_us'])} interleaved repeats, drift "
            f"{100 * m.get('drift', 0.0):.2f}% over {len(m.get('block_medians_us', []))} blocks  "
            f"[dim]({m['source']})[/]")
    else:
        console.print(f"[bold]per-layer latency[/] {lay['median']:.1f} us  [dim]({m['source']})[/]")
    bub = p["bubble_by_class_us"]
    ar = p["allreduce_per_call_us"]
    console.print(
        f"layer anatomy: wall {p['wall_us']['median']:.1f} us, kernel sum "
        f"{p['kernel_sum_us']['median']:.1f} us, overlap x{p['overlap']['median']:.2f}, bubble "
        f"{p['bubble_us']['median']:.1f} us (launch {bub['launch']['median']:.1f} / fence "
        f"{bub['fence']['median']:.1f} / stall {bub['stall']['median']:.1f}), AR "
        + (f"{ar['median']:.1f} us per call ({p['allreduce']})" if ar else "none")
        + f", {p['physical_streams']} physical streams")
    held = m.get("floor_held_us", 0.0)
    console.print(f"budget: sum of node floors {m['floor_sum_us']:.1f} us"
                  + (f" ({held:.1f} us of it the emulated all-reduce's set time)" if held else "")
                  + f" + {LAUNCH_US:.0f} us x {m['kernels_per_layer']} kernels = "
                  f"{m['budget_us']:.1f} us; latency / budget = {lay['median'] / m['budget_us']:.2f}")
    for site in p["stall_sites"][:3]:
        console.print(f"  stall {site['median_us']:.1f} us x{site['count']} between "
                      f"{site['before']} and {site['after']}")
    table = Table(title=f"{scen.name}: per node (us)", title_justify="left")
    for col in ("node", "backend", "kernels", "in-graph", "p20-p80", "isolated", "slowdown",
                "floor", "iso/floor"):
        table.add_column(col, justify="left" if col in ("node", "backend") else "right")
    for name, n in m["nodes"].items():
        g = n["in_graph_us"]
        far = n["isolated_us"] / n["floor_us"] if n["floor_us"] > 0 else float("inf")
        table.add_row(name, backend_kind(n["backend"]), str(n["kernels"]), f"{g['median']:.2f}" if g else "-",
                      f"{g['p20']:.1f}-{g['p80']:.1f}" if g else "-", f"{n['isolated_us']:.2f}",
                      f"{n['slowdown']:.2f}", f"{n['floor_us']:.2f}",
                      f"[red]{far:.1f}[/]" if far > 10 else f"{far:.1f}")
    console.print(table)
