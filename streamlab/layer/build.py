"""Build the NSA/MLA + MoE decode layer (GLM-5, DeepSeek-V3.2) as a DAG at one rank's shape.

Canonical order follows section 2 of the reference; tensor names are what a schedule's race
messages talk about, so they say what the data is.
"""

from __future__ import annotations

import math

from streamlab.layer.dag import DTYPE_BYTES, Layer, Node, TensorSpec, Variant, View
from streamlab.models import FP8_BLOCK, RankDims

DENSE_ONLY = frozenset({"dense_gate_up", "dense_act", "dense_down", "allreduce_mlp"})  # not in an MoE layer


def expected_active_experts(experts: int, topk: int, tokens: int) -> float:
    """Distinct experts hit by `tokens` tokens routing to `topk` of `experts` uniformly."""
    return experts * (1.0 - (1.0 - topk / experts) ** tokens)


class _Builder:
    def __init__(self, dims: RankDims, variant: Variant, dense: bool = False) -> None:
        self.d = dims
        self.v = variant
        self.dense = dense
        self.tensors: dict[str, TensorSpec] = {}
        self.nodes: list[Node] = []
        self.groups: dict[str, list[str]] = {}
        self._group = ""

    # -- tensors -------------------------------------------------------------------------
    def t(self, name: str, shape: tuple[int, ...], dtype: str, kind: str = "act") -> str:
        self.tensors[name] = TensorSpec(name, tuple(shape), dtype, kind)
        return name

    def view(self, name: str, base: str, shape: tuple[int, ...], dim: int, start: int,
             length: int) -> str:
        spec = self.tensors[base]
        out_shape = list(shape)
        out_shape[dim] = length
        self.tensors[name] = TensorSpec(name, tuple(out_shape), spec.dtype, spec.kind,
                                        View(base, tuple(shape), dim, start, length))
        return name

    def fp8_weight(self, name: str, n: int, k: int) -> tuple[str, str]:
        """FP8 weight [n, k] with 128x128 block scales [n/128, k/128]."""
        w = self.t(name, (n, k), "fp8", "weight")
        s = self.t(name + "_scale", (-(-n // FP8_BLOCK), k // FP8_BLOCK), "fp32", "weight")
        return w, s

    def nbytes(self, *names: str) -> int:
        return sum(self.tensors[n].nbytes for n in names)

    # -- nodes ---------------------------------------------------------------------------
    def node(self, name: str, op: str, inputs: dict, outputs: dict, *, flops: float = 0.0,
             extra_bytes: float | None = None, launches: int = 1, **attrs) -> None:
        """Add a node; bytes default to reading every input once and writing every output once."""
        moved = extra_bytes if extra_bytes is not None else (
            self.nbytes(*dict.fromkeys(inputs.values())) + self.nbytes(*dict.fromkeys(outputs.values())))
        self.nodes.append(Node(name, op, dict(inputs), dict(outputs), attrs, float(flops),
                               float(moved), launches, self._group))
        if self._group:
            self.groups.setdefault(self._group, []).append(name)

    def group(self, name: str) -> _Builder:
        self._group = name
        return self

    def fp8_linear(self, name: str, x: str, w: str, out: str, n: int, k: int, **attrs) -> None:
        t = self.d.tokens
        ws = w + "_scale"
        self.node(name, "fp8_linear", {"x": x, "weight": w, "weight_scale": ws}, {"out": out},
                  flops=2 * t * n * k,
                  extra_bytes=self.nbytes(w, ws) + t * k * 2 + t * self.tensors[out].shape[-1] * 2, **attrs)

    # -- the layer -----------------------------------------------------------------------
    def build(self) -> Layer:
        d, m, v = self.d, self.d.model, self.v
        T, H, h = d.tokens, m.hidden_size, d.heads
        nope, rope, lora, kvl = m.qk_nope_head_dim, m.qk_rope_head_dim, m.q_lora_rank, m.kv_lora_rank
        ih, idim = m.index_n_heads, m.index_head_dim
        ctx_pad = d.pages_per_seq * d.shape.page_size
        kv_dtype = "fp8" if d.shape.kv_cache == "fp8" else "bf16"

        # shared inputs / metadata
        self.t("hidden", (T, H), "bf16")
        self.t("residual", (T, H), "bf16")
        self.t("positions", (T,), "int64", "meta")
        self.t("slot_mapping", (T,), "int64", "meta")
        self.t("seq_lens", (T,), "int32", "meta")
        self.t("block_table", (T, d.pages_per_seq), "int32", "meta")
        self.t("rope_cos_sin", (d.shape.context, rope), "fp32", "meta")
        self.t("kv_cache", (d.slots, d.kv_dim), kv_dtype, "cache")
        self.t("kv_scale", (1,), "fp32", "meta")
        self.t("index_k_cache", (d.num_pages, d.shape.page_size, d.index_cache_bytes), "uint8",
               "cache")

        # -- attention prepare -----------------------------------------------------------
        self.group("attn_prep")
        self.t("w_input_norm", (H,), "bf16", "weight")
        self.t("x", (T, H), "bf16")
        self.node("input_norm", "rmsnorm_add",
                  {"x": "hidden", "residual": "residual", "weight": "w_input_norm"},
                  {"out": "x", "residual": "residual"}, flops=4 * T * H, eps=m.rms_norm_eps)
        self.fp8_weight("w_qkv_a", d.qkv_a_padded, H)
        self.t("qkv_a", (T, d.qkv_a_padded), "bf16")
        self.fp8_linear("qkv_a_proj", "x", "w_qkv_a", "qkv_a", d.qkv_a_dim, H)
        self.view("q_a", "qkv_a", (T, d.qkv_a_padded), 1, 0, lora)
        self.view("kv_a", "qkv_a", (T, d.qkv_a_padded), 1, lora, kvl)
        self.view("k_pe", "qkv_a", (T, d.qkv_a_padded), 1, lora + kvl, rope)
        self.t("w_q_a_norm", (lora,), "bf16", "weight")
        self.t("w_kv_a_norm", (kvl,), "bf16", "weight")
        self.t("q_lora", (T, lora), "bf16")
        self.t("kv_latent", (T, kvl), "bf16")
        self.node("q_a_norm", "rmsnorm", {"x": "q_a", "weight": "w_q_a_norm"}, {"out": "q_lora"},
                  flops=4 * T * lora, eps=m.rms_norm_eps)
        self.node("kv_a_norm", "rmsnorm", {"x": "kv_a", "weight": "w_kv_a_norm"},
                  {"out": "kv_latent"}, flops=4 * T * kvl, eps=m.rms_norm_eps)
        self.fp8_weight("w_q_b", h * d.qk_head_dim, lora)
        self.t("q", (T, h * d.qk_head_dim), "bf16")
        self.fp8_linear("q_b_proj", "q_lora", "w_q_b", "q", h * d.qk_head_dim, lora)
        self.view("q_nope", "q", (T, h, d.qk_head_dim), 2, 0, nope)
        self.view("q_pe", "q", (T, h, d.qk_head_dim), 2, nope, rope)

        # -- indexer ---------------------------------------------------------------------
        self.group("indexer")
        self.fp8_weight("w_idx_q_b", ih * idim, lora)
        self.t("idx_q", (T, ih * idim), "bf16")
        self.fp8_linear("idx_wq_b", "q_lora", "w_idx_q_b", "idx_q", ih * idim, lora)
        self.fp8_weight("w_idx_k", idim, H)
        self.t("idx_k", (T, idim), "bf16")
        self.fp8_linear("idx_wk", "x", "w_idx_k", "idx_k", idim, H)
        self.t("w_idx_k_norm", (idim,), "fp32", "weight")
        self.t("b_idx_k_norm", (idim,), "fp32", "weight")
        self.t("idx_k_normed", (T, idim), "bf16")
        self.node("idx_k_norm", "layernorm",
                  {"x": "idx_k", "weight": "w_idx_k_norm", "bias": "b_idx_k_norm"},
                  {"out": "idx_k_normed"}, flops=5 * T * idim, eps=1e-6)
        self.t("w_idx_weights", (ih, H), "bf16", "weight")
        self.t("idx_w_raw", (T, ih), "fp32")
        self.node("idx_weights_proj", "linear", {"x": "x", "weight": "w_idx_weights"},
                  {"out": "idx_w_raw"}, flops=2 * T * ih * H)
        self.t("idx_q_rot", (T, ih, idim), "bf16")
        self.t("idx_k_rot", (T, idim), "bf16")
        self.node("idx_rope", "rope",
                  {"q": "idx_q", "k": "idx_k_normed", "positions": "positions",
                   "cos_sin": "rope_cos_sin"},
                  {"q_out": "idx_q_rot", "k_out": "idx_k_rot"},
                  flops=6 * T * (ih + 1) * rope, rope_dim=rope, interleaved=False,
                  extra_bytes=2 * T * (ih + 1) * idim * 2 + T * rope * 4)
        self.t("idx_q_had", (T, ih, idim), "bf16")
        self.t("idx_k_had", (T, idim), "bf16")
        self.node("idx_hadamard_q", "hadamard", {"x": "idx_q_rot"}, {"out": "idx_q_had"},
                  flops=2 * T * ih * idim * math.log2(idim))
        self.node("idx_hadamard_k", "hadamard", {"x": "idx_k_rot"}, {"out": "idx_k_had"},
                  flops=2 * T * idim * math.log2(idim))
        self.t("idx_q_fp8", (T, ih, idim), "fp8")
        self.t("idx_q_scale", (T, ih), "fp32")
        self.node("idx_q_quant", "act_quant", {"x": "idx_q_had"},
                  {"out": "idx_q_fp8", "scale": "idx_q_scale"}, flops=3 * T * ih * idim)
        self.node("idx_k_cache", "index_k_cache_store",
                  {"k": "idx_k_had", "slot_mapping": "slot_mapping"},
                  {"cache": "index_k_cache"}, flops=3 * T * idim,
                  extra_bytes=T * (idim * 2 + 8 + d.index_cache_bytes),
                  preshuffle=v.preshuffle_index_cache)
        self.t("idx_weights", (T, ih), "fp32")
        self.node("idx_weights_scale", "index_weights_scale",
                  {"w": "idx_w_raw", "q_scale": "idx_q_scale"}, {"out": "idx_weights"},
                  flops=3 * T * ih, factor=ih ** -0.5 * idim ** -0.5)
        self.t("idx_logits", (T, ctx_pad), "fp32")
        ctx = d.shape.context
        self.node("idx_logits", "paged_mqa_logits",
                  {"q": "idx_q_fp8", "weights": "idx_weights", "cache": "index_k_cache",
                   "block_table": "block_table", "seq_lens": "seq_lens"},
                  {"out": "idx_logits"}, flops=2 * T * ctx * ih * idim + 3 * T * ctx * ih,
                  extra_bytes=T * (ctx * d.index_cache_bytes + ih * (idim + 4) + ctx_pad * 4
                                   + d.pages_per_seq * 4),
                  preshuffle=v.preshuffle_index_cache)
        self.t("topk_slots", (T, d.topk), "int32")
        self.node("idx_topk", "topk_slots",
                  {"logits": "idx_logits", "block_table": "block_table", "seq_lens": "seq_lens"},
                  {"out": "topk_slots"}, flops=T * ctx * math.log2(max(d.topk, 2)),
                  extra_bytes=T * (ctx_pad * 4 + d.topk * 4 + d.pages_per_seq * 4))

        # -- MLA -------------------------------------------------------------------------
        self.group("mla")
        self.t("w_kc", (h, kvl, nope), "fp8", "weight")
        self.t("w_kc_scale", (h,), "fp32", "weight")
        self.t("q_nope_out", (T, h, kvl), "bf16")
        self.node("bmm_w_kc", "bmm_fp8", {"x": "q_nope", "weight": "w_kc", "weight_scale": "w_kc_scale"},
                  {"out": "q_nope_out"}, flops=2 * T * h * nope * kvl,
                  extra_bytes=h * kvl * nope + T * h * (nope + kvl) * 2)
        self.t("q_cat", (T, h, d.kv_dim), "bf16")
        if v.fused_rope_cat_cache:
            self.group("rope_and_cache")
            self.node("rope_cat_cache", "rope_cat_cache",
                      {"q_nope": "q_nope_out", "q_pe": "q_pe", "k_nope": "kv_latent", "k_pe": "k_pe",
                       "positions": "positions", "slot_mapping": "slot_mapping",
                       "cos_sin": "rope_cos_sin", "kv_scale": "kv_scale"},
                      {"q_out": "q_cat", "kv_cache": "kv_cache"},
                      flops=6 * T * (h + 1) * rope,
                      extra_bytes=T * (h * (kvl + rope) * 2 + (kvl + rope) * 2 + h * d.kv_dim * 2
                                       + d.kv_dim * DTYPE_BYTES[kv_dtype]))
        else:
            self.group("rope_and_cache")
            self.t("q_pe_rot", (T, h, rope), "bf16")
            self.t("k_pe_rot", (T, rope), "bf16")
            self.node("rope", "rope", {"q": "q_pe", "k": "k_pe", "positions": "positions",
                                       "cos_sin": "rope_cos_sin"},
                      {"q_out": "q_pe_rot", "k_out": "k_pe_rot"}, flops=6 * T * (h + 1) * rope,
                      extra_bytes=2 * T * (h + 1) * rope * 2 + T * rope * 4,
                      rope_dim=rope, interleaved=True)
            self.node("kv_cache_store", "kv_cache_store",
                      {"k_nope": "kv_latent", "k_pe": "k_pe_rot", "slot_mapping": "slot_mapping",
                       "kv_scale": "kv_scale"}, {"kv_cache": "kv_cache"}, flops=T * d.kv_dim,
                      extra_bytes=T * d.kv_dim * (2 + DTYPE_BYTES[kv_dtype]))
            self.node("q_cat", "cat", {"a": "q_nope_out", "b": "q_pe_rot"}, {"out": "q_cat"})
        self.group("mla")
        self.t("attn_out", (T, h, kvl), "bf16")
        topk = d.topk
        self.node("mla_decode", "sparse_mla_decode",
                  {"q": "q_cat", "kv_cache": "kv_cache", "topk_slots": "topk_slots",
                   "kv_scale": "kv_scale"}, {"out": "attn_out"},
                  flops=2 * T * h * topk * (d.kv_dim + kvl),
                  extra_bytes=T * (topk * d.kv_dim * DTYPE_BYTES[kv_dtype] + topk * 4
                                   + h * (d.kv_dim + kvl) * 2),
                  softmax_scale=d.qk_head_dim ** -0.5, launches=2)
        self.t("w_vc", (h, m.v_head_dim, kvl), "fp8", "weight")
        self.t("w_vc_scale", (h,), "fp32", "weight")
        self.t("attn_v", (T, h, m.v_head_dim), "bf16")
        self.node("bmm_w_vc", "bmm_fp8", {"x": "attn_out", "weight": "w_vc", "weight_scale": "w_vc_scale"},
                  {"out": "attn_v"}, flops=2 * T * h * kvl * m.v_head_dim,
                  extra_bytes=h * kvl * m.v_head_dim + T * h * (kvl + m.v_head_dim) * 2)
        self.view("attn_v_flat", "attn_v", (T, h * m.v_head_dim), 1, 0, h * m.v_head_dim)
        self.fp8_weight("w_o", H, h * m.v_head_dim)
        self.t("attn_partial", (T, H), "bf16")
        self.fp8_linear("o_proj", "attn_v_flat", "w_o", "attn_partial", H, h * m.v_head_dim)
        self.t("attn_reduced", (T, H), "bf16")
        self.node("allreduce_attn", "allreduce", {"x": "attn_partial"}, {"out": "attn_reduced"})

        # -- MoE -------------------------------------------------------------------------
        self.group("post_attn")
        self.t("w_post_norm", (H,), "bf16", "weight")
        self.t("x2", (T, H), "bf16")
        self.node("post_norm", "rmsnorm_add",
                  {"x": "attn_reduced", "residual": "residual", "weight": "w_post_norm"},
                  {"out": "x2", "residual": "residual"}, flops=4 * T * H, eps=m.rms_norm_eps)
        if self.dense:
            self.build_dense_mlp()
            self.group("")
            self.node("allreduce_mlp", "allreduce", {"x": "mlp_out"}, {"out": "hidden"})
        else:
            self.build_moe()
            self.group("")
            self.node("allreduce_moe", "allreduce", {"x": "moe_out"}, {"out": "hidden"})
        return Layer(self.d, self.v, self.tensors, self.nodes, self.groups)

    def build_dense_mlp(self) -> None:
        """The MLP of the first dense layers (GLM-5: 3 of 78): FP8 gate_up, SiLU-and-mul, FP8 down,
        the ops the unfused shared expert uses at a larger intermediate (12288 / tp), so every
        backend has their kernels."""
        d, H, T = self.d, self.d.model.hidden_size, self.d.tokens
        di = d.dense_inter
        self.group("dense_mlp")
        self.fp8_weight("w_mlp_gate_up", 2 * di, H)
        self.fp8_weight("w_mlp_down", H, di)
        self.t("mlp_gate_up", (T, 2 * di), "bf16")
        self.t("mlp_act", (T, di), "bf16")
        self.t("mlp_out", (T, H), "bf16")
        self.fp8_linear("dense_gate_up", "x2", "w_mlp_gate_up", "mlp_gate_up", 2 * di, H)
        self.node("dense_act", "silu_mul", {"x": "mlp_gate_up"}, {"out": "mlp_act"}, flops=4 * T * di)
        self.fp8_linear("dense_down", "mlp_act", "w_mlp_down", "mlp_out", H, di)

    def build_moe(self) -> None:
        d, m, v = self.d, self.d.model, self.v
        T, H, E, k = d.tokens, m.hidden_size, m.n_routed_experts, m.num_experts_per_tok
        inter = d.moe_inter
        self.group("routed_moe")
        self.t("w_gate", (E, H), "bf16", "weight")
        self.t("e_score_bias", (E,), "fp32", "weight")
        self.t("router_logits", (T, E), "fp32")
        self.node("router_gate", "linear", {"x": "x2", "weight": "w_gate"}, {"out": "router_logits"},
                  flops=2 * T * E * H)
        fused = v.shared_expert_fused and m.n_shared_experts > 0
        slots = k + (1 if fused else 0)
        n_experts = E + (1 if fused else 0)
        self.t("topk_ids", (T, slots), "int32")
        self.t("topk_weights", (T, slots), "fp32")
        self.node("moe_topk", "biased_topk", {"logits": "router_logits", "bias": "e_score_bias"},
                  {"ids": "topk_ids", "weights": "topk_weights"}, flops=4 * T * E,
                  topk=k, scale=m.routed_scaling_factor, shared_expert_id=E if fused else -1)
        self.t("w13", (n_experts, 2 * inter, H), "fp8", "weight")
        self.t("w13_scale", (n_experts, 2 * inter // FP8_BLOCK, H // FP8_BLOCK), "fp32", "weight")
        self.t("w2", (n_experts, H, inter), "fp8", "weight")
        self.t("w2_scale", (n_experts, H // FP8_BLOCK, -(-inter // FP8_BLOCK)), "fp32", "weight")
        self.t("moe_out", (T, H), "bf16")
        active = expected_active_experts(E, k, T) + (1 if fused else 0)
        per_expert = 3 * inter * H  # fp8 bytes of w13 + w2 for one expert
        self.node("experts", "fused_moe",
                  {"x": "x2", "ids": "topk_ids", "weights": "topk_weights", "w13": "w13",
                   "w13_scale": "w13_scale", "w2": "w2", "w2_scale": "w2_scale"},
                  {"out": "moe_out"}, flops=2 * T * slots * 3 * inter * H,
                  extra_bytes=active * per_expert + T * H * 4 + T * slots * 8, launches=4)
        if fused:
            return
        self.group("shared_expert")
        si = d.shared_inter
        self.fp8_weight("w_sh_gate_up", 2 * si, H)
        self.fp8_weight("w_sh_down", H, si)
        self.t("sh_gate_up", (T, 2 * si), "bf16")
        self.t("sh_act", (T, si), "bf16")
        self.t("sh_out", (T, H), "bf16")
        self.fp8_linear("shared_gate_up", "x2", "w_sh_gate_up", "sh_gate_up", 2 * si, H)
        self.node("shared_act", "silu_mul", {"x": "sh_gate_up"}, {"out": "sh_act"}, flops=4 * T * si)
        self.fp8_linear("shared_down", "sh_act", "w_sh_down", "sh_out", H, si)
        self.group("")
        self.node("shared_add", "add", {"a": "moe_out", "b": "sh_out"}, {"out": "moe_out"},
                  flops=T * H)


def build_layer(dims: RankDims, variant: Variant | None = None, *, dense: bool = False) -> Layer:
    """The decode layer at one rank's shape: an MoE layer, or with `dense` one of the model's
    first dense layers (its MLP in group `dense_mlp`, no MoE)."""
    layer = _Builder(dims, variant or Variant(), dense).build()
    layer.groups["moe"] = [n for g in ("routed_moe", "shared_expert") for n in layer.groups.get(g, [])] + (
        ["shared_add"] if "shared_add" in layer.by_name else [])
    return layer
