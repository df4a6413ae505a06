"""The reference kernels: known answers for the formats, and every layout equal to serial."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from streamlab.exec.buffers import Buffers
from streamlab.exec.eager import StreamSet
from streamlab.exec.verify import compare_with_serial
from streamlab.kernels import bind_layer
from streamlab.kernels import reference as ref
from streamlab.kernels.quant import (index_cache_read, index_cache_write, k_byte_offsets,
                                     quant_groups)
from streamlab.scenario import load

SCENARIOS = Path(__file__).parent.parent / "scenarios"
SHIPPED = ["serial", "pr23562", "pr23562_cuda", "a_v4", "a_v4_moe_dual"]


def test_ue8m0_scales_are_powers_of_two_covering_amax():
    x = torch.randn(5, 256) * 3
    q, s = quant_groups(x, ue8m0=True)
    assert torch.equal(torch.exp2(torch.log2(s).round()), s)
    amax = x.reshape(5, 2, 128).abs().amax(-1)
    assert (s * 448 >= amax).all() and (s * 448 < 2 * amax + 1e-6).all()
    assert (q.float().reshape(5, 2, 128) * s[..., None] - x.reshape(5, 2, 128)).abs().max() < 0.07 * 3 * 4


def test_preshuffled_page_layout_is_the_16x16_tile_permutation():
    offs = k_byte_offsets(64, 128, preshuffle=True)
    assert sorted(offs.flatten().tolist()) == list(range(64 * 128))
    assert offs[0, 0] == 0 and offs[0, 15] == 15 and offs[1, 0] == 16 and offs[0, 16] == 256
    assert offs[17, 33] == 1 * 16 * 128 + 2 * 256 + 1 * 16 + 1
    assert torch.equal(k_byte_offsets(64, 128, preshuffle=False)[3], torch.arange(384, 512))


@pytest.mark.parametrize("preshuffle", [False, True])
def test_index_cache_round_trip(preshuffle):
    cache = torch.zeros(4, 32, 132, dtype=torch.uint8)
    k = torch.randn(5, 128)
    q, s = quant_groups(k, ue8m0=True)
    slots = torch.tensor([3, 40, 127, -1, 64])
    index_cache_write(cache, slots, q, s.reshape(-1), preshuffle)
    kk, ss = index_cache_read(cache, torch.arange(4), preshuffle)
    flat_k, flat_s = kk.reshape(-1, 128), ss.reshape(-1)
    for i, slot in enumerate(slots.tolist()):
        if slot >= 0:
            assert torch.equal(flat_k[slot].view(torch.uint8), q[i].view(torch.uint8))
            assert flat_s[slot] == s[i, 0]
    assert (cache.view(4, -1)[0, 32 * 128 + 4 * 4: 32 * 128 + 5 * 4] == 0).all()  # slot 4 untouched


def test_paged_mqa_logits_matches_a_dense_computation():
    pages, page, heads = 6, 16, 4
    cache = torch.zeros(pages, page, 132, dtype=torch.uint8)
    keys = torch.randn(pages * page, 128)
    q8, s8 = quant_groups(keys, ue8m0=True)
    index_cache_write(cache, torch.arange(pages * page), q8, s8.reshape(-1), preshuffle=True)
    table = torch.tensor([[5, 1, 3], [0, 2, 4]], dtype=torch.int32)
    seq = torch.tensor([40, 33], dtype=torch.int32)
    q = (torch.randn(2, heads, 128)).to(torch.float8_e4m3fn)
    w = torch.randn(2, heads)
    out = torch.full((2, 48), float("nan"))
    ref.paged_mqa_logits(q=q, weights=w, cache=cache, block_table=table, seq_lens=seq, out=out,
                         preshuffle=True)
    deq = q8.float() * s8
    for b in range(2):
        pos = torch.arange(int(seq[b]))
        k = deq[table[b, pos // page].long() * page + pos % page]
        want = (w[b][:, None] * torch.relu(q[b].float() @ k.t())).sum(0)
        torch.testing.assert_close(out[b, : int(seq[b])], want, rtol=1e-5, atol=1e-5)
        assert torch.isinf(out[b, int(seq[b]):]).all()


def test_topk_maps_positions_through_the_block_table():
    logits = torch.full((1, 128), float("-inf"))
    logits[0, :100] = torch.randn(100)
    table = torch.tensor([[7, 2]], dtype=torch.int32)
    out = torch.empty(1, 8, dtype=torch.int32)
    ref.topk_slots(logits=logits, block_table=table, seq_lens=torch.tensor([100]), out=out)
    top = torch.topk(logits[0, :100], 8).indices
    assert out[0].tolist() == [(7 if t < 64 else 2) * 64 + t % 64 for t in top.tolist()]


def test_sparse_mla_over_all_slots_is_dense_attention():
    kv = torch.randn(10, 96).to(torch.float8_e4m3fn)
    q = torch.randn(2, 3, 96)
    out = torch.empty(2, 3, 64)
    slots = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [9, 8, 7, 6, 5, -1, -1, -1, -1, -1]],
                         dtype=torch.int32)
    ref.sparse_mla_decode(q=q, kv_cache=kv, topk_slots=slots, kv_scale=torch.tensor([0.5]), out=out,
                          softmax_scale=0.1)
    k = kv.float() * 0.5
    p = torch.softmax(q[0] @ k.t() * 0.1, -1)
    torch.testing.assert_close(out[0], p @ k[:, :64], rtol=1e-5, atol=1e-5)
    p = torch.softmax(q[1] @ k[5:].t() * 0.1, -1)
    torch.testing.assert_close(out[1], p @ k[5:, :64], rtol=1e-5, atol=1e-5)


def test_fp8_linear_tracks_the_float_product():
    x = torch.randn(3, 256)
    w = torch.randn(200, 256) * 0.05
    scale = torch.full((2, 2), 0.0125)  # one scale per 128x128 block; N padded to 256 rows
    wq = (w / 0.0125).clamp(-448, 448).to(torch.float8_e4m3fn)
    wpad = torch.cat((wq, torch.zeros(56, 256, dtype=torch.float8_e4m3fn)))
    out = torch.empty(3, 200)
    ref.fp8_linear(x=x, weight=wpad, weight_scale=scale, out=out)
    want = x @ (wq.float() * 0.0125).t()
    assert ((out - want).norm() / want.norm()) < 0.05


@pytest.mark.parametrize("name", SHIPPED)
@pytest.mark.parametrize("shape", [dict(batch=3, context=300, page_size=64),
                                   dict(batch=2, context=130, page_size=16)])
def test_every_layout_equals_serial_at_reduced_shapes(name, shape):
    scen = load(SCENARIOS / f"{name}.yaml").override(model="tiny", tp=1, **shape)
    buffers = Buffers(scen.layer, 2, seed=7)
    bound = bind_layer(scen.layer, "reference")
    diffs = compare_with_serial(scen.layer, scen.program, buffers, bound, StreamSet(buffers.device))
    assert len(diffs) > 30 and all(d.identical for d in diffs), [d for d in diffs if not d.identical]
    out = buffers.shared["hidden"].float()
    assert out.isfinite().all() and out.std() > 0.1  # the layer did real work


def test_a_wrong_schedule_would_change_the_outputs():
    """The equivalence check can fail: run a_v4 with the indexer after the attention."""
    from streamlab.schedule.program import Launch, Program
    scen = load(SCENARIOS / "a_v4.yaml").override(model="tiny", tp=1, batch=2, context=200)
    names = scen.layer.names
    idx = scen.layer.groups["indexer"]
    late = [n for n in names if n not in idx]
    at = late.index("allreduce_moe")
    program = Program([Launch(n, "main") for n in late[:at] + idx + late[at:]])
    buffers = Buffers(scen.layer, 1, seed=1)
    diffs = compare_with_serial(scen.layer, program, buffers, bind_layer(scen.layer, "reference"),
                                StreamSet(buffers.device))
    assert any(d.tensor == "hidden" and not d.identical for d in diffs)


def test_the_real_glm5_shape_runs_on_the_cpu_and_equals_serial():
    scen = load(SCENARIOS / "a_v4_moe_dual.yaml")  # batch 4, context 8192, tp 8
    buffers = Buffers(scen.layer, 1)
    diffs = compare_with_serial(scen.layer, scen.program, buffers, bind_layer(scen.layer, "reference"),
                                StreamSet(buffers.device))
    assert all(d.identical for d in diffs)
    assert buffers.shared["hidden"].shape == (4, 6144)
