"""The new trace readers at scale: rocprofv3 JSON, rocpd, Nsight Systems SQLite, rocprofv3
kernel_trace.csv and Perfetto .pftrace, each `streamlab trace summary`'s load + analysis on a
large input, with wall time and peak RSS (fresh process per run), against what else reads the
format here.

    python bench/trace_formats_bench.py --ops 1000000 --repeat 2
    python bench/trace_formats_bench.py --formats rocprofv3-json --json-reps 10

Inputs: the real rocprofv3 JSON (../shared/traces/rocprofv3_908_results.json.gz, 8 x MI350X,
43,915 dispatches) repeated `--json-reps` times, each copy shifted by the trace's span with fresh
correlation and dispatch ids; for the other formats its dispatches (names, streams, queues,
stamps) repeated to `--ops` operations and written by tests/trace_writers.py in each format.

Comparison. HolisticTraceAnalysis reads Kineto JSON only (bench/trace_bench.py compares it
there). TraceLens reads rocprofv3 JSON (RocprofParser: json.load of the whole file, then a
DataFrame) and pftrace (through Perfetto's trace_processor binary, downloaded at run time), but
it is not on PyPI and cannot be installed here; so for rocprofv3 JSON the bench times json.load
of the file alone, the first step of TraceLens's reader and a floor for any reader that decodes
the whole document. No tool at hand reads rocpd, Nsight Systems SQLite or the CSV; their rows
say so.
"""

from __future__ import annotations

import argparse
import gzip
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "traces" / "rocprofv3_908_results.json.gz"
FORMATS = ("rocprofv3-json", "rocpd", "nsys-sqlite", "rocprofv3-csv", "pftrace")
READERS = {"rocprofv3-json": "streamlab.trace.rocprof_json", "rocpd": "streamlab.trace.rocpd",
           "nsys-sqlite": "streamlab.trace.nsys", "rocprofv3-csv": "streamlab.trace.rocprof_csv",
           "pftrace": "streamlab.trace.pftrace"}
FILES = {"rocprofv3-json": "big_results.json", "rocpd": "big_results.db",
         "nsys-sqlite": "big_report.sqlite", "rocprofv3-csv": "big_kernel_trace.csv",
         "pftrace": "big_results.pftrace"}


