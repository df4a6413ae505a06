"""The streaming Kineto loader and the layer segmentation: real traces recorded by others
(../shared/traces) and synthetic ones written here with known answers.

Synthetic timestamps are multiples of 0.5 us, so every derived number is exact in binary
floating point and is asserted with ==.
"""

import gzip
import importlib.util
import json
from pathlib import Path

import pytest

from streamlab.errors import EXIT_BAD_INPUT, Failure
from streamlab.timeline import Interval, Source, Timeline
from streamlab.trace import jsonstream, kineto
from streamlab.trace.formats import load_trace
from streamlab.trace.segment import find_period, load_node_map, map_nodes, segment

SHARED = Path(__file__).parents[2] / "shared" / "traces"  # beside the repository
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"third-party traces not here: {SHARED}")
MI250 = SHARED / "mi250_minitoy_train_ROCm6_2_kineto.json.gz"
EVENT_SYNC = SHARED / "event_sync_trace.json.gz"
TRITON = SHARED / "triton_example.json.gz"
ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
DATA = ROOT / "tests" / "data"  # traces the project recorded itself
H100 = DATA / "h100-a_v4_moe_dual-b4.kineto.json.gz"
T0 = 1_000_000.0  # absolute start of synthetic traces (us), exact in binary

# --- synthetic Kineto traces ----------------------------------------------------------------


def kernel(name, stream, ts, dur, corr, cat="kernel", device=0, tid=None, **args):
    ev = {"ph": "X", "cat": cat, "name": name, "pid": device, "tid": stream if tid is None else tid,
          "ts": ts, "dur": dur,
          "args": {"device": device, "stream": stream, "correlation": corr, **args}}
    if stream is None:
        del ev["args"]["stream"]
    return ev


def runtime(name, ts, dur, corr, cat="cuda_runtime"):
    return {"ph": "X", "cat": cat, "name": name, "pid": 4242, "tid": 4242, "ts": ts, "dur": dur,
            "args": {"correlation": corr, "cbid": 1}}


def kineto_doc(events, device="NVIDIA H100 80GB HBM3", **top):
    return {"schemaVersion": 1,
            "deviceProperties": [{"id": 0, "name": device, "computeMajor": 9}],
            "traceEvents": events, "traceName": "synthetic", **top}


def write(path: Path, doc, gz=True) -> Path:
    data = json.dumps(doc).encode()
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return path


AR = "void vllm::cross_device_reduce_1stage<__hip_bfloat16, 8>(RankData*, RankSignals, Signal*)"
# one decode layer on one stream: (kernel, duration, idle gap after it)
LAYER = [("rmsnorm_kernel", 4.0, 0.5), ("qkv_gemm", 10.0, 0.5), ("attn_decode", 20.0, 3.0),
         ("o_proj_gemm", 8.0, 0.5), (AR, 12.0, 1.5), ("rmsnorm_kernel", 4.0, 0.5),
         ("fused_moe", 30.0, 0.5), (AR, 12.0, 0.5)]
# per layer: kernels 100 us, gaps 7.5 us (launch 6 x 0.5, fence 1.5, stall 3.0): wall 107.5 us
EPILOGUE = [("rmsnorm_kernel", 4.0, 0.5), ("lm_head_gemm", 15.0, 0.5), ("argmax_kernel", 3.0, 0.5)]


def decode_trace(steps=3, layers=6, ar_us=12.0, extra=None, embed_ar=True, graphs=True,
                 stream=7, launch="cudaGraphLaunch", odd_layer=None, gaps=None):
    """`steps` decode steps, each one graph replay (all its kernels carry the correlation id of
    one graph launch): embedding (+ its all-reduce), `layers` layers of LAYER, LM head.
    `gaps`: {(step, layer, kernel index): idle gap after that kernel} overrides."""
    events, t, corr = [], T0, 1000
    for s in range(steps):
        corr += 1
        if graphs:
            events.append(runtime(launch, t - 30.0, 10.0, corr))
        layer = [(n, ar_us if n == AR else d, g) for n, d, g in LAYER]
        if extra is not None:
            layer.insert(4, extra)
        seq = [("embedding_kernel", 5.0, 0.5)] + ([(AR, ar_us, 0.5)] if embed_ar else [])
        for i in range(layers):
            this = [(n, d, (gaps or {}).get((s, i, j), g)) for j, (n, d, g) in enumerate(layer)]
            seq += this + ([("odd_copy_kernel", 1.0, 0.5)] if (s, i) == odd_layer else [])
        seq += EPILOGUE
        for name, dur, gap in seq:
            if not graphs:
                corr += 1
            events.append(kernel(name, stream, t, dur, corr))
            t += dur + gap
        t += 50.0
    return kineto_doc(events)


