"""Test set-up: without a GPU, Triton kernels run in the interpreter on the CPU; in CI (env CI
set, as .ci/run does) hypothesis keeps no example database, so every run draws afresh and writes
nothing into the checkout.

TRITON_INTERPRET must be set before any kernel module is imported, so it is set here.
"""

import os

import pytest
from hypothesis import settings

settings.register_profile("ci", database=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


def _has_gpu() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:
        return False


HAS_GPU = _has_gpu()
if not HAS_GPU:
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if HAS_GPU:
        return
    skip = pytest.mark.skip(reason="needs a CUDA/HIP GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def launched(monkeypatch) -> list[tuple[str, int]]:
    """(kernel, programs) of every Triton launch while the test runs (test_sm_budget, test_sm_layouts)."""
    import math  # here, not at the top: triton is imported only after TRITON_INTERPRET is set

    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    seen: list[tuple[str, int]] = []
    for cls in (JITFunction, InterpretedFunction):
        def spy(self, *args, grid, warmup, _run=cls.run, **kwargs):
            seen.append((self.fn.__name__, math.prod(grid)))
            return _run(self, *args, grid=grid, warmup=warmup, **kwargs)
        monkeypatch.setattr(cls, "run", spy)
    return seen
