"""Chrome trace / Perfetto JSON for a Timeline: open any run in ui.perfetto.dev or
chrome://tracing, and read our own traces back unchanged.

One process named after the source; one thread per stream ("stream <id>"); one "X" event per
interval, named after its DAG node when known; layer bounds as "X" events on their own track
above the streams. Every event's args carry the full interval (including its exact end, since
ts + dur can differ from it in the last bit), so `from_chrome` rebuilds the Timeline exactly.
Dependency edges (Timeline.edges: the captured graph's edges) are flow events, drawn as arrows
by Perfetto: an "s" event inside the interval waited on and an "f" event (binding point
"enclosing slice") at the start of the one that waited, the pair sharing an id; the "s" event's
args name both intervals by their index among the kernel events, so they read back exactly.
Loading traces from other tools (PyTorch profiler, rocprof) is a separate, larger job.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import math
import os
from pathlib import Path

from streamlab.io import write_atomic
from streamlab.timeline import EDGE_KINDS, Edge, Interval, Source, Timeline

PID = 1
FLOW_CAT = "dependency"


def to_chrome(timeline: Timeline) -> dict:
    streams = timeline.streams
    tid = {s: i + 1 for i, s in enumerate(streams)}
    layer_tid = len(streams) + 1
    meta = [{"ph": "M", "name": "process_name", "pid": PID, "tid": 0,
             "args": {"name": timeline.source.describe()}}]
    tracks = [("layers", layer_tid, 0)] + [(f"stream {s}", tid[s], tid[s]) for s in streams]
    for name, t, sort in tracks:  # the layers track sorts first, above the streams
        meta.append({"ph": "M", "name": "thread_name", "pid": PID, "tid": t,
                     "args": {"name": name}})
        meta.append({"ph": "M", "name": "thread_sort_index", "pid": PID, "tid": t,
                     "args": {"sort_index": sort}})
    layers = [{"ph": "X", "name": f"layer {i}", "cat": "layer", "pid": PID, "tid": layer_tid,
               "ts": start, "dur": end - start, "args": {"layer": i, "end": end}}
              for i, (start, end) in enumerate(timeline.layers)]
    kernels = [{"ph": "X", "name": iv.node or iv.name, "cat": iv.kind, "pid": PID,
                "tid": tid[iv.stream], "ts": iv.start, "dur": iv.duration,
                "args": {"kernel": iv.name, "node": iv.node, "layer": iv.layer, "kind": iv.kind,
                         "stream": iv.stream, "end": iv.end}}
               for iv in timeline.intervals]
    return {"traceEvents": meta + layers + kernels + _flows(timeline, tid), "displayTimeUnit": "ns",
            "otherData": {"source": dataclasses.asdict(timeline.source)}}


def _flows(timeline: Timeline, tid: dict[str, int]) -> list[dict]:
    ivs = timeline.intervals
    out = []
    for k, e in enumerate(timeline.edges):
        a, b = ivs[e.before], ivs[e.after]
        out.append({"ph": "s", "id": k, "name": e.kind, "cat": FLOW_CAT, "pid": PID,
                    "tid": tid[a.stream], "ts": a.start,
                    "args": {"before": e.before, "after": e.after, "kind": e.kind}})
        out.append({"ph": "f", "bp": "e", "id": k, "name": e.kind, "cat": FLOW_CAT, "pid": PID,
                    "tid": tid[b.stream], "ts": b.start})
    return out


def from_chrome(obj: dict) -> Timeline:
    """The Timeline of a trace written by `to_chrome`. Raises ValueError on a dependency edge
    that names no interval or has an unknown kind."""
    intervals, layers, edges = [], {}, []
    for ev in obj["traceEvents"]:
        if ev.get("ph") == "s" and ev.get("cat") == FLOW_CAT:
            args = ev["args"]
            edges.append(Edge(int(args["before"]), int(args["after"]), args["kind"]))
        if ev.get("ph") != "X":
            continue
        args = ev["args"]
        start, end = ev["ts"], args["end"]
        if not all(isinstance(t, (int, float)) and math.isfinite(t) for t in (start, end)) or start > end:
            what = f"kernel {args['kernel']!r}" if "kernel" in args else f"layer {args.get('layer')}'s marker"
            raise ValueError(f"{what} spans {start!r} to {end!r} us: not two finite times in order")
        if "kernel" in args:
            intervals.append(Interval(name=args["kernel"], stream=args["stream"], start=start, end=end,
                                      node=args["node"], layer=args["layer"], kind=args["kind"]))
        else:
            layers[args["layer"]] = (start, end)
    for e in edges:
        if not (0 <= e.before < len(intervals) and 0 <= e.after < len(intervals)) \
                or e.kind not in EDGE_KINDS:
            raise ValueError(f"dependency edge {e.before} -> {e.after} ({e.kind}) names no interval "
                             f"of the {len(intervals)} or a kind other than {', '.join(EDGE_KINDS)}")
    return Timeline(intervals, Source(**obj["otherData"]["source"]),
                    [layers[i] for i in sorted(layers)], edges)


def write_chrome(timeline: Timeline, path: str | os.PathLike) -> Path:
    """Write atomically; gzip when the name ends in .gz (mtime 0: equal runs give equal files)."""
    data = json.dumps(to_chrome(timeline)).encode()
    if str(path).endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    return write_atomic(path, data)


def read_chrome(path: str | os.PathLike) -> Timeline:
    raw = Path(path).read_bytes()
    return from_chrome(json.loads(gzip.decompress(raw) if str(path).endswith(".gz") else raw))
