"""Trace loading at scale: build a large Kineto trace, then time `streamlab trace summary`'s load +
summary on it and, when HolisticTraceAnalysis is importable (`hta`), HTA's
TraceAnalysis(trace_dir=...).get_gpu_kernel_breakdown() on the same file; wall time and peak RSS
of each, measured in a fresh process of its own (`--repeat`: several times, alternating).

    python bench/trace_bench.py                           # ~1 GB from our H100 Kineto trace
    python bench/trace_bench.py --size-mb 200 --hta-python /path/to/venv/bin/python
    python bench/trace_bench.py --input my.trace.json.gz --keep

The big trace repeats the whole input trace, as a real one grows: every event (CPU ops, runtime
and driver calls, flows, device operations; the metadata events once, at the end) in each copy
shifted in time by the input's span and with fresh correlation, flow, external and event ids,
each event byte for byte in the input's layout otherwise. It is written as a stream (never held
in memory), as plain JSON in a folder of its own (HTA reads every trace in a folder; rank 0).
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_INPUT = (ROOT / "traces" / "h100-2026-11-21" / "kineto"
                 / "h100-a_v4_moe_dual-b4.kineto.json.gz")  # a raw profiler trace of our layer
DEVICE_CATS = ("kernel", "gpu_memcpy", "gpu_memset")


_IDS = ("correlation", "id", "External id", "Ev Idx")  # unique per event or per launch
_FIELD = re.compile(r'("(ts|correlation|id|External id|Ev Idx)"\s*:\s*)(\d+(?:\.\d+)?)')
SEP = ",\n  "  # Kineto's separator between events


def _text(path: Path) -> str:
    data = path.read_bytes()
    return (gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data).decode()


def _events(text: str) -> tuple[str, list[tuple[str, dict]], str]:
    """The file as (text before the first event, [(event text, event)], text after the last):
    each event as written, so the copies keep Kineto's layout byte for byte."""
    decoder = json.JSONDecoder()
    ws = re.compile(r"\s*")
    pos = ws.match(text, text.index("[", text.index('"traceEvents"')) + 1).end()
    head, events = text[:pos], []
    while text[pos] != "]":
        ev, end = decoder.raw_decode(text, pos)
        events.append((text[pos:end], ev))
        pos = ws.match(text, end).end()
        if text[pos] == ",":
            pos = ws.match(text, pos + 1).end()
    tail = text[text.rindex("}", 0, pos) + 1:]
    return head, events, tail


class _Repeater:
    """The events of one repetition as a template: literal text between the numbers that must
    change per copy (ts shifted by whole periods, kept exactly in its decimal digits; ids moved
    to a range of their own), so a copy is one join, not a JSON encode."""

    def __init__(self, texts: list[str]) -> None:
        self.pieces, self.slots = [], []  # slots: (is_ts, integer value, decimals)
        text, last = SEP.join(texts), 0
        for m in _FIELD.finditer(text):
            self.pieces.append(text[last:m.start(3)])
            whole, _, frac = m.group(3).partition(".")
            self.slots.append((m.group(2) == "ts", int(whole + frac), len(frac)))
            last = m.end()
        self.pieces.append(text[last:])
        ids = [v for ts, v, _ in self.slots if not ts]
        self.id_stride = max(ids, default=0) + 1

    def copy(self, rep: int, period_us: int) -> str:
        out = [self.pieces[0]]
        for (ts, v, d), piece in zip(self.slots, self.pieces[1:]):
            if ts:
                v += rep * period_us * 10 ** d
                out.append(f"{v // 10 ** d}.{v % 10 ** d:0{d}d}" if d else str(v))
            else:
                out.append(str(v + rep * self.id_stride))
            out.append(piece)
        return "".join(out)


def build(src: Path, out: Path, size_mb: float) -> dict:
    """Write a trace of about `size_mb` MB repeating all of `src`'s events (CPU ops, runtime
    calls, flows, device operations: a loader must read them all), each copy shifted in time by
    the trace's span and with fresh correlation / flow / external ids; metadata events (ph M)
    once, at the end, as Kineto writes them. Streamed to disk, never held in memory."""
    head, events, tail = _events(_text(src))
    timed = [ev for _, ev in events if ev.get("ph") != "M" and "ts" in ev]
    if not any(ev.get("cat") in DEVICE_CATS for ev in timed):
        raise SystemExit(f"{src}: no device operations to repeat")
    span = max(ev["ts"] + ev.get("dur", 0) for ev in timed) - min(ev["ts"] for ev in timed)
    period_us = int(span) + 10  # whole microseconds: shifted stamps keep their digits exactly
    repeater = _Repeater([t for t, ev in events if ev.get("ph") != "M"])
    meta = [t for t, ev in events if ev.get("ph") == "M"]
    if '"distributedInfo"' not in head:  # HTA reads the rank from here
        head = head.replace("{", '{\n  "distributedInfo": {"rank": 0},', 1)
    target = int(size_mb * 1e6)
    reps = 0
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        f.write(head)
        while f.tell() < target:
            f.write((SEP if reps else "") + repeater.copy(reps, period_us))
            reps += 1
        f.write("".join(SEP + t for t in meta) + tail)
    per_rep = len(events) - len(meta)
    return {"file": str(out), "bytes": out.stat().st_size, "events": reps * per_rep + len(meta),
            "repetitions": reps, "events_per_repetition": per_rep,
            "device_ops_per_repetition": sum(ev.get("cat") in DEVICE_CATS for ev in timed),
            "period_us": period_us}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def child_ours(path: str, trace_malloc: bool) -> dict:
    sys.path.insert(0, str(ROOT))
    if trace_malloc:
        import tracemalloc
        tracemalloc.start()
    from streamlab.trace.formats import load_trace
    from streamlab.trace.summary import analyze

    base = _rss_mb()
    t0 = time.perf_counter()
    loaded = load_trace(path)
    t1 = time.perf_counter()
    report = analyze(loaded)
    t2 = time.perf_counter()
    out = {"load_s": t1 - t0, "summary_s": t2 - t1, "total_s": t2 - t0, "peak_rss_mb": _rss_mb(),
           "import_rss_mb": base, "device_ops": len(loaded.timeline.intervals),
           "layers": report.summary.steady_layers, "method": report.summary.layers.description,
           "wall_us": report.summary.per_layer.wall_us.median,
           "kernel_sum_us": report.summary.per_layer.kernel_sum_us.median}
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
    _, per_kernel = analyzer.get_gpu_kernel_breakdown(visualize=False)
    t2 = time.perf_counter()
    return {"load_s": t1 - t0, "summary_s": t2 - t1, "total_s": t2 - t0, "peak_rss_mb": _rss_mb(),
            "import_rss_mb": base, "kernel_rows": len(per_kernel)}


