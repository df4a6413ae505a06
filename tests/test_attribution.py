"""Kernel attribution on synthetic profiler output: replayed kernels land on executor-chosen
streams, so attribution goes by dependency order and kernel identity."""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest

from streamlab.errors import Failure
from streamlab.exec.attribute import attribute
from streamlab.exec.profiler import DeviceEvent
from streamlab.scenario import load
from streamlab.schedule.graph import capture

SCENARIOS = Path(__file__).parent.parent / "scenarios"


def synthetic_replay(scen, layers, replays, signatures, stream_of, shuffle_concurrent=False):
    """Device events as a replay would produce them: nodes in dispatch order, each node's
    kernels back to back, concurrent branches interleaved in time."""
    graph = capture(scen.program, layers)
    events, t = [], 0.0
    for r in range(replays):
        for layer, node in graph.nodes:
            for name, grid in signatures[node]:
                events.append(DeviceEvent(name, stream_of(node, r), t, t + 1.5, "kernel", grid))
                t += 2.0
    if shuffle_concurrent:
        # the indexer's first kernel starts before q_b_proj's: same start order a GPU may show
        events.sort(key=lambda e: (e.start - (3.0 if e.grid == (9,) else 0.0)))
    return graph, events


def test_attribution_by_dependency_order_and_identity_not_stream():
    scen = load(SCENARIOS / "a_v4.yaml")
    gemm = "fp8_gemm_kernel"
    signatures = {n.name: [(n.op + "_kernel", (1,))] for n in scen.layer.nodes}
    for name, grid in (("q_b_proj", (8,)), ("idx_wq_b", (9,)), ("qkv_a_proj", (7,)), ("o_proj", (6,))):
        signatures[name] = [(gemm, grid), ("splitk_reduce", grid)]
    # executor streams change between replays and say nothing about nodes (crc32: the same in
    # every process, unlike hash() of a str)
    graph, events = synthetic_replay(scen, 2, 3, signatures,
                                     lambda node, r: str((zlib.crc32(node.encode()) + r) % 3),
                                     shuffle_concurrent=True)
    out = attribute(events, graph, signatures, replays=3, layers_per_replay=2,
                    collective_nodes={"allreduce_attn", "allreduce_moe"})
    assert len(out) == len(events)
    by_node = {}
    for iv in out:
        by_node.setdefault((iv.layer, iv.node), []).append(iv)
    assert sorted({layer for layer, _ in by_node}) == [0, 1, 2, 3, 4, 5]  # replay * layers + layer
    assert [iv.name for iv in by_node[(0, "q_b_proj")]] == [gemm, "splitk_reduce"]
    assert {iv.name for iv in by_node[(3, "idx_wq_b")]} == {gemm, "splitk_reduce"}
    assert all(iv.kind == "allreduce" for iv in by_node[(5, "allreduce_moe")])
    assert all(iv.kind == "kernel" for iv in by_node[(2, "experts")])


def test_attribution_refuses_a_kernel_count_it_cannot_explain():
    scen = load(SCENARIOS / "serial.yaml")
    signatures = {n.name: [(n.op, ())] for n in scen.layer.nodes}
    graph, events = synthetic_replay(scen, 1, 1, signatures, lambda n, r: "7")
    with pytest.raises(Failure, match="the profiler saw 27 device operations in 1 replays"):
        attribute(events[:-1], graph, signatures, 1, 1, set())


def test_attribution_names_an_unexpected_kernel():
    scen = load(SCENARIOS / "serial.yaml")
    signatures = {n.name: [(n.op, ())] for n in scen.layer.nodes}
    graph, events = synthetic_replay(scen, 1, 1, signatures, lambda n, r: "7")
    events[3] = DeviceEvent("mystery_kernel", "7", events[3].start, events[3].end, "kernel", ())
    with pytest.raises(Failure, match="mystery_kernel .* matches no node that can run then"):
        attribute(events, graph, signatures, 1, 1, set())
