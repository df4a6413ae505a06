"""The layer's ops on aiter's kernels, and the binding that falls back to Triton per node.

A planner takes the node, the layer's tensor specs and the loaded aiter; it returns the op
function (same keyword signature as `streamlab.kernels.reference`), or raises `Unmapped` with
the reason the node cannot run on aiter here: an entry point this aiter lacks, a shape the
kernel does not take, or semantics that differ from the reference op. That node then runs the
Triton kernel and its recorded backend says so: "triton (aiter fallback: <reason>)". Ops aiter
has no kernel for (hadamard, act_quant, the bf16 linears, sparse MLA, ...) are plain Triton.

Where an aiter function returns a new tensor instead of writing into one (rmsnorm2d_fwd,
fused_moe), the node copies it into its output: one extra small kernel, recorded with the node.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

import torch

from streamlab.errors import Failure
from streamlab.kernels.aiter.layouts import rope_tables, shuffled
from streamlab.kernels.aiter.runtime import AiterRuntime, Unmapped, require_aiter
from streamlab.kernels.aiter.slots import positions_to_slots
from streamlab.kernels.binding import Bound, bind_portable, fallback_label
from streamlab.kernels.quant import FP8, GROUP, SHUFFLE_TILE
from streamlab.kernels.triton.common import workspace
from streamlab.layer import Node, TensorSpec

Specs = Mapping[str, TensorSpec]
Planner = Callable[[Node, Specs, AiterRuntime], Callable]

TOPK = 2048  # top_k_per_row_decode selects this many per row (a constant of its kernel)
ROTATE_NEOX, ROTATE_GPTJ = 0, 1  # rope_cached_positions_2c_fwd_impl's rotate_style


def _ocp_fp8(rt: AiterRuntime) -> None:
    """aiter's FP8 kernels use the GPU's native fp8: e4m3fn on gfx950, e4m3fnuz on gfx942."""
    fp8 = rt.constant("fp8")
    if fp8 is not FP8:
        raise Unmapped(f"aiter's fp8 on this GPU is {fp8}; the layer's FP8 tensors are {FP8} "
                       "(gfx950 / MI355X)")


def _spec(node: Node, specs: Specs, role: str) -> TensorSpec:
    return specs[node.inputs[role] if role in node.inputs else node.outputs[role]]


# -- GEMM and norms --------------------------------------------------------------------------

def _fp8_linear(node: Node, specs: Specs, rt: AiterRuntime) -> Callable:
    _ocp_fp8(rt)
    quant, gemm = rt.fn("per_1x128_quant"), rt.fn("gemm_a8w8_blockscale")
    out, weight = _spec(node, specs, "out"), _spec(node, specs, "weight")
    if out.view is not None or weight.shape[0] != out.shape[-1]:
        raise Unmapped("the CK GEMM writes a dense [M, N] output with N the weight's rows; "
                       f"this node writes {out.name} {out.shape} from a {weight.shape} weight")

    def fp8_linear(*, x, weight, weight_scale, out):
        x = x.contiguous()
        m, k = x.shape
        key = ("aiter_fp8_linear", out.data_ptr())
        xq = workspace((*key, "x"), (m, k), FP8, x.device)
        xs = workspace((*key, "scale"), (m, k // GROUP), torch.float32, x.device)
        quant(xq, x.view(-1, GROUP), xs, None, False)  # row-major [M, K/128] scales, as CK wants
        gemm(xq, weight, xs, weight_scale, out)
    return fp8_linear


def _rmsnorm_add(node: Node, specs: Specs, rt: AiterRuntime) -> Callable:
    fn = rt.fn("rmsnorm2d_fwd_with_add")
    _same_dtype(node, specs, "x", "weight")

    def rmsnorm_add(*, x, residual, weight, out, eps):
        # residual in and out are one tensor: the CK pipeline reads each tile of residual_in
        # before the same threads store that tile of residual_out, in both of its passes
        fn(out, x, residual, residual, weight, eps)
    return rmsnorm_add


def _rmsnorm(node: Node, specs: Specs, rt: AiterRuntime) -> Callable:
    fn = rt.fn("rmsnorm2d_fwd")
    _same_dtype(node, specs, "x", "weight")

    def rmsnorm(*, x, weight, out, eps):
        out.copy_(fn(x, weight, eps))
    return rmsnorm


def _same_dtype(node: Node, specs: Specs, a: str, b: str) -> None:
    sa, sb = _spec(node, specs, a), _spec(node, specs, b)
    if sa.dtype != sb.dtype:
        raise Unmapped(f"the CK norm takes {b} in the input's dtype; {sb.name} is {sb.dtype}, "
                       f"{sa.name} {sa.dtype}")


# -- rope ------------------------------------------------------------------------------------

def _sbhd(t: torch.Tensor, head_dim: int) -> torch.Tensor:
    """[T, D], [T, h*D] or [T, h, D] as the kernel's [s=T, b=1, h, D] (a view, strides kept)."""
    if t.dim() == 2:
        t = t.unflatten(1, (-1, head_dim))
    return t.unsqueeze(1)


