"""All-reduce implementations captured inside the layer graph, and multi-process runs.

- `impls`: `choose(impl, world, device)` -> nccl | symm_mem | aiter | emulated all-reduce objects
  (`backend`, `__call__(*, x, out)`, `capture()`, `describe()`); `capture_hook(bound)` for
  measure.py; `emulated`: the one-GPU stand-in.
- `launch`: `launch(scenario, world, extra_args)` starts the ranks through torch's elastic launcher.
- `worker`: the rank entry point (`python -m streamlab.collective.worker run|sweep ...`).
- `sweep`: `sweep(world, impls, sizes, out)`, the all-reduce alone over message sizes.
- `watch`: per-rank liveness monitor and the launcher's one-message failure report.

Kept free of imports here: a rank starts its monitor (stdlib only) before importing torch.
"""
