"""Triton indexer and rope kernels against the reference backend.

CPU tests run the kernels in the Triton interpreter at TINY shapes; `gpu` tests run the real
GLM-5 tp=8 shapes (batch 4 and 64, context 8192, page 64) and check graph capture.

Tolerances: fp32 logits 1e-4 relative to the row's largest |logit| (summation order differs;
1e-3 on a GPU, whose fp8 MMA accumulates with fewer bits); bf16 outputs 1e-2; fp8 bytes:
scales (powers of two) exact, values >= 99.9% identical bytes (fp32 -> fp8 rounds to nearest
even on both sides, so only differently-rounded inputs differ) and dequantised values within
one e4m3 step.
"""

from __future__ import annotations

import pytest
import torch

from streamlab.exec.buffers import Buffers
from streamlab.kernels import reference as ref
from streamlab.kernels.quant import FP8, index_cache_read, index_cache_write, quant_groups
from streamlab.kernels.triton import indexer, rope, topk
from streamlab.layer import Variant, build_layer
from streamlab.models import GLM5, TINY, RankDims, Shape
from tests.tolerance import close_bf16, close_cache, close_fp8, close_index_cache, equal, same_sets

TRITON = {**indexer.OPS, **topk.OPS, **rope.OPS}
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _gen(seed: int) -> torch.Generator:
    g = torch.Generator(device=DEVICE)
    g.manual_seed(seed)
    return g


def _randn(shape, g, dtype=torch.bfloat16, std=1.0):
    return (torch.randn(shape, generator=g, device=DEVICE) * std).to(dtype)


# -- comparisons ------------------------------------------------------------------------------

def _close_logits(got, want):
    """Relative to each row's largest |logit|: heads' terms of both signs cancel, so an error
    relative to each element means nothing near zero. Hopper's fp8 MMA aligns its fp32
    accumulator to ~14 bits, hence the looser GPU bound."""
    finite = torch.isfinite(want)
    assert torch.equal(finite, torch.isfinite(got)), "-inf outside the rows' contexts differ"
    assert torch.all(got[~finite] == float("-inf"))
    rtol = 1e-4 if DEVICE == "cpu" else 1e-3
    tol = rtol * want.masked_fill(~finite, 0).abs().amax(1, keepdim=True)
    err = (got - want).masked_fill(~finite, 0).abs()
    assert torch.all(err <= tol), f"max error {err.max()} vs row scale {tol.max()}"


COMPARE = {
    "rope": {"q_out": close_bf16, "k_out": close_bf16},
    "hadamard": {"out": close_bf16},
    "act_quant": {"out": close_fp8, "scale": equal},
    "index_k_cache_store": {"cache": close_index_cache},
    "index_weights_scale": {"out": equal},
    "paged_mqa_logits": {"out": _close_logits},
    "topk_slots": {"out": same_sets},
    "rope_cat_cache": {"q_out": close_bf16, "kv_cache": close_cache},
    "kv_cache_store": {"kv_cache": close_cache},
}


# -- whole-layer replay: every op of ours at the layer's shapes, on realistic inputs ------------

def _replay(dims: RankDims, variant: Variant):
    """Run the layer with the reference backend; at each of our nodes also run the Triton op on
    copies of its (poisoned or pre-filled) outputs and compare. Returns the layer, its tensors
    (every input of our nodes computed) and our nodes."""
    layer = build_layer(dims, variant)
    t = Buffers(layer, device=DEVICE, seed=3).tensors(0)
    mine = [n for n in layer.nodes if n.op in TRITON]
    last = layer.index[mine[-1].name]
    for node in layer.nodes[: last + 1]:
        args = {role: t[name] for role, name in node.inputs.items()}
        outs = {role: t[name] for role, name in node.outputs.items()}
        if node.op in TRITON:
            copies = {role: x.clone() for role, x in outs.items()}
            TRITON[node.op](**{**args, **copies}, **node.attrs)
        ref.OPS[node.op](**{**args, **outs}, **node.attrs)
        if node.op in TRITON:
            for role, check in COMPARE[node.op].items():
                check(copies[role], outs[role])
    return layer, t, mine


