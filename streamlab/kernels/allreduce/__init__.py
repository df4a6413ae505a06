"""All-reduce implementations: what the executor binds to the layer's all-reduce nodes.

- `impls`: `choose(impl, world, device)` -> nccl | symm_mem | aiter | emulated all-reduce objects
  (`backend`, `__call__(*, x, out)`, `capture()`, `describe()`); `capture_hook(bound)`, held
  around every graph capture; `bandwidths` (nccl-tests columns).
- `emulated`: the one-GPU stand-in (a spin kernel of a set duration, then the copy).
- `progress`: `in_collective(name)`, which brackets every collective call for a rank's liveness
  monitor (streamlab.collective.watch), a no-op outside a multi-process run.

Kept free of imports here: a rank installs its monitor (stdlib only) before importing torch.
"""

__all__ = ["emulated", "impls", "progress"]
