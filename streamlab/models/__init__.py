"""Model configurations and runtime shapes.

A `ModelConfig` holds the published numbers of a model (whole-model view); a `Shape` says how it
runs (decode tokens per rank, context, tensor parallelism, cache format); `RankDims` derives what
one tensor-parallel rank computes, which is what every kernel of the layer is sized from.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

FP8_BLOCK = 128  # weight blocks are 128x128, activation groups 1x128


@dataclass(frozen=True)
class ModelConfig:
    name: str
    hidden_size: int
    num_attention_heads: int
    q_lora_rank: int
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    index_n_heads: int
    index_head_dim: int
    index_topk: int
    n_routed_experts: int
    num_experts_per_tok: int
    moe_intermediate_size: int
    n_shared_experts: int
    routed_scaling_factor: float
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    intermediate_size: int = 0  # the dense layers' MLP (first_k_dense_replace of them, then MoE)
    first_k_dense_replace: int = 0
    num_hidden_layers: int = 1
    vocab_size: int = 0


GLM5 = ModelConfig(
    name="glm5", hidden_size=6144, num_attention_heads=64, q_lora_rank=2048, kv_lora_rank=512,
    qk_nope_head_dim=192, qk_rope_head_dim=64, v_head_dim=256, index_n_heads=32,
    index_head_dim=128, index_topk=2048, n_routed_experts=256, num_experts_per_tok=8,
    moe_intermediate_size=2048, n_shared_experts=1, routed_scaling_factor=2.5,
    intermediate_size=12288, first_k_dense_replace=3, num_hidden_layers=78, vocab_size=154880,
)

DEEPSEEK_V32 = ModelConfig(
    name="deepseek_v32", hidden_size=7168, num_attention_heads=128, q_lora_rank=1536,
    kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128,
    index_n_heads=64, index_head_dim=128, index_topk=2048, n_routed_experts=256,
    num_experts_per_tok=8, moe_intermediate_size=2048, n_shared_experts=1,
    routed_scaling_factor=2.5, intermediate_size=18432, first_k_dense_replace=3, num_hidden_layers=61,
    vocab_size=129280,
)

# A small model of the same structure for fast tests: every dimension keeps the 128-granularity
# of the FP8 block scales and the Hadamard transform, so every kernel path is exercised.
TINY = ModelConfig(
    name="tiny", hidden_size=512, num_attention_heads=4, q_lora_rank=256, kv_lora_rank=128,
    qk_nope_head_dim=64, qk_rope_head_dim=32, v_head_dim=64, index_n_heads=4,
    index_head_dim=128, index_topk=64, n_routed_experts=16, num_experts_per_tok=4,
    moe_intermediate_size=256, n_shared_experts=1, routed_scaling_factor=2.5,
    intermediate_size=1024, first_k_dense_replace=1, num_hidden_layers=4, vocab_size=2048,
)

MODELS: dict[str, ModelConfig] = {m.name: m for m in (GLM5, DEEPSEEK_V32, TINY)}


@dataclass(frozen=True)
class Shape:
    """How the layer runs: `batch` is decode tokens per rank (one per request, next_n = 1)."""

    batch: int = 4
    context: int = 8192
    tp: int = 8
    page_size: int = 64
    kv_cache: str = "fp8"  # "fp8" or "bf16"

    def with_(self, **changes) -> "Shape":
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def ceil_to(x: int, m: int) -> int:
    return (x + m - 1) // m * m


@dataclass(frozen=True)
class RankDims:
    """Per-rank sizes of one decode layer: what the kernels see under tensor parallelism."""

    model: ModelConfig
    shape: Shape
    tokens: int = field(init=False)
    heads: int = field(init=False)
    qk_head_dim: int = field(init=False)
    kv_dim: int = field(init=False)  # latent + rope: one MLA cache entry (576)
    qkv_a_dim: int = field(init=False)  # q_lora | kv latent | k_pe (2624)
    qkv_a_padded: int = field(init=False)  # rounded up to the 128-row weight block
    moe_inter: int = field(init=False)
    shared_inter: int = field(init=False)
    dense_inter: int = field(init=False)  # the dense layers' MLP intermediate per rank
    pages_per_seq: int = field(init=False)
    num_pages: int = field(init=False)
    index_cache_bytes: int = field(init=False)  # 128 fp8 + one fp32 scale per token

    def __post_init__(self) -> None:
        m, s = self.model, self.shape
        for what, n in (("num_attention_heads", m.num_attention_heads),
                        ("moe_intermediate_size", m.moe_intermediate_size),
                        ("intermediate_size", m.intermediate_size)):
            if n % s.tp:
                raise ValueError(f"{what}={n} is not divisible by tp={s.tp}")
        set_ = object.__setattr__
        set_(self, "tokens", s.batch)
        set_(self, "heads", m.num_attention_heads // s.tp)
        set_(self, "qk_head_dim", m.qk_nope_head_dim + m.qk_rope_head_dim)
        set_(self, "kv_dim", m.kv_lora_rank + m.qk_rope_head_dim)
        set_(self, "qkv_a_dim", m.q_lora_rank + m.kv_lora_rank + m.qk_rope_head_dim)
        set_(self, "qkv_a_padded", ceil_to(self.qkv_a_dim, FP8_BLOCK))
        set_(self, "moe_inter", m.moe_intermediate_size // s.tp)
        set_(self, "shared_inter", m.moe_intermediate_size * m.n_shared_experts // s.tp)
        set_(self, "dense_inter", m.intermediate_size // s.tp)
        set_(self, "pages_per_seq", -(-s.context // s.page_size))
        set_(self, "num_pages", s.batch * self.pages_per_seq)
        set_(self, "index_cache_bytes", m.index_head_dim + 4)

    @property
    def slots(self) -> int:
        return self.num_pages * self.shape.page_size

    @property
    def topk(self) -> int:
        return min(self.model.index_topk, self.shape.context)