@pytest.mark.parametrize("page,preshuffle,fused,kv", [
    (64, True, True, "fp8"),
    (16, False, False, "bf16"),
    (16, True, False, "fp8"),
])
def test_layer_replay_tiny(page, preshuffle, fused, kv):
    dims = RankDims(TINY, Shape(batch=3, context=200, tp=1, page_size=page, kv_cache=kv))
    variant = Variant(fused_rope_cat_cache=fused, preshuffle_index_cache=preshuffle)
    checked = [n.name for n in _replay(dims, variant)[2]]
    assert {"idx_rope", "idx_logits", "idx_topk", "idx_k_cache"} <= set(checked)
    assert ("rope_cat_cache" in checked) == fused


# -- rope ---------------------------------------------------------------------------------------

def _cos_sin(context: int, rot: int) -> torch.Tensor:
    inv = 10000.0 ** (-torch.arange(0, rot, 2, dtype=torch.float64) / rot)
    ang = torch.arange(context, dtype=torch.float64)[:, None] * inv[None, :]
    return torch.cat((ang.cos(), ang.sin()), 1).float().to(DEVICE)


@pytest.mark.parametrize("interleaved", [False, True])
def test_rope_strided_views(interleaved):
    """q a [T, h, rope] head slice of q [T, h*96] and k a column slice, as in the MLA layer; and
    q [T, h*128] with only the first 32 dims rotated, as in the indexer."""
    g = _gen(1)
    T, h, ctx = 5, 4, 300
    pos = torch.randint(0, ctx, (T,), generator=g, device=DEVICE)
    cs = _cos_sin(ctx, 32)
    q_full = _randn((T, h * 96), g)
    k_full = _randn((T, 200), g)
    cases = [(q_full.view(T, h, 96)[..., 64:], k_full[:, 100:132], 32),  # MLA: rope dims only
             (_randn((T, h * 128), g), k_full[:, 10:138], 32)]  # indexer: 128-dim heads
    for q, k, rope_dim in cases:
        d = k.shape[-1]
        outs = [(torch.full((T, h, d), float("nan"), dtype=torch.bfloat16, device=DEVICE),
                 torch.full((T, d), float("nan"), dtype=torch.bfloat16, device=DEVICE))
                for _ in range(2)]
        for fn, (qo, ko) in zip((ref.rope, rope.rope), outs):
            fn(q=q, k=k, positions=pos, cos_sin=cs, q_out=qo, k_out=ko, rope_dim=rope_dim,
               interleaved=interleaved)
        close_bf16(outs[1][0], outs[0][0])
        close_bf16(outs[1][1], outs[0][1])


def _mla_inputs(g, T=5, h=4, nope=128, rot=32, slots=40):
    q = _randn((T, h, 96), g)  # q_pe is a strided slice of it
    qkv = _randn((T, 400), g)  # k_nope, k_pe are column slices of it
    slot = torch.randperm(slots, generator=g, device=DEVICE)[:T]
    slot[1] = -1
    return dict(q_nope=_randn((T, h, nope), g), q_pe=q[..., 64:], k_nope=qkv[:, 8:8 + nope],
                k_pe=qkv[:, 200:200 + rot], slot_mapping=slot,
                kv_scale=torch.tensor([0.75], device=DEVICE)), slots