# --- loader on real traces ------------------------------------------------------------------


@needs_shared
def test_rocm_trace_mi250():
    lt = load_trace(MI250)
    raw = json.loads(gzip.decompress(MI250.read_bytes()))
    dev = [e for e in raw["traceEvents"] if e.get("cat") in ("kernel", "gpu_memcpy")]
    info, tl = lt.info, lt.timeline
    assert info.format == "kineto" and info.tracer == "roctracer"
    assert tl.source == Source("trace", "AMD Radeon Graphics",
                               {"file": MI250.name, "tracer": "roctracer"})
    assert info.events == 220 and info.device_ops == {"kernel": 14, "memcpy": 2}
    assert info.runtime_calls == 21 and info.runtime_by_name == {
        "hipLaunchKernel": 12, "hipGetDevicePropertiesR0600": 4, "hipMemcpyWithStream": 2,
        "hipExtModuleLaunchKernel": 2, "hipDeviceSynchronize": 1}  # 12 + 2 launches: 14 kernels
    assert info.flows == 45 and info.devices == ["2"] and tl.streams == ["0"]
    assert (info.same_stream_overlaps, info.missing_stream, info.graph_launches) == (0, 0, 0)
    origin = min(e["ts"] for e in dev)
    assert [(iv.name, iv.start, iv.duration) for iv in tl.intervals] == [
        (e["name"], e["ts"] - origin, pytest.approx(e["dur"], abs=1e-6))
        for e in sorted(dev, key=lambda e: e["ts"])]
    assert [iv.kind for iv in tl.intervals[:2]] == ["memcpy", "kernel"]


@needs_shared
def test_cuda_multi_stream_sync_trace():
    lt = load_trace(EVENT_SYNC)
    info, tl = lt.info, lt.timeline
    assert info.tracer == "cupti" and tl.source.device == "NVIDIA A100-PG509-200"
    assert info.syncs == {"Event Sync": 3, "Stream Wait Event": 1, "Context Sync": 1}
    assert info.stream_waits == {"24 <- 20": 1}
    assert info.device_ops == {"kernel": 3, "memset": 3} and info.runtime_calls == 39
    assert tl.streams == ["20", "24", "28"]
    # CUPTI stamps are whole microseconds here: exact
    assert [(iv.name, iv.stream, iv.start, iv.end) for iv in tl.intervals] == [
        ("Memset (Device)", "20", 0.0, 1.0), ("ampere_sgemm_128x64_nn", "20", 33.0, 156.0),
        ("Memset (Device)", "28", 414.0, 415.0), ("ampere_sgemm_128x64_nn", "28", 430.0, 553.0),
        ("Memset (Device)", "24", 19367.0, 19368.0),
        ("ampere_sgemm_128x64_nn", "24", 19383.0, 19506.0)]


@needs_shared
def test_cuda_driver_launch_trace():
    lt = load_trace(TRITON)
    assert lt.info.runtime_by_name == {"cuLaunchKernel": 1, "cudaDeviceSynchronize": 1}
    assert [(iv.name, iv.stream, iv.start, iv.end) for iv in lt.timeline.intervals] == [
        ("triton_poi_fused_add_cos_sin_0", "7", 0.0, pytest.approx(1.76, abs=1e-9))]


@needs_shared
def test_tiny_chunks_give_the_same_timeline(monkeypatch):
    """Events, strings and numbers cut at every possible chunk boundary."""
    whole = {p: load_trace(p) for p in (MI250, EVENT_SYNC, TRITON)}
    monkeypatch.setattr(jsonstream, "CHUNK", 7)
    for p, lt in whole.items():
        again = load_trace(p)
        assert again.timeline == lt.timeline and again.info == lt.info


