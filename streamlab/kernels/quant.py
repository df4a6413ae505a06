"""FP8 formats shared by every backend: group quantisation, block-scale dequantisation and the
paged index-K cache layout (plain and 16x16-preshuffled), written once so that backends agree."""

from __future__ import annotations

import torch

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0
GROUP = 128
SHUFFLE_TILE = 16


def quant_groups(x: torch.Tensor, group: int = GROUP, ue8m0: bool = False,
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantise the last dim of `x` in groups: returns (fp8 values, fp32 scale per group).

    scale = max(amax, 1e-4) / 448; with ue8m0 it is rounded up to a power of two.
    """
    *lead, k = x.shape
    if k % group:
        raise ValueError(f"last dim {k} is not a multiple of the quantisation group {group}")
    g = x.float().reshape(*lead, k // group, group)
    # divide by a tensor: on CUDA, torch divides by a Python number through its reciprocal,
    # which is not the correctly rounded quotient the kernels compute
    scale = g.abs().amax(-1).clamp_min(1e-4) / torch.tensor(FP8_MAX, device=x.device)
    if ue8m0:
        scale = torch.exp2(torch.ceil(torch.log2(scale)))
    q = (g / scale.unsqueeze(-1)).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return q.reshape(*lead, k), scale


def dequant_groups(q: torch.Tensor, scale: torch.Tensor, group: int = GROUP) -> torch.Tensor:
    *lead, k = q.shape
    return (q.float().reshape(*lead, k // group, group) * scale.unsqueeze(-1)).reshape(*lead, k)


def dequant_blocks(w: torch.Tensor, scale: torch.Tensor, block: int = GROUP) -> torch.Tensor:
    """Block-scaled weight [..., N, K] with scales [..., ceil(N/128), K/128] -> fp32."""
    n, k = w.shape[-2:]
    s = scale.repeat_interleave(block, -2)[..., :n, :].repeat_interleave(block, -1)[..., :k]
    return w.float() * s


def to_fp8(x: torch.Tensor) -> torch.Tensor:
    return x.float().clamp(-FP8_MAX, FP8_MAX).to(FP8)


# -- paged index-K cache --------------------------------------------------------------------
# One page holds page_size tokens: first page_size * 128 fp8 bytes of K, then page_size fp32
# scales. With preshuffle the K bytes of a page are laid out as 16x16 tiles (MFMA-friendly):
# byte (slot s, dim d) sits at (s//16)*16*128 + (d//16)*256 + (s%16)*16 + d%16.

def k_byte_offsets(page_size: int, head_dim: int, preshuffle: bool, device=None) -> torch.Tensor:
    """[page_size, head_dim] byte offsets of each K element inside a page."""
    s = torch.arange(page_size, device=device).unsqueeze(1)
    d = torch.arange(head_dim, device=device).unsqueeze(0)
    if not preshuffle:
        return s * head_dim + d
    if page_size % SHUFFLE_TILE or head_dim % SHUFFLE_TILE:
        raise ValueError(f"preshuffled index cache needs page_size and head_dim multiples of 16, "
                         f"got {page_size} and {head_dim}")
    return ((s // SHUFFLE_TILE) * SHUFFLE_TILE * head_dim + (d // SHUFFLE_TILE) * SHUFFLE_TILE ** 2
            + (s % SHUFFLE_TILE) * SHUFFLE_TILE + d % SHUFFLE_TILE)


def index_cache_write(cache: torch.Tensor, slots: torch.Tensor, k_fp8: torch.Tensor,
                      scale: torch.Tensor, preshuffle: bool) -> None:
    """Store fp8 K rows [n, D] and fp32 scales [n] at `slots` of cache [pages, page, D + 4]."""
    pages, page, row = cache.shape
    head_dim = row - 4
    flat = cache.view(pages, page * row)
    keep = slots >= 0
    slots, k_fp8, scale = slots[keep], k_fp8[keep], scale[keep]
    p, i = slots // page, slots % page
    offs = k_byte_offsets(page, head_dim, preshuffle, cache.device)[i]  # [n, D]
    flat[p.unsqueeze(1), offs] = k_fp8.view(torch.uint8)
    sbytes = scale.float().contiguous().view(torch.uint8).view(-1, 4)
    soffs = page * head_dim + i.unsqueeze(1) * 4 + torch.arange(4, device=cache.device)
    flat[p.unsqueeze(1), soffs] = sbytes


def index_cache_read(cache: torch.Tensor, pages: torch.Tensor, preshuffle: bool,
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Read whole pages: returns K fp8 [len(pages), page, D] and scales fp32 [len(pages), page]."""
    _, page, row = cache.shape
    head_dim = row - 4
    flat = cache.view(cache.shape[0], page * row)[pages]  # [n, page*row]
    offs = k_byte_offsets(page, head_dim, preshuffle, cache.device)
    k = flat[:, offs.reshape(-1)].reshape(-1, page, head_dim).view(FP8)
    s = flat[:, page * head_dim:].contiguous().view(torch.float32)
    return k, s
