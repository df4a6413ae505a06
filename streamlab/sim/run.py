"""A scenario on the simulator: the same result and report as a measured run, labelled simulated."""

from __future__ import annotations

from streamlab.analysis import summarize
from streamlab.models.hardware import HARDWARE
from streamlab.report.result import floor_us, layer_result
from streamlab.scenario import Scenario
from streamlab.sim.costs import isolated_us
from streamlab.sim.engine import per_layer_us, simulate
from streamlab.sim.profile import DeviceProfile
from streamlab.timeline import Timeline


def simulate_scenario(scen: Scenario, profile: DeviceProfile, layers: int) -> tuple[dict, Timeline]:
    timeline = simulate(scen.layer, scen.program, profile, layers)
    hw = HARDWARE.get(profile.name)
    peaks = (hw.bf16_tflops, hw.fp8_tflops) if hw else (1000.0, 2000.0)
    result = layer_result(
        scen, f"simulated, profile {profile.name}", [per_layer_us(timeline, layers)], [],
        summarize(timeline), {n.name: isolated_us(scen.layer, profile, n.name) for n in scen.layer.nodes},
        {n.name: profile.kernels(n) for n in scen.layer.nodes},
        {n.name: floor_us(n, profile.hbm_gbs.value, *peaks) for n in scen.layer.nodes},
        {n.name: "simulated" for n in scen.layer.nodes}, f"simulated ({profile.name})")
    result["sim_profile"] = [{"parameter": k, "value": v, "source": src} for k, v, src in profile.describe()]
    return result, timeline
