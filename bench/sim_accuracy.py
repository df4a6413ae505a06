"""Simulator accuracy on measured runs: the profile is calibrated on the serial layout (and
isolated nodes); the dual-stream layouts are held out and compared here.

    python bench/sim_accuracy.py bench/results/h200-2026-11-21/matrix.json streamlab/sim/profiles/h200.yaml
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from streamlab.scenario import load
from streamlab.sim.engine import per_layer_us, simulate
from streamlab.sim.profile import load_profile

ROOT = Path(__file__).resolve().parent.parent
LAYOUTS = ("serial", "pr23562", "a_v4", "a_v4_moe_dual")


def main(matrix: Path, profile_path: str) -> str:
    measured = {(r["scenario"], r["batch"]): r["measured"]["per_layer_us"]["median"]
                for r in json.loads(matrix.read_text()) if "measured" in r}
    profile = load_profile(profile_path)
    lines = [f"profile {profile.name} vs {matrix}", "",
             "| batch | layout | simulated us | measured us | error | held out |", "|---|---|---|---|---|---|"]
    errors, rankings = [], []
    for batch in sorted({b for _, b in measured}):
        sim = {}
        for name in LAYOUTS:
            scen = load(ROOT / "scenarios" / f"{name}.yaml").override(batch=batch)
            sim[name] = per_layer_us(simulate(scen.layer, scen.program, profile, 4), 4)
            err = (sim[name] - measured[(name, batch)]) / measured[(name, batch)]
            if name != "serial":
                errors.append(abs(err))
            lines.append(f"| {batch} | {name} | {sim[name]:.1f} | {measured[(name, batch)]:.1f} | "
                         f"{100 * err:+.1f}% | {'yes' if name != 'serial' else 'no (calibration)'} |")
        by_sim = sorted(LAYOUTS, key=sim.get)
        by_meas = sorted(LAYOUTS, key=lambda n: measured[(n, batch)])
        rankings.append((batch, by_sim, by_meas))
    lines += ["", f"mean absolute percentage error over held-out layouts: {100 * sum(errors) / len(errors):.2f}%", ""]
    for batch, s, m in rankings:
        lines.append(f"- batch {batch}: ranking {'identical' if s == m else 'DIFFERS'}: simulated "
                     f"{' < '.join(s)}; measured {' < '.join(m)}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(main(Path(sys.argv[1]), sys.argv[2]))