# --- loader quirks on synthetic traces ------------------------------------------------------


def test_graph_replays_share_correlation_ids(tmp_path):
    lt = load_trace(write(tmp_path / "t.json.gz", decode_trace()))
    info = lt.info
    per_step = 2 + 6 * 8 + 3
    assert info.graph_launches == 3 and info.runtime_by_name == {"cudaGraphLaunch": 3}
    assert info.shared_correlations == 3
    assert [n for _, _, n in info.replays] == [per_step] * 3
    assert info.replays[0][0] == 0.0
    assert info.device_ops == {"kernel": 3 * (per_step - 13), "allreduce": 3 * 13}
    assert info.tracer == "cupti" and lt.timeline.streams == ["7"]


def test_hip_graph_launch_and_rocm_detection(tmp_path):
    doc = decode_trace(steps=2, launch="hipGraphLaunch")
    doc["deviceProperties"][0]["name"] = "AMD Instinct MI355X"
    lt = load_trace(write(tmp_path / "r.json.gz", doc))
    assert lt.info.tracer == "roctracer" and lt.info.graph_launches == 2
    assert lt.timeline.source.detail == {"file": "r.json.gz", "tracer": "roctracer"}
    assert lt.timeline.source.device == "AMD Instinct MI355X"


def test_same_stream_overlap_clipped_and_counted(tmp_path):
    events = [kernel("a", 3, T0, 10.0, 1), kernel("b", 3, T0 + 9.0, 5.0, 2),  # b starts 1 us early
              kernel("c", 3, T0 + 14.0, 2.0, 3),  # touches b: no overlap
              kernel("d", 3, T0 + 14.5, 0.5, 4),  # inside c: c clipped by 1.5
              kernel("e", 5, T0 + 2.0, 4.0, 5),  # another stream: never clipped
              kernel("f", 3, T0 + 20.0, -3.0, 6)]  # negative duration
    path = write(tmp_path / "o.json", kineto_doc(events), gz=False)
    lt = load_trace(path)
    assert [(iv.name, iv.start, iv.end) for iv in lt.timeline.intervals] == [
        ("a", 0.0, 9.0), ("e", 2.0, 6.0), ("b", 9.0, 14.0), ("c", 14.0, 14.5),
        ("d", 14.5, 15.0), ("f", 20.0, 20.0)]
    info = lt.info
    assert (info.same_stream_overlaps, info.overlap_clipped_us, info.max_overlap_us) == (2, 2.5, 1.5)
    assert info.negative_durations == 1
    assert lt.timeline.source.detail["same-stream overlaps clipped"] == 2
    raw = load_trace(path, clip=False)
    assert [iv.end for iv in raw.timeline.intervals][:3] == [10.0, 6.0, 14.0]
    assert raw.info.same_stream_overlaps == 0


def test_missing_stream_ids_fall_back_to_tid(tmp_path):
    events = [kernel("a", None, T0, 2.0, 1, tid=11), kernel("b", None, T0 + 2.5, 2.0, 2, tid=11),
              kernel("c", 13, T0 + 1.0, 1.0, 3), kernel("m", None, T0 + 5.0, 1.0, 4, tid=12,
                                                          cat="gpu_memset")]
    lt = load_trace(write(tmp_path / "s.json.gz", kineto_doc(events)))
    assert [(iv.name, iv.stream, iv.kind) for iv in lt.timeline.intervals] == [
        ("a", "11", "kernel"), ("c", "13", "kernel"), ("b", "11", "kernel"), ("m", "12", "memset")]
    assert lt.info.missing_stream == 3
    assert lt.timeline.source.detail["missing stream ids"] == 3


