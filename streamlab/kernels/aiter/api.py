"""The one table of what streamlab calls in aiter, and exactly how.

Each entry names the defining module (so its source can be found without importing aiter), the
parameters we pass by position (in order) and by keyword, and the parameters we leave out
whose default we rely on. The same table drives the check at load time on ROCm
(`streamlab.kernels.aiter.runtime`, against the imported functions and the installed sources)
and the source test that runs without a GPU (`tests/test_aiter_backend.py`), so what we call
and what we check cannot drift apart.

compile_ops functions (the C++ kernels) are called positionally only: their pybind bindings
do not all accept keywords. Python-level functions take keywords for their optional tail.
"""

from __future__ import annotations

from dataclasses import dataclass

TESTED_WITH = "0.1.7.post2.dev18"  # the amd-aiter release whose sources this table was checked against
MIN_VERSION = (0, 1, 7)  # older releases lack entry points the backend needs


@dataclass(frozen=True)
class EntryPoint:
    """One aiter function, class (its constructor) or `Class.method` that streamlab calls.

    `defaults`: (name, Python literal) of parameters we leave out because their default is the
    behaviour we want; a parameter missing from the signature passes (the kernel then has no
    such knob: the behaviour is fixed). `required`: False for capabilities only newer aiter
    has; without them the nodes that need them fall back to Triton instead of the backend
    failing to load.
    """

    key: str
    module: str
    name: str
    positional: tuple[str, ...]
    keywords: tuple[str, ...] = ()
    defaults: tuple[tuple[str, str], ...] = ()
    required: bool = True
    used_by: str = ""

    @property
    def qualname(self) -> str:
        return f"{self.module}.{self.name}"


@dataclass(frozen=True)
class Constant:
    """A module attribute read at run time (enum members, aiter's fp8 dtype on this GPU)."""

    key: str
    module: str
    path: str  # attribute chain below the module, e.g. "QuantType.per_1x128"


