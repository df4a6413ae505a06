"""Where the repeat spread comes from: per-replay times of a layout's graph, each run in a fresh
process, with the GPU's clocks logged beside it (nvidia-smi, read only).

Two protocols per run: "untimed warm-up" (measure.warm_up for 1 s, then 10 timed repeats of 50
replays, as `streamlab run` does) and "timed from the start" (3 s of timed repeats, nothing
before them). For each, the spread of the five repeat medians as the executor takes them
(the first five after warm-up), of the next five, and of five repeats that take every fifth
replay of those 250 (interleaved), with the SM clock over the timed part.

    python bench/repeat_protocol.py OUT_DIR [serial:4,a_v4:64,...]
"""

import json
import multiprocessing
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

CASES = "serial:4,a_v4_moe_dual:4,serial:64,a_v4:64,pr23562:16"
ITERS = 50


def _spread(medians: list[float]) -> float:
    return (max(medians) - min(medians)) / statistics.median(medians) * 100


def _timed_blocks(graph, layers: int, seconds: float | None, blocks: int | None) -> list[dict]:
    """Blocks of ITERS replays, each replay between device events: per block its host start time
    and per-layer times."""
    from streamlab.exec.measure import replay_block
    out, start = [], time.time()
    while (blocks is not None and len(out) < blocks) or (
            seconds is not None and time.time() - start < seconds):
        out.append({"t": time.time(), "us": replay_block(graph, ITERS, per_replay=layers)})
    return out


def _measure(name: str, batch: int, protocol: str) -> list[dict]:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from layer_graph import LayerGraph
    from streamlab.exec.measure import WARMUP_S, warm_up
    lg = LayerGraph.build(name, batch)
    graph = lg.capture()
    if protocol == "untimed warm-up":
        warm_up([graph], replays=20, block=ITERS, seconds=WARMUP_S)
        return _timed_blocks(graph, lg.buffers.layers, None, 10)
    return _timed_blocks(graph, lg.buffers.layers, 3.0, None)


def _summary(blocks: list[dict], skip: int) -> dict:
    med = [statistics.median(b["us"]) for b in blocks]
    first = blocks[skip:skip + 10]
    flat = [v for b in first for v in b["us"]]
    inter = [statistics.median(flat[i:5 * ITERS:5]) for i in range(5)]
    return {"block_medians": [round(m, 1) for m in med],
            "spread_first5": _spread(med[skip:skip + 5]),
            "spread_next5": _spread(med[skip + 5:skip + 10]),
            "spread_interleaved": _spread(inter),
            "median": statistics.median(flat[:5 * ITERS])}


def main(out: Path, cases: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    smi = subprocess.Popen(
        ["nvidia-smi", "--query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,"
         "clocks_event_reasons.active", "--format=csv,noheader,nounits", "-lms", "50"],
        stdout=open(out / "clocks.csv", "w"), stderr=subprocess.DEVNULL)
    results = []
    try:
        for case in cases.split(","):
            name, batch = case.split(":")
            for protocol in ("untimed warm-up", "timed from the start"):
                with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as p:
                    blocks = p.submit(_measure, name, int(batch), protocol).result()
                # timed from the start: the executor's warm-up second is the first ~1 s
                skip = 0 if protocol == "untimed warm-up" else next(
                    i for i, b in enumerate(blocks) if b["t"] - blocks[0]["t"] >= 1.0)
                s = _summary(blocks, skip)
                results.append({"scenario": name, "batch": int(batch), "protocol": protocol,
                                "t0": blocks[skip]["t"], "t1": blocks[-1]["t"], **s})
                print(f"{name} b{batch} {protocol}: first5 {s['spread_first5']:.2f}% next5 "
                      f"{s['spread_next5']:.2f}% interleaved {s['spread_interleaved']:.2f}% "
                      f"median {s['median']:.1f}  blocks {s['block_medians']}", flush=True)
    finally:
        smi.terminate()
    (out / "repeat_protocol.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else CASES)
