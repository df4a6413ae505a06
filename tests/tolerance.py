"""Comparisons of a backend's tensors with the reference's, shared by the kernel tests: each
says what "equal enough" means for one kind of tensor."""

from __future__ import annotations

import torch

from streamlab.kernels.quant import FP8


def equal(got, want):
    assert torch.equal(got, want)


def same_sets(got, want):
    """Rows equal as sets (top-k slots come in any order)."""
    assert [sorted(r) for r in got.tolist()] == [sorted(r) for r in want.tolist()]


def close_bf16(got, want):
    torch.testing.assert_close(got.float(), want.float(), rtol=1e-2, atol=1e-2)


def close_fp8(got, want, identical: float = 0.999):
    """At least `identical` of the bytes the same; every value within one e4m3 step (2^-3
    relative) of the other."""
    g8, w8 = got.contiguous().view(torch.uint8), want.contiguous().view(torch.uint8)
    assert (g8 == w8).float().mean() >= identical
    torch.testing.assert_close(got.float(), want.float(), rtol=0.125, atol=2.0 ** -9)


def close_cache(got, want):
    (close_fp8 if got.dtype == FP8 else close_bf16)(got, want)


def close_index_cache(got, want, identical: float = 0.999):
    """Whole index-K caches, whatever the layout: scale bytes exact, K bytes by the fp8 rule."""
    pages, page, row = got.shape
    split = page * (row - 4)
    g, w = got.view(pages, -1), want.view(pages, -1)
    assert torch.equal(g[:, split:], w[:, split:])
    close_fp8(g[:, :split].contiguous().view(FP8), w[:, :split].contiguous().view(FP8), identical)
