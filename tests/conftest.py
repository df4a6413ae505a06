"""Test set-up: without a GPU, Triton kernels run in the interpreter on the CPU.

TRITON_INTERPRET must be set before any kernel module is imported, so it is set here.
"""

import os

import pytest


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
