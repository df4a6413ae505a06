"""On-device calibration (`streamlab calibrate --measure`, `--for`): orchestration of the stages
that measure a device profile of this GPU, and of the pairs a profile lacks.

- `run`: `calibrate_on_device` (every stage, fit, write) and `pairs_for` (pairs on demand);
- `plan`: the stages, derived from the layouts (variants, single-stream layouts, the pairs the
  schedules create: `sim.predict.missing_pairs`), and their estimated seconds;
- `workdir`: the work folder of finished stages, its manifest, resume and refusal;
- `runner`: the stages on the GPU, each in a process of its own; `device`: the GPU's facts;
- `pairbench`: the pairwise micro-benchmark's graphs, timed by the executor's harness;
- `progress`: the stage and the time left.

Kept free of imports here: `pairbench` and `runner` need torch and a GPU.
"""

__all__ = ["device", "pairbench", "plan", "progress", "run", "runner", "workdir"]