def test_allreduce_kind_by_name(tmp_path):
    names = ["ncclDevKernel_AllReduce_Sum_bf16_RING_LL", "void vllm::cross_device_reduce_2stage<>",
             "one_shot_all_reduce_kernel", "allreduce_fusion_kernel_oneshot_lamport",
             "ncclDevKernel_AllGather_RING_LL", "void at::native::reduce_kernel<512, 1>",
             "reduce_scatter_kernel"]
    events = [kernel(n, 7, T0 + 10 * i, 1.0, i) for i, n in enumerate(names)]
    lt = load_trace(write(tmp_path / "ar.json.gz", kineto_doc(events)))
    assert [iv.kind for iv in lt.timeline.intervals] == ["allreduce"] * 4 + ["kernel"] * 3


def test_array_format_and_trailing_comma(tmp_path):
    evs = [kernel("a", 1, T0, 1.0, 1), kernel("b", 1, T0 + 2.0, 1.0, 2)]
    text = "[" + ",\n".join(json.dumps(e) for e in evs)  # the closing ] is optional
    (tmp_path / "a.json").write_text(text)
    assert [iv.name for iv in load_trace(tmp_path / "a.json").timeline.intervals] == ["a", "b"]
    (tmp_path / "b.json").write_text(
        '{"traceEvents": [' + ", ".join(json.dumps(e) for e in evs) + ",]}")
    assert len(load_trace(tmp_path / "b.json").timeline.intervals) == 2


# --- the vectorised scanner reads what json reads ---------------------------------------

# Events that make reading fields from raw bytes hard, each written as shown (the spacing is
# part of the test). Loading them through the scanner must give exactly what json gives.
TRICKY = [
    # braces, brackets, escaped quotes, backslashes and a key-like text inside a name
    '{"ph": "X", "cat": "kernel", "name": "void f<\\"a\\">{lambda()#1}[2] \\\\ \\"ts\\": 1",'
    ' "pid": 0, "tid": 7, "ts": 1000000.5, "dur": 2.5,'
    ' "args": {"device": 0, "stream": 7, "correlation": 11, "grid": [1, 2, 3]}}',
    # the category of a device operation inside another field, and keys inside args
    '{"ph": "X", "cat": "cpu_op", "name": "kernel", "pid": 1, "tid": 1, "ts": 1000001,'
    ' "dur": 1, "args": {"cat": "kernel", "ts": 5, "stream": 9, "name": "x"}}',
    # keys in another order, no space after ':'; a string value "ts" before a newline
    '{"args":{"correlation":12,"stream":7,"device":0},"dur":1.25,"name":"reordered",'
    '"ts":1000003.0,"cat":"kernel","ph":"X","tid":7,"pid":0}',
    '{"ph": "X", "cat": "cpu_op", "ts": 1000002, "dur": 1, "name": "ts"\n}',
    # white space before ':' and two spaces after it: read by json
    '{"ph" : "X", "cat": "kernel", "name":  "spaced", "ts": 1000004, "dur": 1,'
    ' "args": {"device": 0, "stream": 7, "correlation": 13}}',
    # a second nested object, objects in an array, a duplicate key (json keeps the last)
    '{"ph": "X", "cat": "kernel", "name": "nested", "ts": 1000005, "dur": 1, "x": {"ts": 1},'
    ' "args": {"device": 0, "stream": 7, "correlation": 14, "l": [{"stream": 3}]}}',
    '{"ph": "X", "cat": "kernel", "name": "twice", "ts": 1, "ts": 1000006, "dur": 1,'
    ' "args": {"device": 0, "stream": 7, "correlation": 15}}',
    # escapes in a category, a phase, a runtime name; a graph launch; a stream given as text
    '{"ph": "\\u0058", "cat": "kern\\u0065l", "name": "escaped cat", "ts": 1000007, "dur": 1,'
    ' "args": {"device": 0, "stream": "7", "correlation": 16}}',
    '{"ph": "X", "cat": "cuda_runtime", "name": "cuda\\u004caunchKernel", "ts": 1000008,'
    ' "dur": 1, "args": {"correlation": 17}}',
    '{"ph": "X", "cat": "cuda_runtime", "name": "cudaGraphLaunch", "ts": 1000009, "dur": 1,'
    ' "args": {"correlation": 18}}',
    # text that is not ASCII, raw and escaped; exponents; a negative duration; no device id
    '{"ph": "X", "cat": "kernel", "name": "k\u00e9rnel \\u00e9", "pid": 0, "tid": 7,'
    ' "ts": 1000009.5, "dur": 0.5, "args": {"device": 0, "stream": 7, "correlation": 21}}',
    '{"ph": "X", "cat": "gpu_memcpy", "name": "Memcpy \u00e9t\\u00e9 \u2192", "pid": 0,'
    ' "ts": 1.000010e6, "dur": -1, "args": {"stream": 7, "correlation": 19}}',
    # args that are not an object: no stream, the tid stands in
    '{"ph": "X", "cat": "kernel", "name": "no args", "tid": 5, "ts": 1000011, "dur": 1,'
    ' "args": 3}',
    # flows, a sync, metadata, an instant, elements that are not objects, empty strings
    '{"ph": "s", "id": 1, "ts": 1000012, "cat": "ac2g", "name": ""}',
    '{"ph": "f", "id": 1, "ts": 1000013, "cat": "", "name": "ac2g", "bp": "e"}',
    '{"ph": "X", "cat": "cuda_sync", "name": "Stream Wait Event", "ts": 1000014, "dur": 1,'
    ' "args": {"cuda_sync_kind": "Stream Wait Event", "stream": 7, "wait_on_stream": 9}}',
    '{"name": "thread_name", "ph": "M", "pid": 0, "tid": 7, "args": {"name": "stream 7 "\n}}',
    '5', '"x"', '{}',
    '{"ph": "X", "cat": "kernel", "name": "last", "pid": 0, "tid": 7, "ts": 1000020, "dur": 1,'
    ' "args": {"device": 0, "stream": 7, "correlation": 20}}',
]
SEPARATORS = [",\n  ", ", ", ",", " ,\n\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t "]


