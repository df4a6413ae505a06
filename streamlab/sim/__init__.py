"""The simulator: the same DAG and schedule on a device profile, producing a Timeline.

Levels, each built on the one before:
- `run(layer, program, profile)`: one simulated replay (`Replay`): its per-layer latency, the
  overlaps it created, its Timeline on demand; what a schedule search ranks with.
- `predict(scenario, profile)`: a `Prediction`: the latency with its interval and its parts, which
  overlaps the profile measured (`layout_overlaps`, `missing_pairs`, `measure_command` for
  `calibrate --for`), the nodes scaled to this shape.
- `predict_step(scenario, profile)`: the whole decode step, dense layers and the parts outside
  the layers included.
Profiles: `load_profile` / `dump_profile` (sim/profile_file.py, validated), `DeviceProfile`
(sim/profile.py), provenance and the kernels' hash (sim/provenance.py); fitting them from
measured runs: sim/calibrate.py and sim/pairwise.py (`add_pairs`).
"""

from streamlab.sim.engine import Overlap, Replay, run, simulate
from streamlab.sim.pairwise import add_pairs
from streamlab.sim.predict import (
           Prediction,
           layout_overlaps,
           measure_command,
           missing_pairs,
           predict,
)
from streamlab.sim.profile import DeviceProfile, PairMeasure, Param
from streamlab.sim.profile_file import dump_profile, load_profile
from streamlab.sim.provenance import kernel_hash, kernel_warning
from streamlab.sim.step import StepPrediction, predict_step

__all__ = ["DeviceProfile", "Overlap", "PairMeasure", "Param", "Prediction", "Replay", "StepPrediction",
           "add_pairs", "dump_profile", "kernel_hash", "kernel_warning", "layout_overlaps", "load_profile",
           "measure_command", "missing_pairs", "predict", "predict_step", "run", "simulate"]
