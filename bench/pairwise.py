"""Pairwise micro-benchmark: what the simulator's cross-stream parameters are fitted to
(`streamlab calibrate MATRIX --pairwise pairwise.json`; the model is in streamlab/sim/pairwise.py).

    python bench/pairwise.py --out DIR [--batches 1,4,16,64] [--units 8]

Every measurement is one CUDA graph of `units` units `fork; MAIN on main; ALT on alt; join`,
replayed and timed per replay with device events by the executor's harness
(exec.measure.time_graphs), graphs interleaved in rounds so clock drift hits them alike:
- fence: a chain of one empty kernel per unit (one stream) and a ladder of fork/join units of two
  empty kernels, at 4, 16 and 64 units (slope: cost per edge, intercept: cost per replay);
- pairs of layer nodes that overlap in the shipped dual-stream layouts, in both dispatch orders,
  and each node beside an empty kernel in the same harness (units cycle over 4 layers' weights,
  as the executor's graph does);
- the serial layout (4 layers), timed once graphs with branches have run in the process: its
  kernels then sit as far apart as in a graph with branches (first_run.txt), which gives
  calibrate the launch gap of multi-stream layouts.
Everything is timed twice: in a clean process, then after one profiler session (Kineto leaves
CUPTI attached, so bench/matrix.py times every run but its first in that state; on H100 it moved
the serial layer by under 1%). Last, a few replays of each graph under the profiler: the empty
kernel's own time, and each stream's kernels (diagnostics).

Writes DIR/pairwise.json after each phase, so a run cut short still leaves what it measured.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from streamlab.exec.buffers import Buffers
from streamlab.exec.eager import StreamSet, run_layers
from streamlab.exec.measure import time_graphs
from streamlab.exec.profiler import device_events
from streamlab.exec.target import Target, collective_overrides, versions
from streamlab.io import write_json_atomic
from streamlab.kernels import bind_layer
from streamlab.scenario import Measure, load
from streamlab.sim.pairwise import NOOP

ROOT = Path(__file__).resolve().parent.parent
LAYERS = 4
FENCE_UNITS = (4, 16, 64)
# (dispatched first on main, second on alt): the overlaps of pr23562, a_v4 and a_v4_moe_dual
PAIRS = (
    ("q_a_norm", "kv_a_norm"),
    ("q_b_proj", "idx_wq_b"), ("idx_wq_b", "q_b_proj"),
    ("idx_wq_b", "bmm_w_kc"), ("bmm_w_kc", "idx_wq_b"),
    ("rope_cat_cache", "idx_wk"), ("idx_wk", "rope_cat_cache"), ("idx_wk", "bmm_w_kc"),
    ("router_gate", "shared_gate_up"), ("shared_gate_up", "router_gate"),
    ("shared_gate_up", "moe_topk"),
    ("shared_gate_up", "experts"), ("experts", "shared_gate_up"),
    ("experts", "shared_act"), ("experts", "shared_down"), ("shared_down", "experts"),
    ("allreduce_attn", "q_b_proj"),
)
PAIR_SCENARIO = "a_v4_moe_dual"  # its variant has every node of the pairs (shared expert unfused)


@dataclass
class Measured:
    """One graph to time: its record fields and, once timed, its replay times."""

    batch: int
    kind: str
    units: int
    main: tuple[str, ...]
    alt: tuple[str, ...]
    graph: torch.cuda.CUDAGraph
    replays: dict[str, list[float]] = field(default_factory=dict)  # state -> us per replay

    def record(self, state: str) -> dict:
        t = sorted(self.replays[state])
        return {"state": state, "batch": self.batch, "kind": self.kind, "units": self.units,
                "main": list(self.main), "alt": list(self.alt), "replay_us": t[len(t) // 2],
                "replays": len(t), "p20_us": t[len(t) // 5], "p80_us": t[4 * len(t) // 5]}


class Harness:
    """Bound nodes of one layer variant at one batch, and fork/join units built from them."""

    def __init__(self, scenario: str, batch: int, device: torch.device) -> None:
        self.scen = load(ROOT / "scenarios" / f"{scenario}.yaml").override(batch=batch)
        target = Target(device, "triton")
        self.buffers = Buffers(self.scen.layer, LAYERS, device)
        self.bound = bind_layer(self.scen.layer, "triton", collective_overrides(self.scen, target))
        self.streams = StreamSet(device)
        run_layers(self.scen.program, self.bound, self.buffers, self.streams)  # JIT + valid inputs
        torch.cuda.synchronize(device)
        self.alt = torch.cuda.Stream(device)

    def call(self, node: str, layer: int) -> None:
        if node == NOOP:
            torch.cuda._sleep(0)  # one thread, returns at once: the smallest kernel there is
        else:
            self.bound[node](self.buffers.tensors(layer))

    def units(self, main: tuple[str, ...], alt: tuple[str, ...], units: int) -> None:
        for u in range(units):
            cur = torch.cuda.current_stream()
            if alt:
                self.alt.wait_stream(cur)
            for n in main:
                self.call(n, u % LAYERS)
            if alt:
                with torch.cuda.stream(self.alt):
                    for n in alt:
                        self.call(n, u % LAYERS)
                cur.wait_stream(self.alt)


_POOL = []


def capture(work) -> torch.cuda.CUDAGraph:
    """One memory pool for every graph: they replay one at a time, and ~170 private pools of
    workspace would add up."""
    if not _POOL:
        _POOL.append(torch.cuda.graph_pool_handle())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=_POOL[0]):
        work()
    return graph


LEAD_IN = 3  # untimed replays of a graph before its block: the first after another graph read slow
SETTLE_S = 1.5  # back-to-back work until clocks settle (about a second on H100)


def time_all(items: list[Measured], state: str, rounds: int, replays: int) -> None:
    """The executor's harness (exec.measure.time_graphs), interleaved: every round replays each
    graph LEAD_IN times untimed, then `replays` timed, one graph after another."""
    protocol = Measure(warmup=1, iters=replays, repeats=rounds, seconds=0.0)
    timings = time_graphs([m.graph for m in items], protocol, lead_in=LEAD_IN, warmup_s=SETTLE_S)
    for m, t in zip(items, timings):
        m.replays[state] = t.per_replay_us


def fence_graphs(h: Harness) -> list[Measured]:
    out = []
    for units in FENCE_UNITS:
        out.append(Measured(0, "chain", units, (NOOP,), (), capture(lambda u=units: h.units((NOOP,), (), u))))
        out.append(Measured(0, "ladder", units, (NOOP,), (NOOP,),
                            capture(lambda u=units: h.units((NOOP,), (NOOP,), u))))
    return out


def pair_graphs(h: Harness, batch: int, units: int) -> list[Measured]:
    shapes = [((NOOP,), (NOOP,))]  # the empty harness, then each node alone and each pair
    for a, b in PAIRS:
        for s in (((a,), (NOOP,)), ((NOOP,), (b,)), ((a,), (b,))):
            if s not in shapes:
                shapes.append(s)
    return [Measured(batch, "pair", units, m, a, capture(lambda m=m, a=a: h.units(m, a, units)))
            for m, a in shapes]


def layer_graph(batch: int, device: torch.device) -> tuple[Measured, Harness]:
    h = Harness("serial", batch, device)
    g = capture(lambda: run_layers(h.scen.program, h.bound, h.buffers, h.streams))
    return Measured(batch, "layer", LAYERS, ("serial",), (), g), h


def stream_activity(m: Measured, device: torch.device, replays: int = 2) -> dict:
    """Per stream of the replayed graph: kernel names, kernels and busy us per unit."""
    events = [e for e in device_events(lambda: [m.graph.replay() for _ in range(replays)], device)
              if e.kind == "kernel"]
    per: dict[str, list] = {}
    for e in events:
        per.setdefault(e.stream, []).append(e)
    n = replays * m.units
    return {"batch": m.batch, "kind": m.kind, "main": list(m.main), "alt": list(m.alt), "streams": [
        {"names": sorted({e.name[:60] for e in evs}), "kernels_per_unit": len(evs) / n,
         "busy_us_per_unit": sum(e.end - e.start for e in evs) / n} for evs in per.values()]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--batches", default="1,4,16,64")
    ap.add_argument("--units", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--replays", type=int, default=30)
    ap.add_argument("--budget-s", type=float, default=270.0, help="skip the profiler pass past this")
    args = ap.parse_args()
    t0 = time.perf_counter()
    device = torch.device("cuda")
    batches = [int(b) for b in args.batches.split(",")]
    scen = load(ROOT / "scenarios" / f"{PAIR_SCENARIO}.yaml")
    doc = {"device": torch.cuda.get_device_name(device), "versions": versions(),
           "model": scen.model.name, "shape": {k: v for k, v in vars(scen.shape).items() if k != "batch"},
           "variant": vars(scen.variant), "layers": LAYERS, "units": args.units, "pairs": PAIRS,
           "records": [], "serial_layer_us": {}, "profiled": [], "errors": []}
    out = args.out / "pairwise.json"

    def save(phase: str) -> None:
        doc["seconds"] = time.perf_counter() - t0
        doc["phase"] = phase
        write_json_atomic(out, doc)
        print(f"[{doc['seconds']:.0f} s] {phase}", flush=True)

    keep: list[Harness] = []
    by_batch: dict[int, list[Measured]] = {}
    layers: dict[int, Measured] = {}
    first = Harness(PAIR_SCENARIO, batches[0], device)
    fence = fence_graphs(first)
    for batch in batches:
        h = first if batch == batches[0] else Harness(PAIR_SCENARIO, batch, device)
        by_batch[batch] = pair_graphs(h, batch, args.units)
        layers[batch], hl = layer_graph(batch, device)
        keep += [h, hl]
        save(f"captured batch {batch}")
    every = fence + [m for b in batches for m in by_batch[b] + [layers[b]]]
    for state in ("clean", "cupti"):
        if state == "cupti":
            device_events(lambda: fence[0].graph.replay(), device)  # attaches CUPTI for good
        time_all(every, state, args.rounds, args.replays)
        doc["records"] += [m.record(state) for m in every if m.kind != "layer"]
        doc["serial_layer_us"][state] = {b: layers[b].record(state)["replay_us"] / LAYERS for b in batches}
        save(f"timed ({state})")
    noop = next(m for m in fence if m.kind == "chain")
    doc["noop_us"] = stream_activity(noop, device)["streams"][0]["busy_us_per_unit"]
    for m in every:
        if time.perf_counter() - t0 > args.budget_s:
            doc["errors"].append("profiler pass cut short by --budget-s")
            break
        if m.kind in ("pair", "ladder"):
            doc["profiled"].append(stream_activity(m, device))
    save("done")


if __name__ == "__main__":
    main()