def tricky_trace(path: Path, repeat: int = 3) -> Path:
    """The TRICKY events `repeat` times over, with every separator in turn."""
    events = [e for _ in range(repeat) for e in TRICKY]
    body = "".join(SEPARATORS[i % len(SEPARATORS)] + e if i else e for i, e in enumerate(events))
    path.write_text('{"schemaVersion": 1, "traceEvents": [\n  ' + body + "\n]}\n", "utf-8")
    return path


def _json_only(monkeypatch, path):
    with monkeypatch.context() as m:
        m.setattr(jsonstream.JsonStream, "_take", lambda self, sink: 0)
        return load_trace(path)


@pytest.mark.parametrize("chunk", [7, 100, 1 << 20])
def test_scanner_reads_what_json_reads(tmp_path, monkeypatch, chunk):
    """Events cut at chunk boundaries anywhere, the tricky ones above: the same Timeline and
    the same counts as decoding every event with json."""
    path = tricky_trace(tmp_path / "t.json")
    expected = _json_only(monkeypatch, path)
    monkeypatch.setattr(jsonstream, "CHUNK", chunk)
    got = load_trace(path)
    assert got.timeline == expected.timeline and got.info == expected.info
    assert len(got.timeline.intervals) == 3 * 10 and got.info.flows == 6
    assert got.info.runtime_by_name == {"cudaLaunchKernel": 3, "cudaGraphLaunch": 3}
    assert {iv.name for iv in got.timeline.intervals} >= {
        "void f<\"a\">{lambda()#1}[2] \\ \"ts\": 1", "twice", "k\u00e9rnel \u00e9",
        "Memcpy \u00e9t\u00e9 \u2192"}


def test_scanner_takes_the_events_of_a_real_trace(monkeypatch):
    """Our own H100 trace: json decodes next to none of its events (the graph launches and
    the event at each block's end), the scanner the rest."""
    decoded = []
    add = kineto._Collector.add
    monkeypatch.setattr(kineto._Collector, "add",
                        lambda self, ev, seq: decoded.append(ev) or add(self, ev, seq))
    lt = load_trace(H100)
    assert lt.info.events == 10702 and lt.info.device_ops == {"kernel": 3520, "memcpy": 32}
    assert len(decoded) <= lt.info.graph_launches + 2


