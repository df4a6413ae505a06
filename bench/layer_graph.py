"""One scenario's layers on this GPU for the bench scripts: buffers, the Triton kernels (with
the emulated all-reduce), streams, and the captured graph of its layers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from streamlab.exec.buffers import Buffers
from streamlab.exec.eager import StreamSet, run_layers
from streamlab.exec.target import Target, collective_overrides
from streamlab.kernels import Bound, bind_layer
from streamlab.scenario import Scenario, load

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class LayerGraph:
    scen: Scenario
    buffers: Buffers
    bound: dict[str, Bound]
    streams: StreamSet

    @classmethod
    def build(cls, name: str, batch: int, layers: int = 4, context: int = 8192) -> "LayerGraph":
        scen = load(ROOT / "scenarios" / f"{name}.yaml").override(batch=batch, context=context)
        dev = torch.device("cuda")
        bound = bind_layer(scen.layer, "triton", collective_overrides(scen, Target(dev, "triton")))
        return cls(scen, Buffers(scen.layer, layers, dev), bound, StreamSet(dev))

    def run(self) -> None:
        """Every layer once, eagerly."""
        run_layers(self.scen.program, self.bound, self.buffers, self.streams)

    def capture(self) -> torch.cuda.CUDAGraph:
        """The layers in one graph, after an eager pass (JIT compilation, workspaces)."""
        self.run()
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.run()
        return graph
