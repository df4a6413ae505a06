"""Analysis on synthetic timelines whose numbers are worked out by hand in the comments."""

import json
import os

import numpy as np
import pytest

from streamlab.analysis import (Stat, assign_layers, busy_union, classify, gaps, percentiles,
                                spread, summarize, visits)
from streamlab.errors import EXIT_ENVIRONMENT, Failure
from streamlab.io import write_atomic, write_json_atomic
from streamlab.timeline import Interval, Source, Timeline

SRC = Source("simulated", "test")


def iv(name, stream, start, end, node=None, layer=0, kind="kernel"):
    return Interval(name, stream, start, end, node=node, layer=layer, kind=kind)


def test_two_streams_overlap_factor():
    # main 0-10, 10-20; alt 5-15 -> kernel sum 30 over a busy union of 20: overlap 1.5
    tl = Timeline([iv("k_a", "0", 0, 10, "a"), iv("k_b", "0", 10, 20, "b"),
                   iv("k_c", "1", 5, 15, "c")], SRC)
    (ls,) = summarize(tl).layers
    assert (ls.wall, ls.kernel_sum, ls.busy, ls.overlap, ls.bubble) == (20, 30, 20, 1.5, 0)
    assert ls.streams == ["0", "1"] and ls.kernels == 3


def planted() -> Timeline:
    # main: n1 0-10 | 0.5 | n2 10.5-20 | 1.5 | n3 21.5-30 | 3.0 | n4 33-40, n5 45-50
    # alt:  x 12-18 inside n2 (no effect); y 39-46 covers main's 40-45 idle (no gap)
    return Timeline([
        iv("k1", "0", 0, 10, "n1"), iv("k2", "0", 10.5, 20, "n2"), iv("k3", "0", 21.5, 30, "n3"),
        iv("k4", "0", 33, 40, "n4"), iv("k5", "0", 45, 50, "n5"),
        iv("kx", "1", 12, 18, "x"), iv("ky", "1", 39, 46, "y")], SRC)


def test_planted_gaps_classified_with_neighbours():
    found = gaps(planted().intervals, 0, 50)
    assert [(g.start, g.end, g.duration, g.cls) for g in found] == [
        (10, 10.5, 0.5, "launch"), (20, 21.5, 1.5, "fence"), (30, 33, 3.0, "stall")]
    assert [(g.before.node, g.after.node) for g in found] == [("n1", "n2"), ("n2", "n3"),
                                                              ("n3", "n4")]
    assert found[2].before.name == "k3" and found[2].after.name == "k4"


def test_planted_layer_bubble_by_class():
    (ls,) = summarize(planted()).layers
    assert ls.wall == 50 and ls.bubble == 5.0
    assert ls.bubble_by_class == {"launch": 0.5, "fence": 1.5, "stall": 3.0}
    assert ls.gap_counts == {"launch": 1, "fence": 1, "stall": 1}
    assert [(g.start, g.end, g.before.node, g.after.node) for g in ls.stalls] == [
        (30, 33, "n3", "n4")]
    # 10 + 9.5 + 8.5 + 7 + 5 + 6 + 7 = 53 over busy 50 - 5 = 45
    assert (ls.kernel_sum, ls.busy) == (53, 45)
    assert ls.overlap == 53 / 45


def test_gap_class_edges():
    assert [classify(d) for d in (0.001, 0.999, 1.0, 1.999, 2.0, 30.0)] == [
        "launch", "launch", "fence", "fence", "stall", "stall"]


def test_busy_union_merges_touching_and_overlapping():
    ivs = [iv("a", "0", 0, 10), iv("b", "1", 5, 15), iv("c", "0", 15, 20), iv("d", "1", 21, 22),
           iv("e", "0", 21.5, 21.7)]
    assert busy_union(ivs) == [(0, 20), (21, 22)]
    assert busy_union([]) == []


def test_gaps_cut_at_window_edges_and_name_outside_neighbours():
    ivs = [iv("a", "0", 0, 4, "a"), iv("b", "0", 10, 12, "b")]
    found = gaps(ivs, 6, 11)  # idle 4-10 seen through the window 6-11: 6-10
    assert [(g.start, g.end, g.cls, g.before.node, g.after.node) for g in found] == [
        (6, 10, "stall", "a", "b")]
    tail = gaps(ivs, 11, 15)
    assert [(g.start, g.end, g.before.node, g.after) for g in tail] == [(12, 15, "b", None)]


