"""Positions -> KV slots through the block table: the step after aiter's top-k.

aiter's `top_k_per_row_decode` returns logical positions; the layer's `topk_slots` node hands
the attention physical cache slots (as SGLang's separate topk-transform kernel does). One small
Triton launch does the mapping in place of the half-dozen torch ops it would take.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _positions_to_slots_kernel(pos, block_table, out, k, s_pos, s_bt, s_out, PAGE: tl.constexpr,
                               BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    live = cols < k
    p = tl.load(pos + row * s_pos + cols, mask=live, other=-1)
    valid = live & (p >= 0)
    page = tl.load(block_table + row * s_bt + p // PAGE, mask=valid, other=0)
    tl.store(out + row * s_out + cols, tl.where(valid, page * PAGE + p % PAGE, -1), mask=live)


def positions_to_slots(positions: torch.Tensor, block_table: torch.Tensor, page: int,
                       out: torch.Tensor) -> None:
    """out[r, j] = block_table[r, p // page] * page + p % page for p = positions[r, j] >= 0,
    else -1; only out's own columns are read from `positions` (which may be wider)."""
    rows, k = out.shape
    block = min(1024, triton.next_power_of_2(k))
    _positions_to_slots_kernel[(rows, triton.cdiv(k, block))](
        positions, block_table, out, k, positions.stride(0), block_table.stride(0), out.stride(0),
        PAGE=page, BLOCK=block)
