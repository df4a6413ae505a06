"""Every trace format reads to the same Timeline: rocpd, Nsight Systems, rocprofv3 JSON / CSV and
Perfetto files written here from the tools' documented schemas (tests/trace_writers.py) carry
the same operations as a synthetic Kineto decode trace and must give its numbers; the format is
told from the content; several GPUs are summarised one at a time; bad input ends in one message.
"""

import gzip
import json
import sqlite3

import numpy as np
import pytest
from typer.testing import CliRunner

from streamlab.errors import EXIT_BAD_INPUT, EXIT_NOT_A_STEP, Failure
from streamlab.trace.cli import app
from streamlab.trace.formats import FORMATS, load_trace
from streamlab.trace.summary import summarize_trace
from tests.test_trace_kineto import T0, decode_trace, kernel, kineto_doc, runtime, write
from tests.trace_writers import (
    Op,
    Program,
    from_kineto,
    write_nsys,
    write_pftrace,
    write_rocpd,
    write_rocprof_csv,
    write_rocprof_json,
)

runner = CliRunner()
WRITERS = {"rocpd": (write_rocpd, "r.db"), "nsys-sqlite": (write_nsys, "report.sqlite"),
           "rocprofv3-json": (write_rocprof_json, "908_results.json.gz"),
           "rocprofv3-csv": (write_rocprof_csv, "908_kernel_trace.csv"),
           "pftrace": (write_pftrace, "908_results.pftrace")}


def _written(tmp_path, fmt, program, name=None):
    writer, default = WRITERS[fmt]
    return writer(tmp_path / (name or default), program)


def _rows(tl):
    return [(iv.name, iv.stream, iv.start, iv.end, iv.kind) for iv in tl.intervals]


@pytest.mark.parametrize("fmt", list(WRITERS))
def test_every_format_reads_the_kineto_trace_s_operations(tmp_path, fmt):
    doc = decode_trace()
    kineto = load_trace(write(tmp_path / "k.json.gz", doc))
    path = _written(tmp_path, fmt, from_kineto(doc), name="no-telling-suffix.bin")
    got = load_trace(path)
    assert got.info.format == fmt and got.info.schema == FORMATS[fmt].schema
    assert _rows(got.timeline) == _rows(kineto.timeline)  # 0.5 us steps: exact in ns and us
    assert got.info.device_ops == kineto.info.device_ops == {"kernel": 120, "allreduce": 39}
    report, base = summarize_trace(path).summary, summarize_trace(tmp_path / "k.json.gz").summary
    if fmt == "rocprofv3-csv":  # no API records: graph replays unknown, eager counting
        assert got.info.replays == [] and report.layers.method == "allreduce"
        return
    assert [n for _, _, n in got.info.replays] == [53, 53, 53]
    assert (report.steady_layers, report.per_layer.wall_us.median) == (base.steady_layers, 107.5) \
        == (15, 107.5)
    assert report.per_step.steps == 3 and report.per_step.layers.median == 5  # + 1: the embedding
    assert report.allreduce_per_call_us == base.allreduce_per_call_us


def test_device_names_queues_and_streams(tmp_path):
    ops = [Op("k_a", 5, 1000, 3000, 1, queue=7), Op("k_b", 9, 2000, 6000, 2, queue=7),
           Op("k_a", 5, 7000, 8000, 3, queue=8)]
    for fmt in ("rocpd", "rocprofv3-json", "rocprofv3-csv", "pftrace"):
        lt = load_trace(_written(tmp_path, fmt, Program(ops)))
        assert [(iv.name, iv.stream, iv.start, iv.end) for iv in lt.timeline.intervals] == [
            ("k_a", "5", 0.0, 2.0), ("k_b", "9", 1.0, 5.0), ("k_a", "5", 6.0, 7.0)], fmt
        assert [lt.ops.queues[q] for q in lt.ops.queue] == ["7", "7", "8"], fmt
        r = summarize_trace(lt.info.path).summary
        assert [(q.queue, q.ops, q.streams) for q in r.hardware_queues] == [
            ("7", 2, ("5", "9")), ("8", 1, ("5",))], fmt
    assert load_trace(tmp_path / WRITERS["rocpd"][1]).info.device == "AMD Instinct MI355X"


def test_several_gpus_one_at_a_time(tmp_path):
    ops = [Op("a", 1, 0, 10_000, 1, gpu=0), Op("b", 1, 0, 2_000, 2, gpu=1),
           Op("c", 1, 5_000, 6_000, 3, gpu=1)]
    path = write_rocpd(tmp_path / "two.db", Program(ops))
    lt = load_trace(path)
    assert [(g.id, g.ops, g.busy_us) for g in lt.info.gpus] == [("0", 1, 10.0), ("1", 2, 3.0)]
    assert lt.info.devices == ["0"] and [iv.name for iv in lt.timeline.intervals] == ["a"]
    assert lt.info.gpu_choice.startswith("GPU 0 (AMD Instinct MI355X): the GPU with the most")
    other = load_trace(path, gpu="1")
    assert [iv.name for iv in other.timeline.intervals] == ["b", "c"]
    assert other.timeline.source.detail["gpu"] == "1"
    with pytest.raises(Failure, match=r"--gpu 5: no device operations on that GPU; GPUs with "
                                      r"work: 0 \(1 operations\), 1 \(2 operations\)"):
        load_trace(path, gpu="5")


