"""The aiter backend (ROCm production kernels): the guard that decides whether it can load.

`import aiter` raises on machines without ROCm, so aiter is imported only where torch is a HIP
build, and every way it can fail ends in one message naming the reason.
"""

from __future__ import annotations

import importlib.util

import torch

from streamlab.errors import Failure


def require_aiter() -> None:
    if not torch.version.hip:
        raise Failure("backend aiter needs ROCm: this torch is a "
                      f"{'CUDA' if torch.version.cuda else 'CPU'} build ({torch.__version__}); "
                      "use --backend triton")
    if importlib.util.find_spec("aiter") is None:
        raise Failure("backend aiter: the aiter package is not installed "
                      "(pip install -e '.[rocm]' installs amd-aiter)")
    try:
        import aiter  # noqa: F401
    except Exception as e:  # aiter raises plain Exceptions when ROCm files are missing
        raise Failure(f"backend aiter: import aiter failed: {e}") from None
    raise Failure("backend aiter: its node kernels are not written yet; use --backend triton")