def _run_child(python: str, args: list[str]) -> dict:
    proc = subprocess.run([python, __file__, "--child", *args], capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"error": " | ".join(tail) or f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _has_hta(python: str) -> bool:
    try:
        probe = subprocess.run([python, "-c", "import hta.trace_analysis"], capture_output=True,
                               check=False)
    except OSError:  # no such interpreter
        return False
    return probe.returncode == 0


def _median_run(runs: list[dict]) -> dict:
    """The run with the median total time (the first error, if any run failed)."""
    bad = [r for r in runs if "error" in r]
    if bad:
        return bad[0]
    return sorted(runs, key=lambda r: r["total_s"])[(len(runs) - 1) // 2]


def _compare(built: dict, rows: dict) -> dict:
    ours, hta = rows["streamlab"], rows["HTA"]
    out = {"file_mb": built["bytes"] / 2**20}
    if "error" not in ours:
        out["streamlab_peak_rss_over_file"] = ours["peak_rss_mb"] / out["file_mb"]
    if "error" not in ours and "error" not in hta:
        out["hta_over_streamlab_time"] = hta["total_s"] / ours["total_s"]
        out["hta_over_streamlab_peak_rss"] = hta["peak_rss_mb"] / ours["peak_rss_mb"]
    return out


def _machine(hta_python: str | None) -> dict:
    import os
    import platform

    import numpy

    out = {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
           "python": platform.python_version(), "numpy": numpy.__version__,
           "platform": platform.platform()}
    try:
        out["cpu_model"] = next(line.split(":", 1)[1].strip() for line in
                                open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    if hta_python:
        probe = subprocess.run([hta_python, "-c", "import importlib.metadata as m; "
                                "print(m.version('HolisticTraceAnalysis'))"],
                               capture_output=True, text=True, check=False)
        out["hta"] = probe.stdout.strip() or probe.stderr.strip()[-200:]
    return out


def _print_table(built: dict, rows: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    ops = built["repetitions"] * built["device_ops_per_repetition"]
    t = Table(title=f"{built['bytes'] / 1e6:.0f} MB Kineto trace, {built['events']:,} events, "
                    f"{ops:,} device operations", title_justify="left")
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
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs of each tool, alternating; the median run is reported")
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
    path = work / "traces" / "rank0.trace.json"
    keep = a.keep or (a.reuse and a.dir is not None and path.exists())
    try:
        _bench(a, work, path)
    finally:  # a GB of trace is not left behind, whatever happened
        if not keep:
            _remove(work, path, whole=a.dir is None)


def _bench(a: argparse.Namespace, work: Path, path: Path) -> None:
    t0 = time.perf_counter()
    if a.reuse and a.dir is not None and path.exists():
        built = json.loads((work / "built-info.txt").read_text())
    else:
        built = build(a.input, path, a.size_mb)
        built["build_s"] = time.perf_counter() - t0
        (work / "built-info.txt").write_text(json.dumps(built))
    print(f"built {built['file']}: {built['bytes'] / 1e6:.0f} MB, {built['events']:,} events "
          f"({built['repetitions']:,} x {built['events_per_repetition']:,} from {a.input.name}, "
          f"{built['device_ops_per_repetition']:,} device operations each) in "
          f"{built['build_s']:.1f} s", flush=True)
    ours = ["ours", str(path)] + (["tm"] if a.tracemalloc else [])
    hta = _has_hta(a.hta_python)
    runs: dict[str, list[dict]] = {"streamlab": [], "HTA": []}
    for _ in range(a.repeat):
        runs["streamlab"].append(_run_child(sys.executable, ours))
        if hta:
            runs["HTA"].append(_run_child(a.hta_python, ["hta", str(path.parent)]))
    if not hta:
        runs["HTA"].append({"error": "HolisticTraceAnalysis (import hta) not installed for "
                                     f"{a.hta_python}"})
    rows = {tool: _median_run(r) for tool, r in runs.items()}
    _print_table(built, rows)
    print(json.dumps({"machine": _machine(a.hta_python if hta else None), "built": built,
                      "comparison": _compare(built, rows), "results": rows, "runs": runs},
                     indent=1, default=str))


def _remove(work: Path, path: Path, whole: bool) -> None:
    """The built trace and its info file; their folders too when they were made here."""
    for p in (path, work / "built-info.txt"):
        p.unlink(missing_ok=True)
    for p in (path.parent, work) if whole else (path.parent,):
        with contextlib.suppress(OSError):
            p.rmdir()

if __name__ == "__main__":
    main()
