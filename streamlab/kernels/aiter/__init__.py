"""The aiter backend: AMD's ROCm production kernels (the ones SGLang runs on MI355X) per node.

- `api`: the one table of aiter entry points we call and the parameters we pass;
- `signature`: that table checked against the installed sources (no import) or imported objects;
- `runtime`: the guard that loads aiter on ROCm, or fails with one message naming kernel and why;
- `nodes`: each op on aiter's kernels, with a per-node fallback to Triton that records its reason;
- `layouts`, `slots`: the weight / table layouts aiter wants and the top-k position -> slot step.

Importing this package imports neither aiter nor Triton: the guard must answer on any machine.
"""

from streamlab.kernels.aiter.runtime import AiterRuntime, Unmapped, require_aiter

__all__ = ["AiterRuntime", "Unmapped", "require_aiter"]
