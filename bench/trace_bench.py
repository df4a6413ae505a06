"""Trace loading at scale: build a large Kineto trace, then time `streamlab trace summary`'s load +
summary on it and, when HolisticTraceAnalysis is importable (`hta`), HTA's
TraceAnalysis(trace_dir=...).get_gpu_kernel_breakdown() on the same file; wall time and peak RSS
of each, measured in a fresh process of its own.

    python bench/trace_bench.py                           # ~1 GB from the MI250 sample trace
    python bench/trace_bench.py --size-mb 200 --hta-python /path/to/venv/bin/python
    python bench/trace_bench.py --input my.trace.json.gz --keep

The big trace repeats the device operations (kernels, memcpy, memset) of the input trace with
shifted timestamps and fresh correlation ids, written as a stream (never held in memory), as
plain JSON in a folder of its own (HTA reads every trace in a folder; rank 0).
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
DEFAULT_INPUT = ROOT.parent / "shared" / "traces" / "mi250_minitoy_train_ROCm6_2_kineto.json.gz"
DEVICE_CATS = ("kernel", "gpu_memcpy", "gpu_memset")


def _open(path: Path):
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rt") if gz else open(path)


def build(src: Path, out: Path, size_mb: float) -> dict:
    """Write a trace of about `size_mb` MB repeating `src`'s device operations."""
    with _open(src) as f:
        doc = json.load(f)
    ops = sorted((e for e in doc["traceEvents"] if e.get("ph") == "X" and e.get("cat") in DEVICE_CATS),
                 key=lambda e: e["ts"])
    if not ops:
        raise SystemExit(f"{src}: no device operations to repeat")
    t0 = ops[0]["ts"]
    span = max(e["ts"] + e.get("dur", 0) for e in ops) - t0
    period = span + 10.0  # us between repetitions
    corr_stride = 1 + max(int(e.get("args", {}).get("correlation", 0)) for e in ops)
    header = {k: v for k, v in doc.items() if k != "traceEvents"}
    header.setdefault("distributedInfo", {"rank": 0})
    target = int(size_mb * 1e6)
    written = reps = events = 0
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w") as f:
        head = json.dumps(header)[:-1] + ', "traceEvents": [\n'
        f.write(head)
        written += len(head)
        first = True
        while written < target:
            shift = reps * period
            for e in ops:
                ev = dict(e)
                ev["ts"] = round(e["ts"] - t0 + shift, 3)  # relative stamps: 1 ns resolution kept
                args = dict(e.get("args", {}))
                if "correlation" in args:
                    args["correlation"] = int(args["correlation"]) + reps * corr_stride
                ev["args"] = args
                line = ("" if first else ",\n") + json.dumps(ev)
                first = False
                f.write(line)
                written += len(line)
                events += 1
            reps += 1
        f.write("\n]}\n")
    return {"file": str(out), "bytes": out.stat().st_size, "events": events, "repetitions": reps,
            "ops_per_repetition": len(ops)}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def child_ours(path: str, trace_malloc: bool) -> dict:
    sys.path.insert(0, str(ROOT))
    if trace_malloc:
        import tracemalloc
        tracemalloc.start()
    from streamlab.trace.kineto import load_trace
    from streamlab.trace.summary import analyze

    base = _rss_mb()
    t0 = time.perf_counter()
    loaded = load_trace(path)
    t1 = time.perf_counter()
    report = analyze(loaded)
    t2 = time.perf_counter()
    out = {"load_s": t1 - t0, "summary_s": t2 - t1, "total_s": t2 - t0, "peak_rss_mb": _rss_mb(),
           "import_rss_mb": base, "device_ops": len(loaded.timeline.intervals),
           "layers": report.layers, "method": report.segmentation.description if report.segmentation
           else "recorded", "wall_us": report.summary.wall.median,
           "kernel_sum_us": report.summary.kernel_sum.median}
    if trace_malloc:
        import tracemalloc
        out["tracemalloc_peak_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
    return out


def child_hta(trace_dir: str) -> dict:
    import logging

    logging.disable(logging.WARNING)
    from hta.trace_analysis import TraceAnalysis

    base = _rss_mb()
    t0 = time.perf_counter()
    analyzer = TraceAnalysis(trace_dir=trace_dir)
    t1 = time.perf_counter()
    by_type, per_kernel = analyzer.get_gpu_kernel_breakdown(visualize=False)
    t2 = time.perf_counter()
    return {"load_s": t1 - t0, "summary_s": t2 - t1, "total_s": t2 - t0, "peak_rss_mb": _rss_mb(),
            "import_rss_mb": base, "kernel_rows": int(len(per_kernel))}


def _run_child(python: str, args: list[str]) -> dict:
    proc = subprocess.run([python, __file__, "--child", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"error": " | ".join(tail) or f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _has_hta(python: str) -> bool:
    probe = subprocess.run([python, "-c", "import hta.trace_analysis"], capture_output=True)
    return probe.returncode == 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", type=Path, default=DEFAULT_INPUT, help="trace whose device ops repeat")
    ap.add_argument("--size-mb", type=float, default=1024.0, help="size of the built trace")
    ap.add_argument("--dir", type=Path, default=None, help="where to build it (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the built trace")
    ap.add_argument("--reuse", action="store_true",
                    help="use the trace already built in --dir (implies --keep)")
    ap.add_argument("--hta-python", default=sys.executable,
                    help="interpreter with HolisticTraceAnalysis installed (default: this one)")
    ap.add_argument("--tracemalloc", action="store_true",
                    help="also report the Python-heap peak of ours (slower)")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        kind, target = a.child[0], a.child[1]
        res = child_ours(target, "tm" in a.child[2:]) if kind == "ours" else child_hta(target)
        print(json.dumps(res))
        return

    work = a.dir or Path(tempfile.mkdtemp(prefix="trace_bench_"))
    trace_dir = work / "traces"
    path = trace_dir / "rank0.trace.json"
    t0 = time.perf_counter()
    if a.reuse and a.dir is not None and path.exists():
        a.keep = True
        built = json.loads((work / "built-info.txt").read_text())
    else:
        built = build(a.input, path, a.size_mb)
        built["build_s"] = time.perf_counter() - t0
        (work / "built-info.txt").write_text(json.dumps(built))
    print(f"built {built['file']}: {built['bytes'] / 1e6:.0f} MB, {built['events']:,} device "
          f"operations ({built['repetitions']:,} x {built['ops_per_repetition']} from "
          f"{a.input.name}) in {built['build_s']:.1f} s", flush=True)
    ours = ["ours", str(path)] + (["tm"] if a.tracemalloc else [])
    rows = {"streamlab": _run_child(sys.executable, ours)}
    if _has_hta(a.hta_python):
        rows["HTA"] = _run_child(a.hta_python, ["hta", str(trace_dir)])
    else:
        rows["HTA"] = {"error": f"HolisticTraceAnalysis (import hta) not installed for {a.hta_python}"}

    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{built['bytes'] / 1e6:.0f} MB Kineto trace, {built['events']:,} device ops",
              title_justify="left")
    for col in ("tool", "load s", "analysis s", "total s", "peak RSS MB", "MB/s"):
        t.add_column(col, justify="left" if col == "tool" else "right")
    notes = []
    for tool, r in rows.items():
        if "error" in r:
            t.add_row(tool, "-", "-", "-", "-", "-")
            notes.append(f"{tool}: {r['error']}")
            continue
        note = (f"{r['layers']:,} layers ({r['method']}); wall {r['wall_us']:.1f} us"
                if "layers" in r else
                f"get_gpu_kernel_breakdown: {r.get('kernel_rows', '?')} kernel rows")
        if "tracemalloc_peak_mb" in r:
            note += f"; Python heap peak {r['tracemalloc_peak_mb']:.0f} MB (tracemalloc on: slower)"
        notes.append(f"{tool}: {note}")
        t.add_row(tool, f"{r['load_s']:.1f}", f"{r['summary_s']:.1f}", f"{r['total_s']:.1f}",
                  f"{r['peak_rss_mb']:.0f}", f"{built['bytes'] / 1e6 / r['total_s']:.0f}")
    console = Console(highlight=False)
    console.print(t)
    for n in notes:
        console.print(n, soft_wrap=True)
    print(json.dumps({"built": built, "results": rows}, indent=1, default=str))
    if not a.keep:
        path.unlink()
        (work / "built-info.txt").unlink()
        for p in (trace_dir, work) if a.dir is None else (trace_dir,):
            try:
                p.rmdir()
            except OSError:
                pass


if __name__ == "__main__":
    main()
