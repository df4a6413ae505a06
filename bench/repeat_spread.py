"""Repeatability of the serial layer's per-layer median under measurement protocols: warm-up
seconds x replays per repeat, three trials each after 2 s idle (as between runs).

    python bench/repeat_spread.py
"""

import statistics
import time

from layer_graph import LayerGraph
from streamlab.exec.measure import time_graph, warm_up

PROTOCOLS = [("1s/200", 1.0, 200), ("5s/200", 5.0, 200), ("1s/50", 1.0, 50), ("5s/50", 5.0, 50)]


def spread(r: list[float]) -> float:
    return (max(r) - min(r)) / statistics.median(r) * 100


def main() -> None:
    for batch in (64, 16):
        graph = LayerGraph.build("serial", batch).capture()
        for name, warm, iters in PROTOCOLS:
            for trial in range(3):
                time.sleep(2.0)
                warm_up(graph, 20, iters, warm)
                t = time_graph(graph, 4, 0, iters, 5)
                print(f"b{batch} {name} trial {trial}: {[round(x, 1) for x in t.repeat_medians]} "
                      f"spread {spread(t.repeat_medians):.2f}%", flush=True)
        del graph


if __name__ == "__main__":
    main()