def _rope(node: Node, specs: Specs, rt: AiterRuntime) -> Callable:
    fn = rt.fn("rope_2c")
    table, positions = _spec(node, specs, "cos_sin"), _spec(node, specs, "positions")
    if table.shape[-1] != node.attrs["rope_dim"] or positions.dtype != "int64":
        raise Unmapped(f"the rotary dim comes from the cos/sin table ({table.shape[-1]}) and "
                       f"positions must be int64; node rotates {node.attrs['rope_dim']} dims "
                       f"with {positions.dtype} positions")
    style = ROTATE_GPTJ if node.attrs["interleaved"] else ROTATE_NEOX

    def rope(*, q, k, positions, cos_sin, q_out, k_out, rope_dim, interleaved):
        cos, sin = rope_tables(cos_sin)
        d = k.shape[-1]
        # reuse_freqs_front_part: cos/sin hold rope/2 values; nope_first=False: the first
        # rope_dim dims rotate and the rest are copied
        fn(_sbhd(q_out, d), _sbhd(k_out, d), _sbhd(q, d), _sbhd(k, d), cos, sin,
           positions.unsqueeze(1), style, True, False)
    return rope


def _rope_cat_cache(node: Node, specs: Specs, rt: AiterRuntime) -> Callable:
    fn = rt.fn("fused_qk_rope_cat_and_cache_mla")
    if _spec(node, specs, "kv_cache").dtype == "fp8":
        _ocp_fp8(rt)
    nope, pe = _spec(node, specs, "q_nope").shape[-1], _spec(node, specs, "q_pe").shape[-1]
    if nope & (nope - 1) or pe & (pe - 1):
        raise Unmapped(f"the fused kernel's blocks are the head dims themselves and must be "
                       f"powers of two; got {nope} + {pe}")

    def rope_cat_cache(*, q_nope, q_pe, k_nope, k_pe, positions, slot_mapping, cos_sin, kv_scale,
                       q_out, kv_cache):
        half = cos_sin.shape[-1] // 2  # cos / sin as strided views: the kernel takes strides
        fn(q_nope, q_pe, k_nope.unsqueeze(1), k_pe.unsqueeze(1), kv_cache.unsqueeze(1),
           slot_mapping, positions, cos_sin[:, :half], cos_sin[:, half:], kv_scale, False, 0, True,
           q_out=q_out)
    return rope_cat_cache


# -- indexer ---------------------------------------------------------------------------------

def _index_k_cache_store(node: Node, specs: Specs, rt: AiterRuntime) -> Callable:
    preshuffle = bool(node.attrs["preshuffle"])
    fn = rt.fn("indexer_k_quant_and_cache/preshuffle" if preshuffle else "indexer_k_quant_and_cache")
    _ocp_fp8(rt)
    k = _spec(node, specs, "k")
    if k.view is not None or k.shape[-1] != GROUP:
        raise Unmapped(f"the kernel reads dense [T, {GROUP}] K rows; {k.name} is {k.shape}"
                       + (" (a view)" if k.view else ""))
    extra = (True,) if preshuffle else ()

    def index_k_cache_store(*, k, slot_mapping, cache, preshuffle):
        fn(k, cache, slot_mapping, GROUP, "ue8m0", *extra)
    return index_k_cache_store


def _paged_mqa_logits(node: Node, specs: Specs, rt: AiterRuntime) -> Callable:
    fn = rt.fn("deepgemm_fp8_paged_mqa_logits")
    _ocp_fp8(rt)
    page, heads = _spec(node, specs, "cache").shape[1], _spec(node, specs, "q").shape[1]
    preshuffle = bool(node.attrs["preshuffle"])
    if preshuffle and page % SHUFFLE_TILE:
        raise Unmapped(f"Preshuffle needs KVBlockSize % 16 == 0, page size is {page}")
    if heads % 16:
        raise Unmapped(f"the Gluon kernel takes all heads in one block of a multiple of 16; "
                       f"{heads} heads")

    def paged_mqa_logits(*, q, weights, cache, block_table, seq_lens, out, preshuffle):
        # the kernel writes the context's columns only: the rest keeps the reference's -inf
        out.fill_(float("-inf"))
        fn(q.unsqueeze(1), cache.unsqueeze(2), weights, out, seq_lens, block_table, out.shape[1],
           bool(preshuffle), page)
    return paged_mqa_logits


