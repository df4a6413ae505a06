"""The whole decode step: time per output token of the model, from its layers and the parts
outside them.

    step = dense layers x the dense layer + MoE layers x the scenario's layer + outside

The model's first `first_k_dense_replace` layers (GLM-5: 3 of 78) have a dense MLP instead of
the MoE; they run the scenario's schedule with the MoE block replaced by the dense MLP on the
launch stream (`dense_program`). Outside the layers, an estimate stated part by part, each with
a wide interval (nothing here is measured):
- embedding: the vocabulary-parallel lookup (a gather over [T, hidden], costed as the layer's
  input RMSNorm over the same tensor) and the all-reduce it needs under tensor parallelism;
- final norm: the layer's input RMSNorm (same op, same tensor);
- lm_head: a bf16 GEMM [T, hidden] x [hidden, vocab / tp], the op's roofline fit;
- logits gather: one all-reduce call's latency (all-gather of [T, vocab / tp] fp32);
- sampling: a softmax and top-k / top-p over [T, vocab], costed as the layer's index top-k;
- the host's time between steps (scheduler, input preparation) is not modelled.
"""

from __future__ import annotations

from dataclasses import dataclass

from streamlab.layer import Layer, Node, build_layer
from streamlab.results import PredictedStep, StepPart
from streamlab.scenario import Scenario
from streamlab.schedule.program import Launch, Program
from streamlab.sim.costs import node_costs
from streamlab.sim.predict import Prediction, predict, predict_layer
from streamlab.sim.profile import DeviceProfile

ESTIMATE_SPREAD = 0.5  # +- this fraction of each outside part: estimates, not measurements


@dataclass(frozen=True)
class Outside:
    """A part of the step outside the layers: its estimate, +- us, and how it was made."""

    name: str
    us: float
    spread_us: float
    how: str


@dataclass(frozen=True)
class StepPrediction:
    """Time per output token on a profile: a prediction with its interval."""

    scenario: str
    profile: str
    batch: int
    dense: Prediction
    moe: Prediction
    dense_layers: int
    moe_layers: int
    outside: tuple[Outside, ...]
    published_ms: float | None  # the profile's published figure for this layout, if any

    @property
    def layers_us(self) -> float:
        return self.dense_layers * self.dense.per_layer_us + self.moe_layers * self.moe.per_layer_us

    @property
    def per_token_ms(self) -> float:
        return (self.layers_us + sum(o.us for o in self.outside)) / 1e3

    @property
    def half_width_ms(self) -> float:
        return (self.dense_layers * self.dense.half_width_us + self.moe_layers * self.moe.half_width_us
                + sum(o.spread_us for o in self.outside)) / 1e3

    def record(self) -> PredictedStep:
        """The step as a run result keeps it (results.PredictedStep)."""
        return PredictedStep(
            per_token_ms=self.per_token_ms, low_ms=self.per_token_ms - self.half_width_ms,
            high_ms=self.per_token_ms + self.half_width_ms, published_ms=self.published_ms,
            dense_layers=self.dense_layers, dense_layer=self.dense.record(),
            moe_layers=self.moe_layers, moe_layer=self.moe.record(),
            outside=tuple(StepPart(o.name, o.us, o.spread_us, o.how) for o in self.outside))


def dense_program(program: Program, moe: set[str]) -> Program:
    """The scenario's schedule for a dense layer: the MoE block's launches replaced, where its
    first one was, by the dense MLP on the launch stream; the MoE all-reduce becomes the MLP's.
    A fork and join left around nothing are kept: waits without kernels between them cost
    nothing in the graph."""
    ops, placed = [], False
    for op in program.ops:
        if isinstance(op, Launch) and op.node in moe:
            if not placed:
                ops += [Launch(n, program.main, op.line) for n in ("dense_gate_up", "dense_act", "dense_down")]
                placed = True
            continue
        if isinstance(op, Launch) and op.node == "allreduce_moe":
            op = Launch("allreduce_mlp", op.stream, op.line)
        ops.append(op)
    return Program(ops, program.main)


def predict_step(scen: Scenario, profile: DeviceProfile, *, other_model: bool = False) -> StepPrediction:
    """The decode step of the scenario's model at its shape (module docstring)."""
    model = scen.model
    moe = predict(scen, profile, other_model=other_model)
    layer = scen.layer
    dense_layer = build_layer(layer.dims, layer.variant, dense=True)
    dense = predict_layer(f"{scen.name} (dense layer)", dense_layer,
                          dense_program(scen.program, set(layer.groups["moe"]) | {"moe"}),
                          profile, layers=scen.measure.layers, other_model=other_model)
    published = profile.reference.get("layouts", {}).get(scen.name, {}).get("step_ms")
    return StepPrediction(scen.name, profile.name, scen.shape.batch, dense, moe, model.first_k_dense_replace,
                          model.num_hidden_layers - model.first_k_dense_replace, outside(layer, profile),
                          published)


def outside(layer: Layer, profile: DeviceProfile) -> tuple[Outside, ...]:
    """The parts of a step outside its layers (module docstring)."""
    c = node_costs(layer, profile)
    us = dict(zip(c.names, c.alone_us))
    d, m = layer.dims, layer.dims.model
    vocab = m.vocab_size // d.shape.tp
    lm_head = Node("lm_head", "linear", {}, {}, flops=2 * d.tokens * m.hidden_size * vocab,
                   bytes=m.hidden_size * vocab * 2 + d.tokens * (m.hidden_size * 2 + vocab * 4))
    parts = [
        ("embedding", us["input_norm"] + us["allreduce_attn"],
         "a gather over [T, hidden] as the input RMSNorm, and one all-reduce"),
        ("final norm", us["input_norm"], "the layer's input RMSNorm: same op, same tensor"),
        ("lm_head", profile.fit_us(lm_head), (f"bf16 GEMM [{d.tokens}, {m.hidden_size}] x [{m.hidden_size}, "
                                              f"{vocab}]: the op's roofline fit, floor "
                                              f"{profile.ceilings.floor_us(lm_head):.1f} us")),
        ("logits gather", us["allreduce_attn"], "one all-reduce call"),
        ("sampling", us["idx_topk"], "softmax and top-k / top-p over [T, vocab], as the index top-k"),
    ]
    return tuple(Outside(name, t, ESTIMATE_SPREAD * t, f"estimate: {how}") for name, t, how in parts)
