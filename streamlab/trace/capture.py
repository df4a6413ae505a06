"""Traces that hold no step to measure: a graph capture, or warm-up only.

A capture records the launches of a graph's kernels without running them (hipStreamBeginCapture
/ cudaStreamBeginCapture ... EndCapture, hipGraphInstantiate / cudaGraphInstantiate, or
torch.compile's CUDAGraphNode.record), so its few kernels, cut into "layers", would give numbers
of nothing. A warm-up run (vLLM's _dummy_run, a warm-up request) runs the model, but cold. Both
are recognised before any layer is looked for (`recognise`), when the trace replays no graph;
`trace summary` then says so, names the replay it would need, reports no layer numbers and exits
with EXIT_NOT_A_STEP (4). A trace that captures and then replays is a step: the replays count.
"""

from __future__ import annotations

from streamlab.results import NotAStep
from streamlab.trace.loaded import TraceInfo
from streamlab.trace.names import KERNEL_LAUNCH, MARKS, capture_calls

__all__ = ["recognise"]

CAPTURE_ADVICE = ("record a step after capture: profile a decode step that replays the captured "
                  "graph (hipGraphLaunch / cudaGraphLaunch), starting the profiler once the server "
                  "serves (SGLang: POST /start_profile; vLLM: /start_profile), not during start-up")
WARMUP_ADVICE = ("record steady-state steps after warm-up: start the profiler once the server "
                 "serves requests (SGLang: POST /start_profile; vLLM: /start_profile) and profile "
                 "a few decode steps")


def recognise(info: TraceInfo) -> NotAStep | None:
    """A capture or warm-up trace (see the module doc), or None for a trace of steps."""
    if info.graph_launches or info.replays:
        return None
    calls = capture_calls(info.runtime_by_name)
    marks = {k: v for k, v in info.markers.items() if v}
    kinds = {MARKS[k.encode()] for k in marks if k.encode() in MARKS}
    launches = sum(v for k, v in info.runtime_by_name.items() if KERNEL_LAUNCH.search(str(k)))
    ran = info.device_ops.get("kernel", 0) + info.device_ops.get("allreduce", 0)
    tail = ({"kernel launches recorded": launches} if launches else {}) | {"kernels run": ran}
    if calls or "capture" in kinds:
        marked = {k: v for k, v in marks.items() if MARKS[k.encode()] == "capture"}
        return NotAStep("graph capture", calls | marked | tail, CAPTURE_ADVICE)
    if "warm-up" in kinds:
        marked = {k: v for k, v in marks.items() if MARKS[k.encode()] == "warm-up"}
        return NotAStep("warm-up", marked | tail, WARMUP_ADVICE)
    return None
