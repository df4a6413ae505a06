"""The kernels before a tuning round, for the "before" column of the tune scripts.

They come from git history, not from copies in the scripts. Fill the git-ignored folder once,
then carry it to the device (`carry: [".baseline"]`):

    mkdir -p .baseline && for m in gemm moe topk attention; do
      git show REV:streamlab/kernels/triton/$m.py > .baseline/old_$m.py; done
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

FOLDER = Path(__file__).resolve().parent.parent / ".baseline"


def load(name: str):
    """The module .baseline/old_NAME.py, or None when it is not there (no "before" timing)."""
    path = FOLDER / f"old_{name}.py"
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location(f"old_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
