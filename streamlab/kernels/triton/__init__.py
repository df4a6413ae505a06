"""Triton backend: portable GPU kernels (NVIDIA and AMD) for every op of the layer.

Each module owns one family of ops and exports `OPS` (op name -> function with the same keyword
signature as `streamlab.kernels.reference`). Functions write their outputs in place, allocate
nothing that depends on data, never synchronise with the host, and so capture into graphs.
`common` holds what the modules share: the interpreter flag, dot operands and exact casts.

SM (CU) budgets. Every op takes `max_programs` (None: the whole GPU): each of its launches then
runs on at most that many programs at once, each looping over the work items of the usual grid
(`common.plan_grid` plans it, `common.each_work_item` is the loop), so results are bitwise the
same under any budget. A launch whose grid already fits is the usual launch. Per kernel:

| kernel (op) | work grid: one program per item unbudgeted | under a budget |
|---|---|---|
| _gemm_kernel (fp8_linear, linear, bmm_fp8) | M x N tiles, K splits, batch | looped [1] |
| _moe_align_kernel (fused_moe) | 1 | one program: fits any budget |
| _gate_up_kernel (fused_moe) | blocks, column tiles, hidden splits | looped [1] |
| _down_kernel (fused_moe) | blocks, column tiles | looped [2] |
| _biased_topk_kernel (biased_topk) | tokens | looped |
| _mla_split_kernel (sparse_mla_decode) | tokens, splits | looped |
| _mla_combine_kernel (sparse_mla_decode) | tokens, heads, value blocks | looped, split order kept |
| _paged_mqa_logits_kernel (paged_mqa_logits) | tokens, page chunks | looped |
| _chunk_bounds/_hist/_select_kernel (topk_slots) | rows, chunks | looped [2] |
| _topk_slots_kernel (topk_slots, rows <= a chunk) | rows | looped |
| _hadamard/_act_quant/_index_k_store/_weights_scale | row, group or token blocks | looped |
| _rope_kernel, _rope_cat_cache_kernel | tokens, head blocks + 1 | looped |
| _kv_cache_store_kernel, _norm_kernel, _cat_kernel | tokens or rows | looped |
| _binary_kernel (silu_mul, add) | rows, column blocks | looped |

[1] split K (hidden) partials still summed by the tile's last split to arrive, in split order.
[2] the last work item of a column tile (row) to arrive finishes it, in slot (chunk) order.

Small kernels take a budget too (it binds only when their grid exceeds it: a norm at batch 4 has
4 programs), so that any node of a layout may carry one. `gemm.quant_groups_into` is not a layer
op and takes none. What a budget costs a kernel alone: the `gpu` test in tests/test_sm_budget.py
times budgeted GEMMs at GLM-5 shapes.
"""

from __future__ import annotations

from streamlab.kernels.triton import attention, gemm, indexer, moe, norm, rope, topk

MODULES = (gemm, norm, indexer, topk, rope, attention, moe)
OPS = {name: fn for mod in MODULES for name, fn in mod.OPS.items()}
