"""The simulator's per-layer latencies on the shipped profiles and scenarios, pinned.

Recorded with the engine of commit f95869a (before the engine was rebuilt for speed) at 4 layers
per graph, the measure default. A change that moves them is a model change: say so in its commit
and update the numbers here together with the reason.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from streamlab.scenario import load
from streamlab.sim.engine import per_layer_us, simulate
from streamlab.sim.profile import load_profile

SCENARIOS = Path(__file__).parent.parent / "scenarios"
BATCHES = (1, 4, 16, 64)
PINNED = {  # profile -> scenario -> per-layer us at BATCHES
    "h100": {
        "a_v4": (165.365022, 206.627534, 323.788244, 596.047391),
        "a_v4_moe_dual": (166.587288, 203.595463, 327.763959, 587.161856),
        "pr23562": (170.225311, 211.55734, 329.405426, 601.652843),
        "pr23562_cuda": (159.822478, 200.772699, 317.854803, 593.496412),
        "serial": (158.6235, 199.696, 317.819, 591.545),
        "serial_moe_unfused": (169.6695, 207.661, 334.0532, 599.3326),
    },
    "h200": {
        "a_v4": (204.257525, 250.314725, 351.920625, 666.143325),
        "a_v4_moe_dual": (207.384535, 253.729365, 355.463365, 671.263565),
        "pr23562": (210.116485, 256.232185, 358.471685, 674.493485),
        "pr23562_cuda": (199.054625, 244.836025, 346.991055, 655.929755),
        "serial": (217.812825, 263.591825, 365.892825, 687.509825),
        "serial_moe_unfused": (237.094025, 283.577025, 385.719025, 718.503025),
    },
    "mi355x": {
        "a_v4": (234.147358, 289.2752, 471.580003, 863.240677),
        "a_v4_moe_dual": (246.85539, 303.4752, 490.556951, 890.724688),
        "pr23562": (241.910292, 297.0752, 479.532817, 871.658791),
        "pr23562_cuda": (239.733083, 294.8752, 477.242166, 869.171299),
        "serial": (214.922209, 269.975, 451.984147, 842.316242),
        "serial_moe_unfused": (232.129948, 288.675, 475.462267, 874.379087),
    },
}


@pytest.mark.parametrize("profile_name", sorted(PINNED))
def test_per_layer_latency_is_pinned(profile_name):
    profile = load_profile(profile_name)
    for scenario, pinned in PINNED[profile_name].items():
        base = load(SCENARIOS / f"{scenario}.yaml")
        for batch, want in zip(BATCHES, pinned):
            scen = base.override(batch=batch)
            got = per_layer_us(simulate(scen.layer, scen.program, profile, 4), 4)
            assert got == pytest.approx(want, abs=1e-5), f"{profile_name} {scenario} batch {batch}"
