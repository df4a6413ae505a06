"""Chrome trace export: the event layout Perfetto needs, and an exact round trip."""

import gzip
import json

from streamlab.trace import from_chrome, read_chrome, to_chrome, write_chrome
from streamlab.timeline import Interval, Source, Timeline


def sample() -> Timeline:
    # awkward floats on purpose: the round trip must not lose a bit
    return Timeline([
        Interval("Cijk_gemm", "0", 0.1, 5.3, node="q_b_proj", layer=0),
        Interval("idx_kernel", "7", 0.3, 2.2, node="indexer_k", layer=0),
        Interval("memset", "0", 5.3, 5.4, kind="memset"),
        Interval("rmsnorm", "7", 2.797, 7.389, node="q_a_norm", layer=0),  # ts + dur != end
        Interval("cross_device_reduce_1stage<bf16,8>", "0", 1e6 + 0.1, 1e6 + 18.2,
                 node="allreduce_attn", layer=1, kind="allreduce"),
    ], Source("measured", "MI355X", {"rocm": "7.0", "tp": 8}),
        layers=[(0.0, 6.0), (1e6, 1e6 + 20.0)])


def test_event_layout():
    tr = to_chrome(sample())
    assert tr["displayTimeUnit"] == "ns"
    assert tr["otherData"] == {"source": {"kind": "measured", "device": "MI355X",
                                          "detail": {"rocm": "7.0", "tp": 8}}}
    ev = tr["traceEvents"]
    meta = {(e["name"], e["tid"]): e["args"] for e in ev if e["ph"] == "M"}
    assert meta[("process_name", 0)] == {"name": "measured on MI355X (rocm 7.0, tp 8)"}
    assert meta[("thread_name", 1)] == {"name": "stream 0"}
    assert meta[("thread_name", 2)] == {"name": "stream 7"}
    assert meta[("thread_name", 3)] == {"name": "layers"}
    assert meta[("thread_sort_index", 3)] == {"sort_index": 0}
    xs = [e for e in ev if e["ph"] == "X"]
    assert len(xs) == 7 and {e["pid"] for e in ev} == {1}
    layers = [e for e in xs if e["tid"] == 3]
    assert [(e["name"], e["cat"], e["ts"], e["dur"]) for e in layers] == [
        ("layer 0", "layer", 0.0, 6.0), ("layer 1", "layer", 1e6, 20.0)]
    kernels = [e for e in xs if e["tid"] != 3]
    assert [(e["name"], e["tid"], e["ts"], e["cat"]) for e in kernels] == [
        ("q_b_proj", 1, 0.1, "kernel"), ("indexer_k", 2, 0.3, "kernel"),
        ("q_a_norm", 2, 2.797, "kernel"), ("memset", 1, 5.3, "memset"),
        ("allreduce_attn", 1, 1e6 + 0.1, "allreduce")]
    assert kernels[0]["dur"] == 5.3 - 0.1
    assert kernels[0]["args"] == {"kernel": "Cijk_gemm", "node": "q_b_proj", "layer": 0,
                                  "kind": "kernel", "stream": "0", "end": 5.3}
    assert kernels[3]["args"]["node"] is None and kernels[3]["args"]["layer"] is None


def test_round_trip_exact():
    tl = sample()
    back = from_chrome(json.loads(json.dumps(to_chrome(tl))))
    assert back == tl
    assert back.layers == [(0.0, 6.0), (1e6, 1e6 + 20.0)]


def test_end_read_from_args_not_from_ts_plus_dur():
    """ts + dur can miss the end in the last bit (2.797 + (7.389 - 2.797) is not 7.389): the
    reader takes args.end, so an event whose ts + dur says otherwise keeps the end it carries."""
    doc = json.loads(json.dumps(to_chrome(sample())))
    norm = next(e for e in doc["traceEvents"] if e.get("name") == "q_a_norm")
    assert norm["ts"] + norm["dur"] != norm["args"]["end"]
    norm["args"]["end"] = 9.25
    assert [iv.end for iv in from_chrome(doc).intervals if iv.node == "q_a_norm"] == [9.25]


def test_write_and_read_gzip(tmp_path):
    tl = sample()
    path = write_chrome(tl, tmp_path / "t" / "trace.json.gz")
    raw = path.read_bytes()
    assert raw[:2] == b"\x1f\x8b" and raw[4:8] == b"\0\0\0\0"  # gzip mtime 0
    assert json.loads(gzip.decompress(raw)) == to_chrome(tl)
    assert read_chrome(path) == tl
    assert write_chrome(tl, tmp_path / "again.json.gz").read_bytes() == raw  # deterministic


def test_write_plain_json(tmp_path):
    path = write_chrome(sample(), tmp_path / "trace.json")
    assert json.loads(path.read_text())["displayTimeUnit"] == "ns"
    assert read_chrome(path) == sample()
