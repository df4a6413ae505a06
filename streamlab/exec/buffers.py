"""Every buffer of a run, allocated once: weights in their real formats (one set per layer),
caches filled for the context, paged block tables, and activations shared by all layers.

Contents come from a seed and are random, never zeros. Outputs are poisoned (NaN / -1) so an
unwritten element shows up in a check instead of passing silently.
"""

from __future__ import annotations

import math
import zlib

import torch

from streamlab.kernels.quant import FP8, quant_groups
from streamlab.kernels.tensors import TORCH_DTYPES, with_views
from streamlab.layer import Layer, TensorSpec

CHUNK = 1 << 24  # elements generated at a time: bounds the fp32 scratch


def _gen(seed: int, name: str, layer: int, device) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed * 1_000_003 + zlib.crc32(f"{name}/{layer}".encode()))
    return g


def _randn_into(t: torch.Tensor, g: torch.Generator, std: float = 1.0, mean: float = 0.0) -> None:
    flat = t.view(-1)
    for i in range(0, flat.numel(), CHUNK):
        part = flat[i: i + CHUNK]
        part.copy_(torch.randn(part.shape, generator=g, device=t.device) * std + mean)


def _random_fp8(t: torch.Tensor, g: torch.Generator) -> None:
    """Uniformly random e4m3 codes with the exponent's top bit cleared: |v| in [2^-9, 1.875],
    log-uniform, never NaN; several times faster than casting normals for GBs of weights."""
    t.view(torch.uint8).random_(0, 256, generator=g).bitwise_and_(0xBF)