def bounded() -> Timeline:
    # layer 0 in bounds [0, 20): input_norm 0-8, moe 8-18; layer 1 in [20, 40): input_norm
    # 23-30, moe 30-38. Layer 0 ends with 2.0 us idle (18-20), layer 1 starts with 3.0 (20-23):
    # graph re-entry seen from both sides; layer 1 ends with 2.0 (38-40) and nothing after.
    return Timeline([
        iv("norm", "0", 0, 8, "input_norm", None), iv("gemm", "0", 8, 18, "moe", None),
        iv("norm", "0", 23, 30, "input_norm", None), iv("gemm", "0", 30, 38, "moe", None)],
        SRC, layers=[(0, 20), (20, 40)])


def test_layers_assigned_from_bounds_and_wall_from_bounds():
    tl = assign_layers(bounded())
    assert [i.layer for i in tl.intervals] == [0, 0, 1, 1]
    assert tl.layers == [(0, 20), (20, 40)]
    known = Timeline([iv("a", "0", 1, 2, layer=5), iv("b", "0", 41, 42, layer=None)], SRC,
                     layers=[(0, 20), (20, 40)])
    assert [i.layer for i in assign_layers(known).intervals] == [5, None]  # kept; outside
    s = summarize(bounded())
    assert [(ls.layer, ls.visit, ls.start, ls.end, ls.wall) for ls in s.layers] == [
        (0, 0, 0, 20, 20), (1, 0, 20, 40, 20)]
    assert [ls.kernel_sum for ls in s.layers] == [18, 15]
    assert [[(g.start, g.end, g.before.node, g.before.layer, g.after and g.after.layer)
             for g in ls.stalls] for ls in s.layers] == [
        [(18, 20, "moe", 0, 1)], [(20, 23, "moe", 0, 1), (38, 40, "moe", 1, None)]]
    assert s.layers[0].stalls[0].after.node == "input_norm"
    assert s.wall == Stat(median=20, p20=20, p80=20, n=2)
    assert s.bubble == Stat(median=3.5, p20=2.6, p80=4.4, n=2)  # bubbles 2.0 and 5.0 (3 + 2)


def test_wall_without_bounds_is_first_start_to_last_end():
    tl = Timeline([i for i in assign_layers(bounded()).intervals], SRC)
    assert [ls.wall for ls in summarize(tl).layers] == [18, 15]
    assert [ls.bubble for ls in summarize(tl).layers] == [0, 0]


def test_allreduce_per_call():
    # layer 0: attn AR 10; moe AR as two kernels 8 + 10 = one call of 18; an unattributed
    # kind=allreduce kernel of 7. layer 1: 12 and 20. Calls sorted: 7 10 12 18 20.
    tl = Timeline([
        iv("gemm", "0", 0, 5, "o_proj"),
        iv("cross_device_reduce_1stage", "0", 5, 15, "allreduce_attn"),
        iv("cross_device_reduce_1stage", "0", 15, 23, "allreduce_moe"),
        iv("cross_device_reduce_1stage", "0", 23, 33, "allreduce_moe"),
        iv("ncclKernel", "1", 40, 47, None, 0, "allreduce"),
        iv("cross_device_reduce_1stage", "0", 50, 62, "allreduce_attn", 1),
        iv("cross_device_reduce_1stage", "0", 62, 82, "allreduce_moe", 1)], SRC)
    s = summarize(tl)
    assert [ls.allreduce for ls in s.layers] == [[10, 18, 7], [12, 20]]
    # p20 at rank 0.8: 7 + 0.8 * 3; p80 at rank 3.2: 18 + 0.2 * 2
    assert s.allreduce == Stat(median=12, p20=pytest.approx(9.4, rel=1e-12),
                               p80=pytest.approx(18.4, rel=1e-12), n=5)
    assert s.nodes["allreduce_moe"].kernels == 3
    assert s.nodes["allreduce_moe"].occurrences == 2


def test_no_allreduce_gives_none():
    assert summarize(planted()).allreduce is None


def replayed() -> Timeline:
    """A two-layer graph replayed twice (layer indices repeat), 100 us per replay.

    Per layer at base b: main input_norm b..b+5, moe = gemm1 b+5..b+10 + gemm2 b+10..b+15+10k
    (k = occurrence 0..3 in time order, so moe sums 10, 20, 30, 40); alt indexer = two `idx`
    kernels b+45..b+50.5 and b+51..b+53 (7.5 us), the second starting after the next layer's
    input_norm: layers interleave across streams.
    """
    out = []
    for k, (layer, b) in enumerate([(0, 0), (1, 50), (0, 100), (1, 150)]):
        out += [iv("rmsnorm", "0", b, b + 5, "input_norm", layer),
                iv("gemm1", "0", b + 5, b + 10, "moe", layer),
                iv("gemm2", "0", b + 10, b + 15 + 10 * k, "moe", layer),
                iv("idx", "1", b + 45, b + 50.5, "indexer", layer),
                iv("idx", "1", b + 51, b + 53, "indexer", layer)]
    return Timeline(out, SRC)


