"""A scenario on the simulator: its prediction (per-layer latency with its interval, the overlaps it
rests on, the replayed Timeline) and the per-node facts a result needs, labelled simulated
(`streamlab.runs.simulated_result` turns it into the same result as a measured run)."""

from __future__ import annotations

from dataclasses import dataclass

from streamlab.models.hardware import Ceilings
from streamlab.scenario import Scenario
from streamlab.sim.costs import node_costs
from streamlab.sim.predict import Prediction, predict
from streamlab.sim.profile import DeviceProfile
from streamlab.timeline import Timeline

__all__ = ["Simulation", "simulate_scenario"]


@dataclass(frozen=True)
class Simulation:
    """A layer simulated on a device profile: a prediction, not a measurement."""

    profile: DeviceProfile
    prediction: Prediction
    isolated_us: dict[str, float]  # each node alone, from the profile at the layer's shape (under its budget)
    kernels: dict[str, int]  # kernels per node
    ceilings: Ceilings  # roofline denominators: the profile's bandwidth, the device's datasheet peaks

    @property
    def timeline(self) -> Timeline:
        return self.prediction.timeline

    @property
    def per_layer_us(self) -> float:
        return self.prediction.per_layer_us


def simulate_scenario(scen: Scenario, profile: DeviceProfile, layers: int, *, other_model: bool = True) -> Simulation:
    """`other_model`: a model other than the profile's is scaled to (and the prediction says so), not
    refused: `run`, `compare` and `check` without a GPU fall back to the profile for any model."""
    prediction = predict(scen, profile, layers=layers, other_model=other_model)
    costs = node_costs(scen.layer, profile)
    budget = prediction.replay.budget
    stretch = budget.stretch if budget is not None else (1.0,) * len(costs.names)
    return Simulation(profile, prediction, {n: us * k for n, us, k in zip(costs.names, costs.alone_us, stretch)},
                      {n.name: profile.kernels(n) for n in scen.layer.nodes}, profile.ceilings.ceilings)