def _rss_mb() -> float:
    """This process's peak resident memory (VmHWM, MB): unlike getrusage's ru_maxrss, which
    Linux carries over from the parent through fork and exec, it starts afresh in a child."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build_json(src: Path, out: Path, reps: int) -> dict:
    """The rocprofv3 JSON `src` with its dispatch records repeated `reps` times."""
    doc = json.loads(gzip.decompress(src.read_bytes()))
    tool = doc["rocprofiler-sdk-tool"][0]
    records = tool["buffer_records"]["kernel_dispatch"]
    start = min(r["start_timestamp"] for r in records)
    span = max(r["end_timestamp"] for r in records) - start + 1000
    n = len(records)
    tool["buffer_records"]["kernel_dispatch"] = []
    head, tail = json.dumps(doc).split('"kernel_dispatch": []')
    with open(out, "w") as f:
        f.write(head + '"kernel_dispatch": [')
        for k in range(reps):
            for i, r in enumerate(records):
                r = json.loads(json.dumps(r))
                r["start_timestamp"] += k * span
                r["end_timestamp"] += k * span
                r["correlation_id"]["internal"] += k * n
                r["dispatch_info"]["dispatch_id"] += k * n
                f.write(("," if k or i else "") + json.dumps(r, separators=(",", ":")))
        f.write("]" + tail)
    return {"ops": reps * n, "bytes": out.stat().st_size}


def build_program(src: Path, ops: int):
    """tests/trace_writers Program of the real dispatches, repeated to `ops` operations."""
    sys.path.insert(0, str(ROOT))
    from tests.trace_writers import Op, Program

    tool = json.loads(gzip.decompress(src.read_bytes()))["rocprofiler-sdk-tool"][0]
    names = {k["kernel_id"]: k["formatted_kernel_name"] for k in tool["kernel_symbols"]}
    records = tool["buffer_records"]["kernel_dispatch"]
    start = min(r["start_timestamp"] for r in records)
    span = max(r["end_timestamp"] for r in records) - start + 1000
    out = []
    k = 0
    while len(out) < ops:
        for r in records:
            if len(out) == ops:
                break
            out.append(Op(names[r["dispatch_info"]["kernel_id"]], r["stream_id"]["handle"],
                          r["start_timestamp"] + k * span, r["end_timestamp"] + k * span,
                          r["correlation_id"]["internal"] + k * len(records),
                          queue=r["dispatch_info"]["queue_id"]["handle"]))
        k += 1
    return Program(out)


def child(fmt: str, path: str, what: str) -> dict:
    base = _rss_mb()
    t0 = time.perf_counter()
    if what == "json.load":
        obj = json.loads(Path(path).read_bytes())
        t1 = time.perf_counter()
        return {"load_s": t1 - t0, "summary_s": 0.0, "total_s": t1 - t0, "peak_rss_mb": _rss_mb(),
                "import_rss_mb": base, "records": len(obj["rocprofiler-sdk-tool"][0]
                                                     ["buffer_records"]["kernel_dispatch"])}
    sys.path.insert(0, str(ROOT))
    import numpy as np

    from streamlab.trace.formats import load_trace
    from streamlab.trace.summary import analyze

    base = _rss_mb()
    if what == "load":  # the reader's own imports (pftrace: the perfetto protos), a constant
        import importlib

        importlib.import_module(READERS[fmt])
        if fmt == "pftrace":
            from streamlab.trace.pftrace import _protos
            _protos()
        np.unique(np.zeros(2))  # numpy imports helpers on first use
    reader_base = _rss_mb()
    t0 = time.perf_counter()
    loaded = load_trace(path)
    t1 = time.perf_counter()
    if what == "load":  # the reader alone: its columns, before analysis makes an object per op
        return {"load_s": t1 - t0, "peak_rss_mb": _rss_mb(), "import_rss_mb": base,
                "reader_import_rss_mb": reader_base, "device_ops": len(loaded.ops)}
    report = analyze(loaded)
    t2 = time.perf_counter()
    return {"load_s": t1 - t0, "summary_s": t2 - t1, "total_s": t2 - t0, "peak_rss_mb": _rss_mb(),
            "import_rss_mb": base, "device_ops": len(loaded.ops), "format": loaded.info.format,
            "layers": report.summary.steady_layers}


def _run(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True,
                          text=True, check=False)
    if proc.returncode:
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS)
    ap.add_argument("--ops", type=int, default=1_000_000, help="operations in the SQLite/CSV inputs")
    ap.add_argument("--pftrace-ops", type=int, default=300_000)
    ap.add_argument("--json-reps", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--dir", type=Path, default=None)
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(*a.child)))
        return
    sys.path.insert(0, str(ROOT))
    from tests import trace_writers as w

    work = a.dir or Path(tempfile.mkdtemp(prefix="trace_formats_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    results = {}
    for fmt in a.formats:
        path = work / FILES[fmt]
        t0 = time.perf_counter()
        if fmt == "rocprofv3-json":
            built = build_json(SHARED, path, a.json_reps)
        else:
            n = a.pftrace_ops if fmt == "pftrace" else a.ops
            program = build_program(SHARED, n)
            {"rocpd": w.write_rocpd, "nsys-sqlite": w.write_nsys, "rocprofv3-csv": w.write_rocprof_csv,
             "pftrace": w.write_pftrace}[fmt](path, program)
            built = {"ops": n, "bytes": path.stat().st_size}
        built["build_s"] = time.perf_counter() - t0
        runs = {"streamlab": [], "reader only": [], "json.load": []}
        for _ in range(a.repeat):
            runs["streamlab"].append(_run([fmt, str(path), "ours"]))
            runs["reader only"].append(_run([fmt, str(path), "load"]))
            if fmt == "rocprofv3-json":
                runs["json.load"].append(_run([fmt, str(path), "json.load"]))
        rows = {k: sorted(v, key=lambda r: r.get("load_s", 1e9))[(len(v) - 1) // 2]
                for k, v in runs.items() if v}
        results[fmt] = {"built": built, "results": rows, "runs": runs}
        ours, reader = rows["streamlab"], rows["reader only"]
        mb = built["bytes"] / 2**20
        over = reader.get("peak_rss_mb", 0) - reader.get("import_rss_mb", 0)
        over_reader = reader.get("peak_rss_mb", 0) - reader.get("reader_import_rss_mb", 0)
        line = (f"{fmt}: {mb:.0f} MiB, {built['ops']:,} ops: load + summary "
                f"{ours.get('total_s', -1):.2f} s (load {ours.get('load_s', -1):.2f}), peak RSS "
                f"{ours.get('peak_rss_mb', 0):.0f} MB; reader alone: peak RSS "
                f"{reader.get('peak_rss_mb', 0):.0f} MB, {over:.0f} MB over streamlab.trace.formats' "
                f"imports = {over / mb:.2f}x the file, {over_reader:.0f} MB over the reader's own "
                f"imports = {over_reader / mb:.2f}x")
        if "json.load" in rows:
            j = rows["json.load"]
            line += (f"; json.load alone {j['total_s']:.2f} s, {j['peak_rss_mb']:.0f} MB "
                     f"({j['total_s'] / ours['total_s']:.1f}x our time)")
        print(line, flush=True)
        path.unlink(missing_ok=True)
    import platform

    import numpy
    print(json.dumps({"machine": {"python": platform.python_version(), "numpy": numpy.__version__,
                                  "platform": platform.platform()},
                      "args": {k: v for k, v in vars(a).items() if k != "child"},
                      "formats": results}, indent=1, default=str))


if __name__ == "__main__":
    main()