def test_bench_trace_repeats_the_whole_trace(tmp_path):
    """bench/trace_bench.py's big trace: every event of ours again per copy, later by the
    trace's span, with ids of its own (each graph replay stays its own)."""
    spec = importlib.util.spec_from_file_location("trace_bench", BENCH / "trace_bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    built = bench.build(H100, tmp_path / "big.json", size_mb=7)
    one, three = load_trace(H100), load_trace(tmp_path / "big.json")
    assert built["repetitions"] == 3 and built["events"] == 3 * 10632 + 70
    info = three.info
    assert info.events == built["events"] and info.flows == 3 * one.info.flows
    assert info.device_ops == {k: 3 * v for k, v in one.info.device_ops.items()}
    assert info.runtime_by_name == {k: 3 * v for k, v in one.info.runtime_by_name.items()}
    assert len(info.replays) == 3 * len(one.info.replays) == 60
    first = one.timeline.intervals
    for copy in range(3):
        again = three.timeline.intervals[copy * len(first):(copy + 1) * len(first)]
        assert [iv.name for iv in again] == [iv.name for iv in first]
        assert [iv.start - copy * built["period_us"] for iv in again] == pytest.approx(
            [iv.start for iv in first], abs=1e-6)


# --- bad input: one clear message --------------------------------------------------------


def _fails(path) -> str:
    with pytest.raises(Failure) as e:
        load_trace(path)
    assert e.value.code == EXIT_BAD_INPUT
    assert "\n" not in str(e.value)
    return str(e.value)


def test_truncated_gzip(tmp_path):
    full = gzip.compress(json.dumps(decode_trace()).encode(), mtime=0)
    path = tmp_path / "cut.trace.json.gz"
    path.write_bytes(full[: len(full) // 2])
    msg = _fails(path)
    assert msg.startswith(f"{path}: the gzip stream is truncated")
    assert "decompressed bytes" in msg and "(in traceEvents[" in msg


def test_truncated_json_inside_an_event(tmp_path):
    text = json.dumps(kineto_doc([kernel("a", 1, T0, 1.0, 1), kernel("b", 1, T0 + 2, 1.0, 2)]))
    cut = text.index('"name": "b"') + 5
    path = tmp_path / "cut.json"
    path.write_text(text[:cut])
    assert _fails(path) == (f"{path}: the file ends inside traceEvents[1] at decompressed offset "
                            f"{cut:,}: truncated (was the profiler still writing it, or the copy "
                            "cut short?)")
    # cut between events, and after the array
    path.write_text(text[: text.index("}, {") + 1])
    assert "ends inside traceEvents[1]" in _fails(path)
    path.write_text(text[: text.index(', "traceName"')])
    assert "ends before the JSON is complete" in _fails(path)


def test_malformed_json_names_the_event_and_offset(tmp_path):
    good = [json.dumps(kernel(n, 1, T0 + i, 1.0, i)) for i, n in enumerate("abc")]
    bad = good[2].replace('"ts": ', '"ts": 1.0.')
    text = '{"traceEvents": [' + ", ".join(good[:2] + [bad]) + "]}"
    path = tmp_path / "bad.json"
    path.write_text(text)
    off = text.index("1.0.") + 3
    assert _fails(path) == (f"{path}: malformed JSON: Expecting ',' delimiter (at decompressed "
                            f"offset {off:,}, traceEvents[2]); not a complete Chrome/Kineto trace")
    # a missing comma between two events
    text = '{"traceEvents": [' + good[0] + " " + good[1] + "]}"
    path.write_text(text)
    assert "expected ',' or ']' after traceEvents[0], found '{'" in _fails(path)
    for content, words in [("", "the file is empty"), ("hello", "starts with 'h'"),
                           ('{"traceEvents": 3}', "expected traceEvents to be an array"),
                           ('{"schemaVersion": 1}', "no traceEvents array"),
                           ('{"traceEvents": []} x', "data after the end")]:
        path.write_text(content)
        assert words in _fails(path)
    path.write_bytes(b'{"traceEvents": [{"name": "\xff\xfe"}]}')
    assert "not UTF-8" in _fails(path)
    assert "cannot read the trace" in _fails(tmp_path / "missing.json.gz")


def test_event_without_timestamp(tmp_path):
    path = write(tmp_path / "n.json", kineto_doc([{"ph": "X", "cat": "kernel", "name": "k"}]), False)
    assert "bad event: a kernel event without a numeric ts/dur" in _fails(path)


# --- segmentation ---------------------------------------------------------------------------


def test_find_period():
    seq = [9] + [1, 2, 3, 1, 4, 5, 6] * 20 + [7, 8]
    assert find_period(seq) == 7
    assert find_period([1, 2] * 3 + [5]) == 2
    assert find_period(list(range(100))) is None
    assert find_period([4] * 30) == 1


def test_allreduce_layers_restart_at_each_graph_replay(tmp_path):
    lt = load_trace(write(tmp_path / "d.json.gz", decode_trace()))
    seg = segment(lt.timeline, replays=lt.info.replays)
    assert (seg.method, seg.ars_per_layer, seg.ar_offset) == ("allreduce", 2, 1)
    assert seg.found == 3 * 7 and seg.steady == 15
    assert seg.dropped == {"first of a step (prologue)": 3, "after the last full layer (epilogue)": 3}
    tl = seg.timeline
    assert [round(e - s, 6) for s, e in tl.layers] == [107.5] * 15
    for k in range(15):
        names = [iv.name for iv in tl.in_layer(k)]
        assert names == [n for n, _, _ in LAYER]
    assert sum(iv.layer is None for iv in tl.intervals) == 3 * (2 + 8 + 3)


def test_allreduce_offset_and_eager_trace(tmp_path):
    # no graph launches: counting starts at the first all-reduce of the trace, offset 0
    lt = load_trace(write(tmp_path / "e.json.gz", decode_trace(embed_ar=False, graphs=False)))
    assert lt.info.replays == []
    seg = segment(lt.timeline, replays=lt.info.replays)
    assert seg.ar_offset == 0
    # 18 layers in one run: the first holds the embedding, the last two of a step and the first
    # of the next hold the LM head and embedding: 2 such irregular ones, plus the epilogue
    assert seg.found == 18 + 1 and seg.steady == 15
    assert seg.dropped == {"first of a step (prologue)": 1, "kernel count other than 8": 2,
                           "after the last full layer (epilogue)": 1}
    walls = sorted(e - s for s, e in seg.timeline.layers)
    assert walls == [107.5] * 15


def test_irregular_layer_dropped(tmp_path):
    lt = load_trace(write(tmp_path / "i.json.gz", decode_trace(odd_layer=(1, 3))))
    seg = segment(lt.timeline, replays=lt.info.replays)
    assert seg.steady == 14 and seg.dropped["kernel count other than 8"] == 1


def test_ars_per_layer_option(tmp_path):
    lt = load_trace(write(tmp_path / "d.json.gz", decode_trace()))
    seg = segment(lt.timeline, replays=lt.info.replays, ars_per_layer=4)
    # 13 all-reduces per step, offset 13 % 4 = 1: windows of two layers, L2-L3 and L4-L5 steady
    assert seg.found == 3 * 4 and seg.ar_offset == 1 and seg.steady == 6
    assert {e - s for s, e in seg.timeline.layers} == {215.0}
    seg = segment(lt.timeline, replays=lt.info.replays, ars_per_layer=4, ar_offset=0)
    assert seg.ar_offset == 0 and seg.found == 3 * 4 and seg.steady == 6
    with pytest.raises(Failure, match="no all-reduce kernels"):
        segment(load_trace(write(tmp_path / "p.json.gz", pattern_trace())).timeline, ars_per_layer=2)
    with pytest.raises(Failure, match="at least 1"):
        segment(lt.timeline, ars_per_layer=0)


P_LAYER = [("norm", 3.0, 0.5), ("qkv", 9.0, 0.5), ("rope", 2.0, 0.5), ("attn", 16.0, 0.5),
           ("oproj", 7.0, 2.5), ("norm", 3.0, 0.5), ("mlp", 20.0, 0.5)]
# main stream: kernels 60 us, gaps 5.5 (launch 6 x 0.5, stall 2.5 after oproj): wall 65.5;
# plus "topk" on stream 9, 5 us inside attn: kernel sum 65, busy 60


def pattern_trace(steps=2, layers=10):
    """TP 1, eager (one correlation id per kernel, no graph launch): no all-reduce."""
    events, t, corr = [], T0, 0
    for _ in range(steps):
        seq = [("embed", 4.0, 0.5)] + P_LAYER * layers + [("norm", 3.0, 0.5), ("lm_head", 12.0, 0.5),
                                                          ("argmax", 2.0, 0.5)]
        for name, dur, gap in seq:
            corr += 1
            events.append(kernel(name, 7, t, dur, corr))
            if name == "attn":
                corr += 1
                events.append(kernel("topk", 9, t + 1.0, 5.0, corr))
            t += dur + gap
        t += 100.0
    return kineto_doc(events)


def test_pattern_layers(tmp_path):
    lt = load_trace(write(tmp_path / "p.json.gz", pattern_trace()))
    seg = segment(lt.timeline, replays=lt.info.replays)
    assert (seg.method, seg.period) == ("pattern", 8)  # topk on stream 9 counts: all streams
    assert seg.description == "the kernel sequence of all streams (in start order) repeats every 8 kernels"
    assert seg.found == 20 and seg.steady == 20 and seg.dropped == {}
    walls = [e - s for s, e in seg.timeline.layers]
    # the last layer of a step ends at its last kernel: no trailing 0.5 us gap
    assert walls == ([65.5] * 9 + [65.0]) * 2
    for k in range(20):
        assert [iv.name for iv in seg.timeline.in_layer(k)] == [
            "norm", "qkv", "rope", "attn", "topk", "oproj", "norm", "mlp"]


def test_regex_layers(tmp_path):
    lt = load_trace(write(tmp_path / "p.json.gz", pattern_trace()))
    seg = segment(lt.timeline, layer_regex="^qkv$")
    assert seg.method == "regex" and seg.found == 20 and seg.steady == 18
    assert seg.dropped == {"after the last full layer (epilogue)": 1, "kernel count other than 8": 1}
    assert [iv.name for iv in seg.timeline.in_layer(0)] == [
        "qkv", "rope", "attn", "topk", "oproj", "norm", "mlp", "norm"]
    assert {e - s for s, e in seg.timeline.layers} == {65.5}
    with pytest.raises(Failure, match="matches no kernel"):
        segment(lt.timeline, layer_regex="nothing_like_this")
    with pytest.raises(Failure, match="not a valid regular expression"):
        segment(lt.timeline, layer_regex="(")


def test_no_structure_is_one_window():
    tl = Timeline([Interval("a", "1", 0.0, 1.0), Interval("b", "1", 3.0, 4.0)], Source("trace"))
    seg = segment(tl)
    assert seg.method == "whole" and seg.steady == 1 and seg.timeline.layers == [(0.0, 4.0)]


NODES_YAML = """
input_norm: [rmsnorm]
post_norm: rmsnorm
attn: ["^attn"]
allreduce_attn: [cross_device_reduce]
allreduce_moe: [cross_device_reduce]
moe: [fused_moe, "^moe_"]
"""


def test_node_map_assigns_repeated_names_in_order(tmp_path):
    (tmp_path / "nodes.yaml").write_text(NODES_YAML)
    nm = load_node_map(tmp_path / "nodes.yaml")
    lt = load_trace(write(tmp_path / "d.json.gz", decode_trace()))
    seg = segment(lt.timeline, replays=lt.info.replays, node_map=nm)
    for k in (0, 7, 14):
        assert [iv.node for iv in seg.timeline.in_layer(k)] == [
            "input_norm", None, "attn", None, "allreduce_attn", "post_norm", "moe",
            "allreduce_moe"]
    again = map_nodes(seg.timeline, nm)
    assert again.intervals == seg.timeline.intervals


def test_node_map_errors(tmp_path):
    p = tmp_path / "n.yaml"
    for text, words in [("[1, 2]", "expected a mapping"), ("a: [1]", "expected a regex"),
                        ("a: ['(']", "not a valid regex"), ("a: [b", "not valid YAML")]:
        p.write_text(text)
        with pytest.raises(Failure, match=words.replace("(", r"\(")) as e:
            load_node_map(p)
        assert e.value.code == EXIT_BAD_INPUT and str(e.value).startswith(str(p))