class Buffers:
    """Tensors of `layers` consecutive decode layers of one rank."""

    def __init__(self, layer: Layer, layers: int = 1, device: str | torch.device = "cpu",
                 seed: int = 0) -> None:
        self.layer = layer
        self.layers = layers
        self.device = torch.device(device)
        self.seed = seed
        self.shared: dict[str, torch.Tensor] = {}
        self.per_layer: list[dict[str, torch.Tensor]] = [{} for _ in range(layers)]
        for spec in layer.tensors.values():
            if spec.view is not None:
                continue
            if spec.per_layer:
                for i in range(layers):
                    self.per_layer[i][spec.name] = self._make(spec, i)
            else:
                self.shared[spec.name] = self._make(spec, 0)
        self._bound = [self._bind(i) for i in range(layers)]

    def tensors(self, layer_index: int = 0) -> dict[str, torch.Tensor]:
        """Name -> tensor (views included) as the kernels of layer `layer_index` see them."""
        return self._bound[layer_index]

    def _bind(self, i: int) -> dict[str, torch.Tensor]:
        return with_views(self.layer, {**self.shared, **self.per_layer[i]})

    # -- contents ------------------------------------------------------------------------
    def _make(self, spec: TensorSpec, layer_index: int) -> torch.Tensor:
        t = torch.empty(spec.shape, dtype=TORCH_DTYPES[spec.dtype], device=self.device)
        g = _gen(self.seed, spec.name, layer_index, self.device)
        dims = self.layer.dims
        name = spec.name
        if spec.kind == "weight":
            self._fill_weight(t, spec, g)
        elif name == "kv_cache":
            _random_fp8(t, g) if t.dtype == FP8 else _randn_into(t, g)
        elif name == "index_k_cache":
            self._fill_index_cache(t, g)
        elif name == "kv_scale":
            t.fill_(0.75)
        elif name in ("hidden", "residual"):
            _randn_into(t, g, 1.0)
        elif spec.kind == "meta":
            self._fill_meta(t, name, dims)
        elif t.is_floating_point():
            t.fill_(float("nan")) if t.dtype != FP8 else t.view(torch.uint8).fill_(0x7F)
        else:
            t.fill_(-1)
        return t

    def _fill_weight(self, t: torch.Tensor, spec: TensorSpec, g: torch.Generator) -> None:
        name = spec.name
        if name.endswith("_scale"):
            # block scales chosen so dequantised weights have std ~ 1/sqrt(fan_in)
            fan_in = self.layer.tensors[name[: -len("_scale")]].shape[-1]
            t.copy_(torch.rand(t.shape, generator=g, device=t.device) + 0.5).mul_(fan_in ** -0.5)
        elif name.startswith("w_") and name.endswith("norm") or name.startswith("b_"):
            base = 0.0 if name.startswith("b_") else 1.0
            _randn_into(t, g, 0.1, base)
        elif name == "e_score_bias":
            _randn_into(t, g, 0.1)
        elif t.dtype == FP8:
            _random_fp8(t, g)
        else:
            _randn_into(t, g, spec.shape[-1] ** -0.5)

    def _fill_index_cache(self, t: torch.Tensor, g: torch.Generator) -> None:
        """Random K rows quantised like the store kernel does (so the scales are ue8m0)."""
        pages, page, row = t.shape
        k = torch.empty(pages * page, row - 4, device=t.device)
        _randn_into(k, g, 1.0)
        q, s = quant_groups(k, ue8m0=True)
        flat = t.view(pages, page * row)
        # layout-independent fill: random K bytes in the K region, scales after them
        flat[:, : page * (row - 4)] = q.view(torch.uint8).reshape(pages, -1)
        flat[:, page * (row - 4):] = s.reshape(pages, page).contiguous().view(torch.uint8)

    def _fill_meta(self, t: torch.Tensor, name: str, dims) -> None:
        s = dims.shape
        g = _gen(self.seed, "block_table", 0, "cpu")
        table = torch.randperm(dims.num_pages, generator=g).reshape(s.batch, dims.pages_per_seq)
        pos = torch.full((s.batch,), s.context - 1, dtype=torch.int64)
        if name == "block_table":
            t.copy_(table)
        elif name == "seq_lens":
            t.fill_(s.context)
        elif name == "positions":
            t.copy_(pos)
        elif name == "slot_mapping":
            t.copy_(table[torch.arange(s.batch), pos // s.page_size] * s.page_size + pos % s.page_size)
        elif name == "rope_cos_sin":
            rot = t.shape[1]
            inv = dims.model.rope_theta ** (-torch.arange(0, rot, 2, dtype=torch.float64) / rot)
            ang = torch.arange(t.shape[0], dtype=torch.float64)[:, None] * inv[None, :]
            t.copy_(torch.cat((ang.cos(), ang.sin()), 1))
        else:
            raise KeyError(f"no initialiser for meta tensor {name}")

    def mutable(self) -> dict[str, torch.Tensor]:
        """Every tensor a layer writes: activations and caches, keyed `name` or `name@layer`."""
        out = {n: t for n, t in self.shared.items() if self.layer.tensors[n].kind == "act"}
        for i, d in enumerate(self.per_layer):
            out.update({f"{n}@{i}": t for n, t in d.items() if self.layer.tensors[n].kind == "cache"})
        return out

    def save(self) -> dict[str, torch.Tensor]:
        return {k: t.clone() for k, t in self.mutable().items()}

    def restore(self, state: dict[str, torch.Tensor]) -> None:
        for k, t in self.mutable().items():
            t.copy_(state[k])

    @property
    def nbytes(self) -> int:
        every = list(self.shared.values()) + [t for d in self.per_layer for t in d.values()]
        return sum(t.numel() * t.element_size() for t in every)


def bytes_needed(layer: Layer, layers: int, *, checked: bool = True) -> int:
    """What `Buffers(layer, layers)` allocates, from the tensor specs alone (nothing is
    allocated), plus, when the outputs are `checked` against serial (exec.verify), the two saved
    copies of everything a layer writes: the figure a run compares with free memory before it
    allocates, so a shape too large is refused with the number instead of ending the process."""
    total = mutable = 0
    for spec in layer.tensors.values():
        if spec.view is not None:
            continue
        n = spec.nbytes * (layers if spec.per_layer else 1)
        total += n
        if spec.kind in ("act", "cache"):
            mutable += n
    return total + (2 * mutable if checked else 0)


def describe_bytes(n: int) -> str:
    units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]
    k = min(int(math.log(max(n, 1), 1024)), len(units) - 1)
    return f"{n / 1024 ** k:.1f} {units[k]}"
