"""Multi-process runs, by process side (the all-reduce implementations themselves are kernels:
streamlab.kernels.allreduce).

Launcher side (the `streamlab` process):
- `launch`: `launch_run(scenarios, world, ...)` (`streamlab run --world N`) and
  `launch_sweep(world, ...)` (`streamlab allreduce`) start the ranks through torch's elastic
  launcher, watch them and end in one Failure naming the rank that failed.
Rank side (one process per GPU, started by the launcher):
- `worker`: the ranks' one entry point (`python -m streamlab.collective.worker`, internal);
- `rank`: this rank's GPU, process groups and control-plane collectives;
- `layer_runs`: scenarios with a real all-reduce, rank 0 writing one result with every rank's figures;
- `sweep`: the all-reduce alone over message sizes.
Both sides:
- `watch`: each rank's liveness monitor, and the launcher's one-message failure report.

Kept free of imports here: a rank starts its monitor (stdlib only) before importing torch.
"""

__all__ = ["launch", "layer_runs", "rank", "sweep", "watch", "worker"]
