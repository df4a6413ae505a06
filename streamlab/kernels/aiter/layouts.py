"""Layouts aiter's kernels want that differ from the layer's own, made once per source tensor.

- MoE weights in 16x16 MFMA tiles (what `fused_moe`'s CK/asm kernels load; SGLang shuffles
  them the same way at model load).
- The rope table split into contiguous cos and sin of shape [positions, 1, 1, rope/2] (the 2c
  rope kernel indexes them without strides).

Only read-only tensors (weights, the rope table) are prepared: the copy is made on the first
(eager) call and reused by every later call and graph replay; a source written in place since
(its version counter moved) is prepared again, which must not happen during a capture.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.weak import WeakTensorKeyDictionary

SHUFFLE_N, SHUFFLE_K_BYTES = 16, 16  # a tile row of 16 bytes; tiles of 16 rows x 32 bytes


def shuffle_16x16(w: torch.Tensor) -> torch.Tensor:
    """1-byte weight [..., N, K] reordered into aiter's (16, 16) layout: the matrix is cut into
    16-row x 32-byte tiles stored row-block-major; inside a tile its two 16-byte halves follow
    each other, each as 16 rows of 16 bytes. Element (n, k) lands at flat offset
    ((n // 16) * (K // 32) + k // 32) * 512 + ((k % 32) // 16) * 256 + (n % 16) * 16 + k % 16."""
    n, k = w.shape[-2:]
    if w.element_size() != 1 or n % SHUFFLE_N or k % (2 * SHUFFLE_K_BYTES):
        raise ValueError(f"16x16 shuffle needs 1-byte elements, rows % 16 and cols % 32, "
                         f"got {tuple(w.shape)} {w.dtype}")
    tiles = w.reshape(-1, n // SHUFFLE_N, SHUFFLE_N, k // (2 * SHUFFLE_K_BYTES), 2, SHUFFLE_K_BYTES)
    out = tiles.permute(0, 1, 3, 4, 2, 5).contiguous().view(w.shape)
    out.is_shuffled = True  # fused_moe picks its CK kernel build by this attribute of w1
    return out


class Prepared:
    """`make(source)` cached per source tensor for as long as the source lives."""

    def __init__(self, make: Callable[[torch.Tensor], object]) -> None:
        self._make = make
        self._cache = WeakTensorKeyDictionary()

    def __call__(self, source: torch.Tensor) -> object:
        hit = self._cache.get(source)
        if hit is None or hit[0] != source._version:
            if source.is_cuda and torch.cuda.is_current_stream_capturing():
                raise RuntimeError("an aiter layout was first needed inside a graph capture; "
                                   "run the node eagerly once before capturing")
            hit = (source._version, self._make(source))
            self._cache[source] = hit
        return hit[1]


def _cos_sin_tables(cos_sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[positions, rope] (cos | sin halves) -> cos, sin each [positions, 1, 1, rope / 2]."""
    half = cos_sin.shape[-1] // 2
    return tuple(part.contiguous().view(cos_sin.shape[0], 1, 1, half)
                 for part in (cos_sin[:, :half], cos_sin[:, half:]))


shuffled = Prepared(shuffle_16x16)
rope_tables = Prepared(_cos_sin_tables)