ENTRY_POINTS: tuple[EntryPoint, ...] = (
    EntryPoint("per_1x128_quant", "aiter.ops.quant", "dynamic_per_token_scaled_quant",
               ("out", "input", "scales", "scale_ub", "shuffle_scale"),
               used_by="fp8_linear: activations to fp8 with one scale per 1x128 group"),
    EntryPoint("gemm_a8w8_blockscale", "aiter.ops.gemm_op_a8w8", "gemm_a8w8_blockscale_ck",
               ("XQ", "WQ", "x_scale", "w_scale", "Out"),
               used_by="fp8_linear: the CK block-scale GEMM behind aiter.gemm_a8w8_blockscale, "
                       "writing into the node's output instead of a new tensor"),
    EntryPoint("rmsnorm2d_fwd", "aiter.ops.rmsnorm", "rmsnorm2d_fwd",
               ("input", "weight", "epsilon"), defaults=(("use_model_sensitive_rmsnorm", "0"),),
               used_by="rmsnorm"),
    EntryPoint("rmsnorm2d_fwd_with_add", "aiter.ops.rmsnorm", "rmsnorm2d_fwd_with_add",
               ("out", "input", "residual_in", "residual_out", "weight", "epsilon"),
               defaults=(("use_model_sensitive_rmsnorm", "0"),), used_by="rmsnorm_add"),
    EntryPoint("rope_2c", "aiter.ops.rope", "rope_cached_positions_2c_fwd_impl",
               ("output_x", "output_y", "input_x", "input_y", "cos", "sin", "positions",
                "rotate_style", "reuse_freqs_front_part", "nope_first"),
               used_by="rope (indexer q/k, unfused MLA q_pe/k_pe)"),
    EntryPoint("fused_qk_rope_cat_and_cache_mla", "aiter.ops.triton.fused_kv_cache",
               "fused_qk_rope_cat_and_cache_mla",
               ("q_nope", "q_pe", "k_nope", "k_pe", "kv_cache", "slot_mapping", "pos", "cos",
                "sin", "k_scale", "is_neox", "num_decode_toks_for_zeros", "apply_scale"),
               keywords=("q_out",), defaults=(("shuffled_kv_cache", "False"),),
               used_by="rope_cat_cache"),
    EntryPoint("indexer_k_quant_and_cache", "aiter.ops.cache", "indexer_k_quant_and_cache",
               ("k", "kv_cache", "slot_mapping", "quant_block_size", "scale_fmt"),
               defaults=(("preshuffle", "False"),), used_by="index_k_cache_store (plain pages)"),
    EntryPoint("indexer_k_quant_and_cache/preshuffle", "aiter.ops.cache",
               "indexer_k_quant_and_cache",
               ("k", "kv_cache", "slot_mapping", "quant_block_size", "scale_fmt", "preshuffle"),
               required=False, used_by="index_k_cache_store (16x16-preshuffled pages)"),
    EntryPoint("cp_gather_indexer_k_quant_cache", "aiter.ops.cache",
               "cp_gather_indexer_k_quant_cache",
               ("kv_cache", "dst_k", "dst_scale", "block_table", "cu_seq_lens"),
               defaults=(("preshuffle", "False"),), required=False,
               used_by="the index-K cache layout test (reads plain pages back)"),
    EntryPoint("cp_gather_indexer_k_quant_cache/preshuffle", "aiter.ops.cache",
               "cp_gather_indexer_k_quant_cache",
               ("kv_cache", "dst_k", "dst_scale", "block_table", "cu_seq_lens", "preshuffle"),
               required=False,
               used_by="the index-K cache layout test (reads preshuffled pages back)"),
    EntryPoint("deepgemm_fp8_paged_mqa_logits", "aiter.ops.triton.pa_mqa_logits",
               "deepgemm_fp8_paged_mqa_logits",
               ("q_fp8", "kv_cache", "weights", "out_logits", "context_lens", "kv_indices",
                "max_model_len", "Preshuffle", "KVBlockSize"),
               required=False, used_by="paged_mqa_logits (pages of KVBlockSize tokens)"),
    EntryPoint("top_k_per_row_decode", "aiter.ops.topk", "top_k_per_row_decode",
               ("logits", "next_n", "seqLens", "indices", "numRows", "stride0", "stride1"),
               defaults=(("k", "2048"),), used_by="topk_slots"),
    EntryPoint("biased_grouped_topk", "aiter.ops.topk", "biased_grouped_topk",
               ("gating_output", "correction_bias", "topk_weights", "topk_ids",
                "num_expert_group", "topk_group", "need_renorm", "routed_scaling_factor"),
               used_by="biased_topk"),
    EntryPoint("fused_moe", "aiter.fused_moe", "fused_moe",
               ("hidden_states", "w1", "w2", "topk_weight", "topk_ids"),
               keywords=("expert_mask", "activation", "quant_type", "doweight_stage1",
                         "w1_scale", "w2_scale", "a1_scale", "a2_scale"),
               used_by="fused_moe (FP8 per-1x128 activations, 128x128 weight blocks)"),
    EntryPoint("CustomAllreduce", "aiter.dist.device_communicators.custom_all_reduce",
               "CustomAllreduce", ("group", "device"), keywords=("max_size",), required=False,
               used_by="collective.impl aiter (streamlab.kernels.allreduce.impls.AiterAllReduce)"),
    EntryPoint("CustomAllreduce.all_reduce", "aiter.dist.device_communicators.custom_all_reduce",
               "CustomAllreduce.all_reduce", ("inp",), keywords=("out",), required=False,
               used_by="collective.impl aiter"),
    EntryPoint("CustomAllreduce.capture", "aiter.dist.device_communicators.custom_all_reduce",
               "CustomAllreduce.capture", (), required=False, used_by="collective.impl aiter"),
)

CONSTANTS: tuple[Constant, ...] = (
    Constant("fp8", "aiter.utility.dtypes", "fp8"),
    Constant("QuantType.per_1x128", "aiter.ops.enum", "QuantType.per_1x128"),
    Constant("ActivationType.Silu", "aiter.ops.enum", "ActivationType.Silu"),
)

BY_KEY: dict[str, EntryPoint] = {e.key: e for e in ENTRY_POINTS}