@pytest.mark.parametrize("dtype", [FP8, torch.bfloat16])
def test_rope_cat_cache_and_kv_cache_store(dtype):
    g = _gen(2)
    args, slots = _mla_inputs(g)
    T, h, nope = args["q_nope"].shape
    rot = args["k_pe"].shape[1]
    cache0 = _randn((slots, nope + rot), g, torch.float32).to(dtype)
    pos = torch.randint(0, 300, (T,), generator=g, device=DEVICE)
    cs = _cos_sin(300, rot)
    results = []
    for fn in (ref.rope_cat_cache, rope.rope_cat_cache):
        q_out = torch.full((T, h, nope + rot), float("nan"), dtype=torch.bfloat16, device=DEVICE)
        cache = cache0.clone()
        fn(**args, positions=pos, cos_sin=cs, q_out=q_out, kv_cache=cache)
        results.append((q_out, cache))
    close_bf16(results[1][0], results[0][0])
    _check_cache_rows(results[1][1], results[0][1], cache0, args["slot_mapping"])
    store = {k: v for k, v in args.items() if not k.startswith("q_")}
    caches = [cache0.clone(), cache0.clone()]
    ref.kv_cache_store(**store, kv_cache=caches[0])
    rope.kv_cache_store(**store, kv_cache=caches[1])
    _check_cache_rows(caches[1], caches[0], cache0, args["slot_mapping"])


def _check_cache_rows(got, want, before, slots):
    """Written rows close to the reference's; every other row (negative slot) untouched."""
    written = torch.zeros(got.shape[0], dtype=torch.bool, device=got.device)
    written[slots[slots >= 0]] = True
    close_cache(got[written], want[written])
    assert torch.equal(got[~written].view(torch.uint8), before[~written].view(torch.uint8))


# -- hadamard, act_quant, weights ----------------------------------------------------------------

def test_hadamard_rows_and_heads():
    g = _gen(3)
    for x in (_randn((5, 4, 128), g), _randn((7, 300), g)[:, 100:228]):
        outs = [torch.full(x.shape, float("nan"), dtype=torch.bfloat16, device=DEVICE)
                for _ in range(2)]
        ref.hadamard(x=x, out=outs[0])
        indexer.hadamard(x=x, out=outs[1])
        close_bf16(outs[1], outs[0])


def test_act_quant_bytes_and_ties():
    """Random rows, plus a row whose values are exact midpoints between e4m3 values after
    scaling: ties must round to even as torch's cast does."""
    g = _gen(4)
    x = _randn((6, 4, 256), g, std=3.0)
    codes = torch.arange(0, 0x7E, device=DEVICE, dtype=torch.uint8).view(FP8).float()
    mids = torch.cat(((codes[1:] + codes[:-1]) / 2, codes[-1:], -codes[:2] - 2.0 ** -10))
    assert torch.equal(mids.to(torch.bfloat16).float(), mids)  # ties survive the bf16 input
    x[0, 0, :128] = mids.to(torch.bfloat16) * 2.0 ** -5  # amax 416 * 2^-5: scale 2^-5
    res = []
    for fn in (ref.act_quant, indexer.act_quant):
        out = torch.full(x.shape, 0x7F, dtype=torch.uint8, device=DEVICE).view(FP8)
        scale = torch.full((6, 4, 2), float("nan"), device=DEVICE)
        fn(x=x, out=out, scale=scale)
        res.append((out, scale))
    assert torch.equal(res[1][1], res[0][1])
    assert torch.equal(res[1][0][0, 0].view(torch.uint8), res[0][0][0, 0].view(torch.uint8))
    close_fp8(res[1][0], res[0][0])


def test_index_weights_scale():
    g = _gen(5)
    w, s = _randn((5, 4), g, torch.float32), _randn((5, 4), g, torch.float32).abs()
    outs = [torch.full((5, 4), float("nan"), device=DEVICE) for _ in range(2)]
    for fn, out in zip((ref.index_weights_scale, indexer.index_weights_scale), outs):
        fn(w=w, q_scale=s, out=out, factor=0.125)
    assert torch.equal(outs[1], outs[0])


# -- index K cache ------------------------------------------------------------------------------

def _index_cache(g, pages, page, preshuffle):
    """A cache filled by the reference store: random K rows, ue8m0 scales, in the layout."""
    cache = torch.zeros(pages, page, 132, dtype=torch.uint8, device=DEVICE)
    q, s = quant_groups(_randn((pages * page, 128), g), ue8m0=True)
    slots = torch.arange(pages * page, device=DEVICE)
    index_cache_write(cache, slots, q, s.reshape(-1), preshuffle)
    return cache