def _topk_slots(node: Node, specs: Specs, rt: AiterRuntime) -> Callable:
    fn = rt.fn("top_k_per_row_decode")
    out, logits = _spec(node, specs, "out"), _spec(node, specs, "logits")
    k = out.shape[1]
    if k != TOPK and k < logits.shape[1]:
        raise Unmapped(f"top_k_per_row_decode always selects {TOPK} per row; this node keeps "
                       f"{k} of up to {logits.shape[1]}")
    page = logits.shape[1] // _spec(node, specs, "block_table").shape[1]

    def topk_slots(*, logits, block_table, seq_lens, out):
        rows = logits.shape[0]
        positions = workspace(("aiter_topk_positions", out.data_ptr()), (rows, TOPK),
                              torch.int32, logits.device)
        fn(logits, 1, seq_lens, positions, rows, logits.stride(0), logits.stride(1))
        positions_to_slots(positions, block_table, page, out)
    return topk_slots


# -- MoE -------------------------------------------------------------------------------------

def _biased_topk(node: Node, specs: Specs, rt: AiterRuntime) -> Callable:
    fn = rt.fn("biased_grouped_topk")
    _same_dtype(node, specs, "logits", "bias")
    k, shared = node.attrs["topk"], node.attrs["shared_expert_id"]

    def biased_topk(*, logits, bias, ids, weights, topk, scale, shared_expert_id):
        # one expert group (the reference does not group); sigmoid + bias, renormalised, scaled
        fn(logits, bias, weights[:, :k], ids[:, :k], 1, 1, True, float(scale))
        if shared >= 0:  # the fused shared expert: last slot, weight 1
            ids[:, k:].fill_(shared)
            weights[:, k:].fill_(1.0)
    return biased_topk


def _fused_moe(node: Node, specs: Specs, rt: AiterRuntime) -> Callable:
    fn = rt.fn("fused_moe")
    _ocp_fp8(rt)
    quant_type, silu = rt.constant("QuantType.per_1x128"), rt.constant("ActivationType.Silu")
    _, two_inter, hidden = _spec(node, specs, "w13").shape
    inter = two_inter // 2
    if inter % GROUP or hidden % GROUP:
        raise Unmapped(f"per-1x128 MoE needs hidden and intermediate sizes that are multiples of "
                       f"{GROUP}; got {hidden} and {inter}")

    def fused_moe(*, x, ids, weights, w13, w13_scale, w2, w2_scale, out):
        y = fn(x, shuffled(w13), shuffled(w2), weights, ids, expert_mask=None, activation=silu,
               quant_type=quant_type, doweight_stage1=False, w1_scale=w13_scale,
               w2_scale=w2_scale, a1_scale=None, a2_scale=None)
        out.copy_(y)
    return fused_moe


def _bmm_fp8(node: Node, specs: Specs, rt: AiterRuntime) -> Callable:
    raise Unmapped("aiter's batched FP8 GEMM quantises activations to fp8 per 1x128 group and "
                   "takes one weight scale for all heads; this node keeps bf16 activations and "
                   "a scale per head")


PLANS: dict[str, Planner] = {
    "fp8_linear": _fp8_linear, "rmsnorm_add": _rmsnorm_add, "rmsnorm": _rmsnorm, "rope": _rope,
    "rope_cat_cache": _rope_cat_cache, "index_k_cache_store": _index_k_cache_store,
    "paged_mqa_logits": _paged_mqa_logits, "topk_slots": _topk_slots,
    "biased_topk": _biased_topk, "fused_moe": _fused_moe, "bmm_fp8": _bmm_fp8,
}


def bind_aiter(node: Node, specs: Specs, runtime: AiterRuntime | None = None) -> Bound:
    """The node on aiter, or on Triton with the reason recorded in its backend string."""
    fallback = bind_portable(node, "triton")
    plan = PLANS.get(node.op)
    if plan is None:
        return fallback
    try:
        fn = plan(node, specs, runtime or require_aiter())
    except Unmapped as why:
        return Bound(node, fallback_label(fallback.backend, "aiter", str(why)), fallback.fn)
    return Bound(node, "aiter", _named_errors(node, fn))


def _named_errors(node: Node, fn: Callable) -> Callable:
    """An aiter kernel that rejects its arguments raises a bare RuntimeError from C++: name
    the node and kernel instead of showing a traceback."""
    @functools.wraps(fn)
    def run(**kwargs):
        try:
            fn(**kwargs)
        except (RuntimeError, AssertionError, TypeError) as e:
            raise Failure(f"aiter kernel for node {node.name} ({node.op}) failed: "
                          f"{type(e).__name__}: {str(e).strip()[:400]}; rerun with --backend "
                          "triton, or report the shape") from e
    return run