def test_visits_separate_replays_despite_interleave():
    groups = visits(replayed().intervals)
    assert list(groups) == [(0, 0), (1, 0), (0, 1), (1, 1)]
    assert [len(g) for g in groups.values()] == [5, 5, 5, 5]
    assert [ivl.start for ivl in groups[(0, 1)]] == [100, 105, 110, 145, 151]


def test_node_stats_multi_kernel_across_replays():
    s = summarize(replayed())
    assert [(ls.layer, ls.visit) for ls in s.layers] == [(0, 0), (1, 0), (0, 1), (1, 1)]
    moe = s.nodes["moe"]
    # sums 10 20 30 40: p20 at rank 0.6 -> 16, median 25, p80 at rank 2.4 -> 34
    assert (moe.occurrences, moe.kernels, moe.kernels_per_occurrence) == (4, 8, 2)
    assert (moe.p20, moe.median, moe.p80) == (pytest.approx(16), 25, pytest.approx(34))
    assert moe.mean == 25
    assert moe.kernel_names == ["gemm1", "gemm2"] and moe.streams == ["0"]
    idx = s.nodes["indexer"]
    assert (idx.occurrences, idx.kernels, idx.median, idx.p20, idx.p80) == (4, 8, 7.5, 7.5, 7.5)
    assert idx.kernel_names == ["idx"] and idx.streams == ["1"]
    # layer (0, 0): 0..53; kernels 5 + 5 + 5 + 5.5 + 2 = 22.5; idle 15-45 is a stall, and
    # 50.5-51 is covered by layer 1's input_norm (50-55), so no gap there
    first = s.layers[0]
    assert (first.start, first.end, first.kernel_sum) == (0, 53, 22.5)
    assert [(g.start, g.end) for g in first.stalls] == [(15, 45)]
    assert first.gap_counts == {"launch": 0, "fence": 0, "stall": 1}


def test_summary_needs_layers():
    with pytest.raises(ValueError):
        summarize(Timeline([iv("k", "0", 0, 1, layer=None)], SRC))


def test_percentiles_and_spread():
    assert percentiles([5, 1, 4, 2, 3]) == pytest.approx((1.8, 3.0, 4.2), rel=1e-12)
    assert percentiles([7.0], (50,)) == (7.0,)
    assert spread([9, 10, 12]) == 0.3  # (12 - 9) / 10
    assert spread([4.0, 4.0]) == 0.0
    with pytest.raises(ValueError):
        spread([])
    with pytest.raises(ValueError):
        percentiles([])


def test_summary_writes_as_json(tmp_path):
    path = write_json_atomic(tmp_path / "out" / "summary.json", summarize(planted()))
    data = json.loads(path.read_text())
    assert data["layers"][0]["bubble_by_class"] == {"launch": 0.5, "fence": 1.5, "stall": 3.0}
    assert data["layers"][0]["stalls"][0]["before"]["node"] == "n3"
    assert data["wall"] == {"median": 50, "p20": 50, "p80": 50, "n": 1}
    assert path.read_text().startswith('{\n "source": {\n  "kind": "simulated"')


def test_json_numbers_as_is(tmp_path):
    path = write_json_atomic(tmp_path / "n.json", {"a": 0.1 + 0.2, "b": np.float64(1 / 3),
                                                   "c": np.int64(7)})
    assert json.loads(path.read_text()) == {"a": 0.30000000000000004, "b": 1 / 3, "c": 7}


def test_atomic_write_keeps_old_file_when_json_fails(tmp_path):
    path = tmp_path / "r.json"
    write_json_atomic(path, {"ok": 1})
    before = path.read_bytes()
    with pytest.raises(TypeError):
        write_json_atomic(path, {"bad": object()})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["r.json"]


def test_atomic_write_keeps_old_file_when_rename_fails(tmp_path, monkeypatch):
    path = tmp_path / "r.txt"
    write_atomic(path, "old")
    path.chmod(0o600)

    def boom(*_):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(Failure) as e:  # one message naming the file, the run's failure (not bad input)
        write_atomic(path, "new")
    assert e.value.code == EXIT_ENVIRONMENT and str(e.value) == f"{path}: cannot write: disk gone"
    monkeypatch.undo()
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["r.txt"]
    write_atomic(path, b"new")
    assert path.read_bytes() == b"new" and path.stat().st_mode & 0o777 == 0o600