@pytest.mark.parametrize("page", [16, 64])
@pytest.mark.parametrize("preshuffle", [False, True])
def test_index_k_cache_store_layout(page, preshuffle):
    """Triton store vs reference store over the whole cache, and the written rows read back
    through `quant.index_cache_read`: both layouts are the reference's."""
    g = _gen(6)
    pages, T = 5, 9
    k = _randn((T, 200), g, std=2.0)[:, 50:178]  # a strided column view
    slots = torch.randperm(pages * page, generator=g, device=DEVICE)[:T]
    slots[3] = -1
    cache0 = _index_cache(g, pages, page, preshuffle)
    caches = [cache0.clone(), cache0.clone()]
    ref.index_k_cache_store(k=k, slot_mapping=slots, cache=caches[0], preshuffle=preshuffle)
    indexer.index_k_cache_store(k=k, slot_mapping=slots, cache=caches[1], preshuffle=preshuffle)
    close_index_cache(caches[1], caches[0])
    assert (caches[1] == caches[0]).float().mean() >= 0.999
    kq, ks = quant_groups(k, ue8m0=True)
    keep = slots >= 0
    pos = slots[keep]
    got_k, got_s = index_cache_read(caches[1], pos // page, preshuffle)
    rows = torch.arange(pos.numel(), device=DEVICE)
    assert torch.equal(got_s[rows, pos % page], ks.reshape(-1)[keep])
    close_fp8(got_k[rows, pos % page], kq[keep])


# -- logits and top-k ---------------------------------------------------------------------------

def _block_table(g, batch, pages_per_seq):
    return torch.randperm(batch * pages_per_seq, generator=g, device=DEVICE).reshape(
        batch, pages_per_seq).to(torch.int32)


@pytest.mark.parametrize("page,preshuffle,heads", [(16, True, 4), (64, False, 4), (64, True, 32)])
def test_paged_mqa_logits(page, preshuffle, heads):
    g = _gen(7)
    seq_lens = torch.tensor([300, 129, 1, page], dtype=torch.int32, device=DEVICE)
    batch, pps = seq_lens.numel(), -(-300 // page)
    table = _block_table(g, batch, pps)
    cache = _index_cache(g, batch * pps, page, preshuffle)
    q, qs = quant_groups(_randn((batch, heads, 128), g), ue8m0=True)
    w = _randn((batch, heads), g, torch.float32) * qs.reshape(batch, heads)
    outs = [torch.full((batch, pps * page), float("nan"), device=DEVICE) for _ in range(2)]
    for fn, out in zip((ref.paged_mqa_logits, indexer.paged_mqa_logits), outs):
        fn(q=q, weights=w, cache=cache, block_table=table, seq_lens=seq_lens, out=out,
           preshuffle=preshuffle)
    _close_logits(outs[1], outs[0])


def _topk_pair(logits, table, seq_lens, k):
    """Both backends' slots; outputs are column views of wider poisoned buffers, whose extra
    columns must stay untouched."""
    bufs = [torch.full((logits.shape[0], k + 8), 12345, dtype=torch.int32, device=DEVICE)
            for _ in range(2)]
    for fn, buf in zip((ref.topk_slots, topk.topk_slots), bufs):
        fn(logits=logits, block_table=table, seq_lens=seq_lens, out=buf[:, :k])
        assert torch.all(buf[:, k:] == 12345)
    return [buf[:, :k] for buf in bufs]


def test_topk_slots_sets_and_padding():
    g = _gen(8)
    page, pps, k = 16, 19, 64
    seq_lens = torch.tensor([300, 65, 64, 20, 0], dtype=torch.int32, device=DEVICE)
    table = _block_table(g, seq_lens.numel(), pps)
    logits = torch.randn(seq_lens.numel(), pps * page, generator=g, device=DEVICE)
    logits[0, :50] = -logits[0, :50].abs() - 1e30  # very negative, and -inf, are valid logits
    logits[0, 50] = float("-inf")
    got, want = _topk_pair(logits, table, seq_lens, k)
    same_sets(got, want)
    assert torch.equal((got == -1).sum(1), (want == -1).sum(1))


def test_topk_slots_ties_at_the_threshold():
    """With many equal logits the chosen set may differ, but not its size or its values."""
    g = _gen(9)
    page, pps, k = 16, 16, 64
    seq_lens = torch.tensor([256, 200], dtype=torch.int32, device=DEVICE)
    table = _block_table(g, 2, pps)
    logits = torch.randint(-3, 4, (2, pps * page), generator=g, device=DEVICE).float()
    got, want = _topk_pair(logits, table, seq_lens, k)
    assert all(len(set(row)) == k for row in got.tolist())
    inv = torch.full((2, 2 * pps * page), -1, dtype=torch.long, device=DEVICE)
    for b in range(2):  # slot -> logit through the block table
        pos = torch.arange(pps * page, device=DEVICE)
        inv[b, (table[b, pos // page].long() * page + pos % page)] = pos
        vals = [logits[b, inv[b, s.long()]].sort().values for s in (got[b], want[b])]
        assert torch.equal(vals[0], vals[1])


def _topk_values_match(logits, table, seq_lens, got, want):
    """Same count of slots and of -1 padding, distinct slots inside each row's context, and the
    same multiset of logits behind them (ties at the threshold may pick other positions)."""
    page = logits.shape[1] // table.shape[1]
    assert torch.equal((got == -1).sum(1), (want == -1).sum(1))
    for b in range(logits.shape[0]):
        n = int(seq_lens[b])
        pos = torch.arange(n, device=logits.device)
        inv = torch.full((table.numel() * page,), -1, dtype=torch.long, device=logits.device)
        inv[table[b, pos // page].long() * page + pos % page] = pos
        vals = []
        for row in (got[b], want[b]):
            p = inv[row[row >= 0].long()]
            assert bool((p >= 0).all()) and p.unique().numel() == p.numel()
            vals.append(logits[b, p].sort().values)
        assert torch.equal(vals[0], vals[1]), f"row {b}"


def _topk_rows(kind, g, shape):
    x = torch.randn(shape, generator=g, device=DEVICE)
    u = torch.rand(shape, generator=g, device=DEVICE)
    if kind == "outliers":  # a few huge values on both sides: the first round's range is useless
        return torch.where(u < 0.02, x * 1e30, x)
    if kind == "infinities":  # -inf and +inf are valid logits
        return torch.where(u < 0.3, float("-inf"), torch.where(u > 0.98, float("inf"), x))
    if kind == "heavy_tail":
        return torch.exp(3 * x)
    if kind == "geometric":  # spread over 2^-100..2^100: float bins stall, key digits finish
        return 2.0 ** (u * 200 - 100)
    if kind == "narrow":  # 50 adjacent fp32 values: many ties, a tiny key span
        return 1.0 + torch.randint(0, 50, shape, generator=g, device=DEVICE).float() * 2 ** -23
    if kind == "denormal_zeros":  # subnormals, +0 and -0 (equal values, distinct keys)
        return torch.where(u < 0.3, 0.0, torch.where(u < 0.6, -0.0, x * 1e-40))
    if kind == "constant":
        return torch.full(shape, 3.5, device=DEVICE)
    return x


# (kwargs of `_topk_launch`): the defaults (rows this short take one program); rows walked
# tile by tile; a candidate capacity so small that several rounds run over the row; no
# compaction (rounds over the row down to one key); key digits from the first round on;
# candidates ranked pairwise instead of by rounds; block-table entries gathered from memory
# instead of registers; rows cut into chunks of 64 (5 programs a row), alone, with a capacity
# so small that most rows are finished whole by their last chunk, with pairwise ranks, and
# with key digits
TOPK_PATHS = {"default": {}, "tiled": dict(resident_max=128, tile=128),
              "small_cap": dict(cap=16, pair=16), "no_compaction": dict(cap=0),
              "key_digits": dict(float_rounds=0), "pairwise": dict(pick_rounds=False),
              "table_in_memory": dict(pages_in_regs=False), "chunked": dict(chunk=64),
              "chunked_small_cap": dict(chunk=64, cap=16, pair=16),
              "chunked_pairwise": dict(chunk=64, pick_rounds=False),
              "chunked_key_digits": dict(chunk=64, float_rounds=0)}


@pytest.mark.parametrize("path", list(TOPK_PATHS))
@pytest.mark.parametrize("kind", ["normal", "outliers", "infinities", "heavy_tail", "geometric",
                                  "narrow", "denormal_zeros", "constant"])
def test_topk_slots_distributions(kind, path):
    """Exact top-k sets on awkward rows, at row lengths around k, 2k and 4k (which bound the
    first round can use) and past them, through every path of the kernel."""
    g = _gen(10)
    page, pps, k = 16, 20, 64
    seq_lens = torch.tensor([320, 257, 255, 128, 65, 64, 1, 0], dtype=torch.int32,
                            device=DEVICE)
    table = _block_table(g, seq_lens.numel(), pps)
    logits = _topk_rows(kind, g, (seq_lens.numel(), pps * page))
    bufs = [torch.full((logits.shape[0], k + 8), 12345, dtype=torch.int32, device=DEVICE)
            for _ in range(2)]
    ref.topk_slots(logits=logits, block_table=table, seq_lens=seq_lens, out=bufs[0][:, :k])
    topk._topk_launch(logits, table, seq_lens, bufs[1][:, :k], **TOPK_PATHS[path])
    assert torch.all(bufs[1][:, k:] == 12345)
    _topk_values_match(logits, table, seq_lens, bufs[1][:, :k], bufs[0][:, :k])


def test_topk_chunked_rows_finish_in_their_last_chunk():
    """On ordinary logits a chunked row is not finished whole by its last program: its slots
    come out as three runs in position order (keys above the threshold's bin, placed by every
    chunk; those of the bin above the k-th; the k-th), where one program writes two (keys above
    the k-th; the k-th)."""
    g = _gen(12)
    page, pps, k = 16, 256, 1024  # 64 first-round bins leave ~100 keys in the threshold's bin
    seq_lens = torch.tensor([4096, 3000], dtype=torch.int32, device=DEVICE)
    table = torch.arange(2 * pps, dtype=torch.int32, device=DEVICE).reshape(2, pps)  # slot = pos
    logits = torch.randn(2, pps * page, generator=g, device=DEVICE)
    want = torch.empty(2, k, dtype=torch.int32, device=DEVICE)
    ref.topk_slots(logits=logits, block_table=table, seq_lens=seq_lens, out=want)
    for chunk, runs in ((0, 2), (512, 3)):
        got = torch.empty_like(want)
        topk._topk_launch(logits, table, seq_lens, got, chunk=chunk, chunk_bins=64)
        _topk_values_match(logits, table, seq_lens, got, want)
        descents = (got[:, 1:] < got[:, :-1]).sum(1)
        assert descents.tolist() == [runs - 1] * 2, chunk


# -- GPU: the real GLM-5 tp=8 shapes ------------------------------------------------------------

# at 8192 keys: the default (8 chunks of 1024), chunks with 128 first-round bins or pairwise
# ranks, and one program a row with its default warps (16) and others
TOPK_GLM5_PATHS = {"default": {}, "chunk_bins_128": dict(chunk_bins=128),
                   "chunked_pairwise": dict(pick_rounds=False), "one_program": dict(chunk=0),
                   "one_program_8_warps": dict(chunk=0, num_warps=8),
                   "one_program_32_warps": dict(chunk=0, num_warps=32)}


@pytest.mark.gpu
@pytest.mark.parametrize("path", list(TOPK_GLM5_PATHS))
@pytest.mark.parametrize("kind", ["normal", "outliers", "infinities", "heavy_tail", "geometric",
                                  "narrow", "constant"])
def test_topk_slots_distributions_glm5(kind, path):
    """Top-2048 of rows up to 8192, through the paths of the kernel that serve that shape."""
    g = _gen(11)
    page, pps, k = 64, 128, 2048
    seq_lens = torch.tensor([8192, 5000, 2049, 2048, 100], dtype=torch.int32, device=DEVICE)
    table = _block_table(g, seq_lens.numel(), pps)
    logits = _topk_rows(kind, g, (seq_lens.numel(), pps * page))
    got, want = (torch.empty((seq_lens.numel(), k), dtype=torch.int32, device=DEVICE)
                 for _ in range(2))
    ref.topk_slots(logits=logits, block_table=table, seq_lens=seq_lens, out=want)
    topk._topk_launch(logits, table, seq_lens, got, **TOPK_GLM5_PATHS[path])
    _topk_values_match(logits, table, seq_lens, got, want)


def _glm5(batch: int, kv: str = "fp8") -> RankDims:
    return RankDims(GLM5, Shape(batch=batch, context=8192, tp=8, page_size=64, kv_cache=kv))


@pytest.mark.gpu
@pytest.mark.parametrize("batch", [4, 64])
@pytest.mark.parametrize("preshuffle,fused,kv", [(True, True, "fp8"), (False, False, "bf16")])
def test_layer_replay_glm5(batch, preshuffle, fused, kv):
    """32 indexer heads, top-2048 of 8192, 8 MLA heads, kv_dim 576, page 64."""
    variant = Variant(fused_rope_cat_cache=fused, preshuffle_index_cache=preshuffle)
    _replay(_glm5(batch, kv), variant)


def _poison(x: torch.Tensor) -> None:
    if x.dtype == FP8:
        x.view(torch.uint8).fill_(0x7F)
    else:
        x.fill_(float("nan") if x.is_floating_point() else -1)


@pytest.mark.gpu
@pytest.mark.parametrize("fused", [True, False])
def test_graph_capture_glm5(fused):
    """Each op captured into a CUDA/HIP graph replays to the eager result (bit for bit: the
    kernels are deterministic); prints the replay time of each at batch 64."""
    layer, t, mine = _replay(_glm5(64), Variant(fused_rope_cat_cache=fused))
    for node in mine:
        kwargs = {role: t[name] for role, name in {**node.inputs, **node.outputs}.items()}
        TRITON[node.op](**kwargs, **node.attrs)
        eager = {name: t[name].clone() for name in node.outputs.values()}
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            TRITON[node.op](**kwargs, **node.attrs)
        for name in node.outputs.values():
            if layer.tensors[name].kind == "act":
                _poison(t[name])
        graph.replay()
        for name, want in eager.items():
            assert torch.equal(t[name].view(torch.uint8), want.view(torch.uint8)), node.name
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(20):
            graph.replay()
        end.record()
        torch.cuda.synchronize()
        print(f"{node.name:20s} {node.op:20s} {start.elapsed_time(end) / 20 * 1e3:8.1f} us")


@pytest.mark.gpu
@pytest.mark.parametrize("context,kind", [(8192, "heavy_tail"), (8192, "narrow"),
                                          (131072, "normal")])
def test_topk_slots_long_and_skewed_gpu(context, kind):
    """Top-2048 at page 64: skewed rows (extra rounds), and 128k contexts (rows walked tile by
    tile); graph replays reproduce the eager slots."""
    g = _gen(11)
    page, batch, k = 64, 3, 2048
    pps = context // page
    seq_lens = torch.tensor([context, context - 1000, 3000], dtype=torch.int32, device=DEVICE)
    table = _block_table(g, batch, pps)
    logits = _topk_rows(kind, g, (batch, context))
    want, got = _topk_pair(logits, table, seq_lens, k)  # (reference, Triton)
    _topk_values_match(logits, table, seq_lens, got, want)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        topk.topk_slots(logits=logits, block_table=table, seq_lens=seq_lens, out=got)
    first = got.clone()
    for _ in range(2):
        got.fill_(-7)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(got, first)
