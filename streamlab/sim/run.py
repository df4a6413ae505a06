"""A scenario on the simulator: the same result and report as a measured run, labelled simulated,
with the prediction interval (`result["prediction"]`, sim/predict.py)."""

from __future__ import annotations

from streamlab.analysis import summarize
from streamlab.report.result import layer_result
from streamlab.scenario import Scenario
from streamlab.sim.costs import node_costs
from streamlab.sim.predict import Prediction, predict
from streamlab.sim.profile import DeviceProfile
from streamlab.timeline import Timeline


def simulate_scenario(scen: Scenario, profile: DeviceProfile, layers: int) -> tuple[dict, Timeline]:
    """`run`, `compare` and `check` without a GPU: the profile is their fallback for any model, so a
    model other than the profile's is scaled to (and the prediction says so), not refused."""
    prediction = predict(scen, profile, layers=layers, other_model=True)
    return simulated_result(scen, profile, prediction), prediction.timeline


def simulated_result(scen: Scenario, profile: DeviceProfile, prediction: Prediction) -> dict:
    """The run result of a prediction: what a measured run reports, from the simulated replay."""
    costs = node_costs(scen.layer, profile)
    hw = profile.ceilings
    result = layer_result(
        scen, f"simulated, profile {profile.name}", [prediction.per_layer_us], [],
        summarize(prediction.timeline), dict(zip(costs.names, costs.alone_us)),
        {n.name: profile.kernels(n) for n in scen.layer.nodes},
        {n.name: hw.floor_us(n) for n in scen.layer.nodes},
        {n.name: "simulated" for n in scen.layer.nodes}, f"simulated ({profile.name})")
    result["sim_profile"] = [{"parameter": k, "value": v, "source": src} for k, v, src in profile.describe()]
    result["prediction"] = prediction.to_json()
    return result
