"""A scenario on the simulator: its Timeline and the per-node facts a result needs, labelled
simulated (`streamlab.runs.simulated_result` turns it into the same result as a measured run)."""

from __future__ import annotations

from dataclasses import dataclass

from streamlab.models.hardware import HARDWARE, Ceilings
from streamlab.scenario import Scenario
from streamlab.sim.engine import isolated_us, per_layer_us, simulate
from streamlab.sim.profile import Profile
from streamlab.timeline import Timeline

__all__ = ["Simulation", "simulate_scenario"]


@dataclass(frozen=True)
class Simulation:
    """A layer simulated on a device profile: a prediction, not a measurement."""

    profile: Profile
    timeline: Timeline
    per_layer_us: float  # graph time / layers, as a replay timed with events reports it
    isolated_us: dict[str, float]  # each node alone, from the profile
    kernels: dict[str, int]  # kernels per node
    ceilings: Ceilings  # roofline denominators: the profile's bandwidth, the device's datasheet peaks


def simulate_scenario(scen: Scenario, profile: Profile, layers: int) -> Simulation:
    timeline = simulate(scen.layer, scen.program, profile, layers)
    hw = HARDWARE.get(profile.name)
    peaks = (hw.ceilings.bf16_tflops, hw.ceilings.fp8_tflops) if hw else (1000.0, 2000.0)
    return Simulation(
        profile, timeline, per_layer_us(timeline, layers),
        {n.name: isolated_us(scen.layer, profile, n.name) for n in scen.layer.nodes},
        {n.name: profile.kernels(n) for n in scen.layer.nodes}, Ceilings(profile.hbm_gbs.value, *peaks))
