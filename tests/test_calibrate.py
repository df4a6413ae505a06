"""Calibration reads only serial measurements; its profile reproduces the serial layer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streamlab.errors import Failure
from streamlab.scenario import load
from streamlab.sim.calibrate import calibrate
from streamlab.sim.engine import per_layer_us, simulate
from streamlab.sim.profile import dump_profile, load_profile

SCENARIOS = Path(__file__).parent.parent / "scenarios"


def measured(name: str, batch: int, node_us: float, layer_us: float) -> dict:
    scen = load(SCENARIOS / f"{name}.yaml").override(batch=batch)
    stat = {"median": node_us, "p20": node_us, "p80": node_us, "n": 4}
    return {"scenario": name, "shape": {"batch": batch}, "device": "NVIDIA H200", "measured": {
        "per_layer_us": {"median": layer_us, "p20": layer_us, "p80": layer_us},
        "kernels_per_layer": 2 * len(scen.layer.nodes), "ceilings": {"copy_gbs": 4150.0},
        "nodes": {n.name: {"in_graph_us": stat, "isolated_us": node_us * 1.1, "kernels": 2}
                  for n in scen.layer.nodes}}}


def test_profile_from_serial_runs_reproduces_them(tmp_path):
    n = len(load(SCENARIOS / "serial.yaml").layer.nodes)
    runs = [measured("serial", 4, 3.0, 3.0 * n + 0.5 * 2 * n), measured("serial", 64, 5.0, 5.0 * n + 0.5 * 2 * n),
            measured("a_v4_moe_dual", 4, 99.0, 999.0)]
    path = tmp_path / "matrix.json"
    path.write_text(json.dumps(runs))
    prof = calibrate([path], "h200")
    assert prof.launch_gap_us.value == pytest.approx(0.5)
    assert prof.node_us["qkv_a_proj"] == {4: 3.0, 64: 5.0}  # the dual run is held out
    assert prof.node_us["shared_down"] == {4: pytest.approx(99.0 * 1.1)}  # only isolated from it
    assert prof.streams == "cuda"
    (tmp_path / "h200.yaml").write_text(dump_profile(prof))
    again = load_profile(str(tmp_path / "h200.yaml"))
    assert again.node_us == prof.node_us and again.launch_gap_us == prof.launch_gap_us
    serial = load(SCENARIOS / "serial.yaml")
    tl = simulate(serial.layer, serial.program, again, layers=4)
    # n nodes of 3 us in 2 kernels each, 0.5 us after every kernel (the replay's last one uncounted)
    assert per_layer_us(tl, 4) == pytest.approx(3.0 * n + 0.5 * 2 * n - 0.5 / 4)
    assert prof.node_kernels["experts"] == 2


def test_calibrate_needs_a_serial_run(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps([measured("a_v4", 4, 3.0, 100.0)]))
    with pytest.raises(Failure, match="no measured run of the 'serial' layout"):
        calibrate([path], "x")