def test_rocpd_track_and_timestamp_layout(tmp_path):
    """The newer rocpd layout: dispatches name a track and timestamp rows, not values."""
    path = tmp_path / "t.db"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE rocpd_string_00ab (id INTEGER PRIMARY KEY, guid TEXT, string TEXT);
        CREATE TABLE rocpd_info_agent_00ab (id INTEGER PRIMARY KEY, type TEXT, type_index INTEGER,
            product_name TEXT, name TEXT);
        CREATE TABLE rocpd_info_kernel_symbol_00ab (id INTEGER PRIMARY KEY, kernel_name TEXT,
            display_name TEXT);
        CREATE TABLE rocpd_track_00ab (id INTEGER PRIMARY KEY, agent_id INTEGER, queue_id INTEGER,
            stream_id INTEGER);
        CREATE TABLE rocpd_timestamp_00ab (id INTEGER PRIMARY KEY, value BIGINT, phase INTEGER);
        CREATE TABLE rocpd_kernel_dispatch_00ab (id INTEGER PRIMARY KEY, track_id INTEGER,
            kernel_id INTEGER, dispatch_id INTEGER, start_id INTEGER, end_id INTEGER);
        INSERT INTO rocpd_info_agent_00ab VALUES (1, 'GPU', 0, 'AMD Instinct MI300X', 'gfx942');
        INSERT INTO rocpd_info_kernel_symbol_00ab VALUES (1, 'gemm.kd', NULL);
        INSERT INTO rocpd_track_00ab VALUES (1, 1, 4, 2);
        INSERT INTO rocpd_timestamp_00ab VALUES (1, 5000, 1), (2, 9000, 2), (3, 12000, 1), (4, 13000, 2);
        INSERT INTO rocpd_kernel_dispatch_00ab VALUES (1, 1, 1, 1, 1, 2), (2, 1, 1, 2, 3, 4);
    """)
    db.commit()
    db.close()
    lt = load_trace(path)
    assert [(iv.name, iv.stream, iv.start, iv.end) for iv in lt.timeline.intervals] == [
        ("gemm", "2", 0.0, 4.0), ("gemm", "2", 7.0, 8.0)]
    assert lt.ops.queues == ["4"] and lt.info.device == "AMD Instinct MI300X"


def test_nsys_capture_recognised_from_runtime_and_nvtx(tmp_path):
    ops = [Op("fill", 7, 1000, 2000, 11)]
    prog = Program(ops, api=[("cudaStreamBeginCapture", 20, 500), ("cudaLaunchKernel", 21, 600),
                             ("cudaStreamEndCapture", 22, 700), ("cudaGraphInstantiate", 23, 800)])
    path = write_nsys(tmp_path / "capture.sqlite", prog, nvtx=("CUDAGraphNode.record",))
    r = summarize_trace(path).summary
    assert r.not_a_step.kind == "graph capture" and r.per_layer is None
    assert r.not_a_step.evidence == {"cudaStreamBeginCapture": 1, "cudaStreamEndCapture": 1,
                                     "cudaGraphInstantiate": 1, "CUDAGraphNode.record": 1,
                                     "kernel launches recorded": 1, "kernels run": 1}
    res = runner.invoke(app, ["summary", str(path)])
    assert res.exit_code == EXIT_NOT_A_STEP and "record a step after capture" in res.stdout


def test_warm_up_only_recognised(tmp_path):
    events = [kernel("gemm", 7, T0, 5.0, 1), runtime("cudaLaunchKernel", T0 - 10, 2.0, 1),
              {"ph": "X", "cat": "python_function", "name": "vllm/worker.py(12): _dummy_run",
               "ts": T0 - 20, "dur": 40}]
    r = summarize_trace(write(tmp_path / "w.json.gz", kineto_doc(events))).summary
    assert r.not_a_step.kind == "warm-up" and r.layers is None
    assert r.not_a_step.evidence == {"_dummy_run": 1, "kernel launches recorded": 1,
                                     "kernels run": 1}


# --- bad input: one clear message, never nan ----------------------------------------------


def _fails(path, code=EXIT_BAD_INPUT) -> str:
    with pytest.raises(Failure) as e:
        load_trace(path)
    assert e.value.code == code and "\n" not in str(e.value)
    return str(e.value)


def test_bad_input_each_format(tmp_path):
    prog = from_kineto(decode_trace(steps=1))
    full = gzip.compress(json.dumps(json.loads(gzip.decompress(
        write_rocprof_json(tmp_path / "r.json.gz", prog).read_bytes()))).encode(), mtime=0)
    (tmp_path / "cut.json.gz").write_bytes(full[:len(full) // 2])
    assert "the gzip stream is truncated" in _fails(tmp_path / "cut.json.gz")
    (tmp_path / "other.json").write_text('{"hello": [1, 2]}')
    assert "no traceEvents array" in _fails(tmp_path / "other.json")
    (tmp_path / "tool.json").write_text('{"rocprofiler-sdk-tool": [{"agents": []}]}')
    with pytest.raises(Failure, match="no device operations"):
        summarize_trace(tmp_path / "tool.json")
    write_rocpd(tmp_path / "empty.db", prog, tables=("rocpd_string", "rocpd_info_agent"))
    assert "without the rocpd_kernel_dispatch table" in _fails(tmp_path / "empty.db")
    write_nsys(tmp_path / "nokernel.sqlite", prog, tables=("StringIds", "CUPTI_ACTIVITY_KIND_RUNTIME"))
    assert "without CUPTI_ACTIVITY_KIND_KERNEL" in _fails(tmp_path / "nokernel.sqlite")
    db = sqlite3.connect(tmp_path / "foreign.db")
    db.execute("CREATE TABLE recipes (name TEXT)")
    db.commit()
    db.close()
    assert "neither a rocpd database" in _fails(tmp_path / "foreign.db")
    write_pftrace(tmp_path / "cpu.pftrace", Program([], launches=[(7, 1000), (8, 5000)]))
    assert "a Perfetto trace with no GPU tracks" in _fails(tmp_path / "cpu.pftrace")
    data = write_pftrace(tmp_path / "p.pftrace", prog).read_bytes()
    (tmp_path / "cut.pftrace").write_bytes(data[:len(data) - 7])
    assert "truncated" in _fails(tmp_path / "cut.pftrace")
    (tmp_path / "x.csv").write_text("a,b,c\n1,2,3\n")
    assert "without rocprofv3's kernel_trace columns" in _fails(tmp_path / "x.csv")
    (tmp_path / "blob.bin").write_bytes(b"\x00\x01\x02garbage")
    assert "not a trace this tool reads" in _fails(tmp_path / "blob.bin")


def test_nan_and_negative_timestamps(tmp_path):
    text = json.dumps(kineto_doc([kernel("a", 1, T0, 1.0, 1), kernel("b", 1, T0 + 2, 1.0, 2)]))
    (tmp_path / "nan.json").write_text(text.replace(f'"ts": {T0 + 2}', '"ts": NaN'))
    assert "('b') has a timestamp or duration that is not a number" in _fails(tmp_path / "nan.json")
    (tmp_path / "neg.json").write_text(text.replace(f'"ts": {T0}', '"ts": -5.0'))
    assert "('a') has a negative timestamp" in _fails(tmp_path / "neg.json")
    csv_path = write_rocprof_csv(tmp_path / "k.csv", Program([Op("k", 1, 1000, 2000, 1)]))
    csv_path.write_text(csv_path.read_text().replace(",1000,", ",nan,"))
    assert ":2: start_timestamp 'nan' is not an integer" in _fails(csv_path)
    for path in (tmp_path / "nan.json", csv_path):
        res = runner.invoke(app, ["summary", str(path), "--json"])
        assert res.exit_code == EXIT_BAD_INPUT  # no table: one JSON object saying what is wrong
        assert json.loads(res.stdout) == {"error": json.loads(res.stdout)["error"], "exit_code": EXIT_BAD_INPUT}
        assert "not a number" in json.loads(res.stdout)["error"] or "not an integer" in json.loads(res.stdout)["error"]
        assert res.stderr.startswith("error: ") and "not a" in res.stderr


def test_json_output_has_no_bare_nan(tmp_path):
    """Every format's --json parses under a strict parser (no NaN / Infinity)."""
    prog = from_kineto(decode_trace(steps=2))
    for fmt in WRITERS:
        res = runner.invoke(app, ["summary", str(_written(tmp_path, fmt, prog)), "--json"])
        assert res.exit_code == 0, res.output
        json.loads(res.stdout, parse_constant=lambda c, fmt=fmt: pytest.fail(f"{fmt}: bare {c}"))
        assert "nan" not in res.stdout.lower().replace("nanosecond", "")


def test_steps_split_layers_outside_idle(tmp_path):
    """One replay: embedding 5 + AR 12 (prologue layer of 100 counted as a layer? no: first of a
    step), 6 layers, LM head; the split adds up to the step's wall."""
    st = summarize_trace(write(tmp_path / "d.json.gz", decode_trace(steps=1))).summary.per_step
    assert st.steps == 1 and st.basis == "graph replay"
    assert st.wall_us.median == pytest.approx(st.layers_us.median + st.outside_us.median
                                              + st.idle_us.median)
    assert st.layers_us.median == 5 * 107.5  # the 5 layers after the step's first
    assert np.isfinite([st.wall_us.median, st.idle_us.median]).all()
