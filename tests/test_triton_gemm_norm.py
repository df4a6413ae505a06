"""Triton GEMM and row-wise kernels against the reference backend.

CPU: small shapes under the Triton interpreter (conftest sets TRITON_INTERPRET before the kernel
modules are imported). GPU (marked `gpu`): the real GLM-5 tp=8 shapes, against the reference on
the same device, except the two exactness tests (reference on the CPU, see there). Outputs start
as NaN, so an element a kernel fails to write fails the check.
Tolerances are relative, ||out - ref|| / ||ref||: fp8 GEMMs 2e-2 (fp8 rounding-boundary flips),
bf16 outputs 1e-2, fp32 outputs 1e-4.
"""

from __future__ import annotations

import inspect

import pytest
import torch

from streamlab.exec.buffers import Buffers
from streamlab.kernels import bind, reference
from streamlab.kernels.quant import FP8, quant_groups
from streamlab.kernels.triton import OPS, gemm, norm
from streamlab.layer import Variant, build_layer
from streamlab.models import GLM5, TINY, RankDims, Shape

FP8_TOL, BF16_TOL, FP32_TOL = 2e-2, 1e-2, 1e-4
BF16 = torch.bfloat16


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want.double()).norm() / want.double().norm()).item()


def _check(got: torch.Tensor, want: torch.Tensor, tol: float) -> None:
    assert not got.isnan().any(), "some output elements were not written"
    assert _rel(got, want) <= tol, f"relative error {_rel(got, want):.2e} > {tol:.0e}"


def _randn(*shape, device, dtype=BF16, seed=0, scale=1.0):
    g = torch.Generator(device=device).manual_seed(seed)
    return (torch.randn(shape, generator=g, device=device) * scale).to(dtype)


def _nan(*shape, device, dtype=BF16):
    return torch.full(shape, float("nan"), dtype=dtype, device=device)


def _fp8_weight(n, k, device, seed=1):
    """fp8 weight [n, k] with 128x128 block scales that give it std ~ k^-0.5."""
    w = _randn(n, k, device=device, dtype=torch.float32, seed=seed).clamp(-448, 448).to(FP8)
    g = torch.Generator(device=device).manual_seed(seed + 1)
    scale = (torch.rand(-(-n // 128), k // 128, generator=g, device=device) + 0.5) * k ** -0.5
    return w, scale


def _cases(cpu: list, gpu: list) -> list:
    """Parameters for small CPU (interpreter) cases and real-shape GPU cases."""
    def name(device, case):
        return "-".join([device, *(str(v).removeprefix("torch.") for v in case)])
    return ([pytest.param(*c, "cpu", id=name("cpu", c)) for c in cpu]
            + [pytest.param(*c, "cuda", id=name("gpu", c), marks=pytest.mark.gpu) for c in gpu])


GLM5_FP8_LINEAR = [(2688, 6144), (2048, 2048), (4096, 2048), (128, 6144), (6144, 2048),
                   (512, 6144), (6144, 256)]
GPU_TOKENS = (1, 4, 64)


def test_ops_are_registered_with_reference_signatures():
    for name, fn in {**gemm.OPS, **norm.OPS}.items():
        assert OPS[name] is fn
        assert inspect.signature(fn) == inspect.signature(reference.OPS[name]), name


# -- GEMMs ------------------------------------------------------------------------------------
# On the CPU the interpreter pretends to have 4 SMs, so the heuristic splits K in each of these
# (into 3, 2, 3 and 2; the last also has two M tiles); GEMM_CONFIGS below add unsplit and
# unevenly split runs, and transposed tiles.

@pytest.mark.parametrize("m,n,k,device", _cases(
    [(1, 128, 384), (3, 320, 256), (3, 320, 384), (70, 128, 256)],
    [(m, n, k) for n, k in GLM5_FP8_LINEAR for m in GPU_TOKENS]))
def test_fp8_linear(m, n, k, device):
    x = _randn(m, k + 256, device=device)[:, 128: 128 + k]  # a strided view
    w, ws = _fp8_weight(n, k, device)
    out, want = _nan(m, n, device=device), _nan(m, n, device=device)
    gemm.fp8_linear(x=x, weight=w, weight_scale=ws, out=out)
    reference.fp8_linear(x=x, weight=w, weight_scale=ws, out=want)
    _check(out, want, FP8_TOL)


# On CUDA, torch divides by a Python scalar as a multiplication by its fp32 reciprocal, so there
# quant.quant_groups puts about half its scales one ulp off max(amax, 1e-4) / 448 and values next
# to an fp8 rounding midpoint one code off (H200, torch 2.11: 214 of 384 scales, 57 of 49152
# values below). The kernels divide exactly (div_rn), as torch does on the CPU, so the exactness
# tests take their reference from the CPU.

@pytest.mark.parametrize("m,n,k,device", _cases([(3, 320, 384)], [(4, 2688, 6144)]))
def test_fp8_linear_quantises_exactly(m, n, k, device):
    """With an fp32 output nothing is rounded after the GEMM, so any activation-quantisation
    difference from quant.quant_groups (on the CPU) would show. Row 0 has a tiny group (fp8
    subnormals). Measured on an H200 at K=6144: 3.6e-7 against the CPU reference (3.0e-3
    against the CUDA one, which quantises differently); Hopper's fp8 MMA accumulates with
    fewer bits than fp32 (1.3e-4 at M=64), hence the looser GPU bound."""
    x = _randn(m, k, device=device)
    x[0, :128] *= 1e-6
    w, ws = _fp8_weight(n, k, device)
    out = _nan(m, n, device=device, dtype=torch.float32)
    want = _nan(m, n, device="cpu", dtype=torch.float32)
    gemm.fp8_linear(x=x, weight=w, weight_scale=ws, out=out)
    reference.fp8_linear(x=x.cpu(), weight=w.cpu(), weight_scale=ws.cpu(), out=want)
    _check(out.cpu(), want, FP32_TOL if device == "cpu" else 1e-3)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_quant_groups_into_is_bit_exact(device):
    """The 1x128 quantisation that fp8_linear fuses, standalone, against quant.quant_groups on
    the CPU: magnitudes spread over many octaves give fp8 subnormals and every rounding case;
    the scales land column-major. Every scale and every fp8 code (signed zeros too) is equal."""
    m, k = 48, 1024
    g = torch.Generator(device=device).manual_seed(0)
    spread = torch.exp(2 * torch.randn(m, k, generator=g, device=device))
    x = (torch.randn(m, k, generator=g, device=device) * spread).to(BF16)
    want_q, want_s = quant_groups(x.cpu())
    xq = torch.full((m, k), 0x7F, dtype=torch.uint8, device=device).view(FP8)  # NaN
    xs = _nan(k // 128, m, device=device, dtype=torch.float32).t()
    gemm.quant_groups_into(x, xq, xs)
    assert torch.equal(xs.cpu(), want_s)
    assert torch.equal(xq.cpu().view(torch.uint8), want_q.view(torch.uint8))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_fp8_linear_writes_only_its_columns(device):
    """The weight's last 128-row scale block is partial (320 rows) and out is a 300-column slice
    of a wider buffer: the kernel fills out.shape[-1] columns and nothing else."""
    m, n, k, cols = 3, 320, 256, 300
    x = _randn(m, k, device=device)
    w, ws = _fp8_weight(n, k, device)
    buf = _nan(m, cols + 20, device=device)
    want = _nan(m, cols, device=device)
    gemm.fp8_linear(x=x, weight=w, weight_scale=ws, out=buf[:, :cols])
    reference.fp8_linear(x=x, weight=w, weight_scale=ws, out=want)
    _check(buf[:, :cols], want, FP8_TOL)
    assert buf[:, cols:].isnan().all()


@pytest.mark.parametrize("m,n,k,out_dtype,device", _cases(
    [(3, 32, 384, torch.float32), (1, 96, 256, BF16)],
    [(m, n, 6144, torch.float32) for n in (32, 256) for m in GPU_TOKENS]))
def test_linear(m, n, k, out_dtype, device):
    x = _randn(m, k, device=device)
    w = _randn(n, k, device=device, seed=1, scale=k ** -0.5)
    out, want = (_nan(m, n, device=device, dtype=out_dtype) for _ in range(2))
    gemm.linear(x=x, weight=w, out=out)
    reference.linear(x=x, weight=w, out=want)
    _check(out, want, FP32_TOL if out_dtype == torch.float32 else BF16_TOL)


@pytest.mark.parametrize("t,h,n,k,device", _cases(
    [(3, 2, 64, 96), (2, 2, 48, 256)],
    [(t, 8, n, k) for n, k in ((512, 192), (256, 512)) for t in GPU_TOKENS]))
def test_bmm_fp8(t, h, n, k, device):
    x = _randn(t, h, k + 64, device=device)[..., :k]  # like q_nope, a slice of q [T, h, 256]
    w = _randn(h, n, k, device=device, dtype=torch.float32, seed=1).to(FP8)
    ws = torch.linspace(0.5, 1.5, h, device=device) * k ** -0.5
    out, want = _nan(t, h, n, device=device), _nan(t, h, n, device=device)
    gemm.bmm_fp8(x=x, weight=w, weight_scale=ws, out=out)
    reference.bmm_fp8(x=x, weight=w, weight_scale=ws, out=want)
    _check(out, want, BF16_TOL)


# Explicit configurations (the table's and the heuristic's choices aside): 32- and 256-column
# tiles (inside one 128-row scale block, across three with a partial last one), 1-4 K groups per
# iteration for the unscaled ops (K not a multiple of the iteration), the tile computed as is or
# transposed (swap), even and uneven K splits.
GEMM_CONFIGS = [gemm.GemmConfig(32, 1, 3), gemm.GemmConfig(256, 2, 2, 8, 2, True),
                gemm.GemmConfig(64, 4, 1), gemm.GemmConfig(128, 1, 5, 4, 4, True)]


@pytest.mark.parametrize("cfg", GEMM_CONFIGS, ids=lambda c: "-".join(map(str, c)))
@pytest.mark.parametrize("m,n,k,device",
                         _cases([(3, 320, 640)], [(4, 2688, 6144), (64, 2688, 6144)]))
def test_fp8_linear_configs_split_in_one_launch(cfg, m, n, k, device):
    """Every configuration matches the reference, and a second call on the same output (whose
    split-K counters the first call's last programs reset) gives bitwise the same result."""
    x = _randn(m, k, device=device)
    w, ws = _fp8_weight(n, k, device)
    out, want = _nan(m, n, device=device), _nan(m, n, device=device)
    gemm.run_gemm("fp8", x, w, out, ws, config=cfg)
    reference.fp8_linear(x=x, weight=w, weight_scale=ws, out=want)
    _check(out, want, FP8_TOL)
    first = out.clone()
    out.fill_(float("nan"))
    gemm.run_gemm("fp8", x, w, out, ws, config=cfg)
    assert torch.equal(out, first)


@pytest.mark.parametrize("op", ["bf16", "bmm"])
@pytest.mark.parametrize("cfg", GEMM_CONFIGS[1:3], ids=lambda c: "-".join(map(str, c)))
def test_linear_and_bmm_configs(op, cfg):
    device = "cpu"
    if op == "bf16":
        x = _randn(3, 640, device=device)
        w = _randn(96, 640, device=device, seed=1, scale=640 ** -0.5)
        out, want = (_nan(3, 96, device=device, dtype=torch.float32) for _ in range(2))
        gemm.run_gemm(op, x, w, out, config=cfg)
        reference.linear(x=x, weight=w, out=want)
        _check(out, want, FP32_TOL)
    else:
        x = _randn(3, 2, 448, device=device)[..., :384]
        w = _randn(2, 64, 384, device=device, dtype=torch.float32, seed=1).to(FP8)
        ws = torch.tensor([0.04, 0.06])
        out, want = _nan(3, 2, 64, device=device), _nan(3, 2, 64, device=device)
        gemm.run_gemm(op, x, w, out, ws, config=cfg)
        reference.bmm_fp8(x=x, weight=w, weight_scale=ws, out=want)
        _check(out, want, BF16_TOL)


# -- row-wise kernels -------------------------------------------------------------------------

@pytest.mark.parametrize("t,n,device", _cases([(3, 640)], [(t, 6144) for t in GPU_TOKENS]))
def test_rmsnorm_add(t, n, device):
    x = _randn(t, n, device=device)
    res, res_want = _randn(t, n, device=device, seed=1), _randn(t, n, device=device, seed=1)
    w = 1 + _randn(n, device=device, seed=2, scale=0.1)
    out, want = _nan(t, n, device=device), _nan(t, n, device=device)
    norm.rmsnorm_add(x=x, residual=res, weight=w, out=out, eps=1e-5)
    reference.rmsnorm_add(x=x, residual=res_want, weight=w, out=want, eps=1e-5)
    _check(out, want, BF16_TOL)
    _check(res, res_want, BF16_TOL)
    if device != "cpu":  # fp32 add rounded once to nearest-even: bit-exact on a GPU (the
        assert torch.equal(res, res_want)  # interpreter rounds bf16 toward zero)


@pytest.mark.parametrize("t,start,n,width,device", _cases(
    [(3, 100, 512, 700), (2, 0, 320, 320)],
    [(t, s, n, 2688) for s, n in ((0, 2048), (2048, 512)) for t in GPU_TOKENS]))
def test_rmsnorm(t, start, n, width, device):
    """x is a column slice of a wider tensor, as q_a / kv_a are of qkv_a."""
    x = _randn(t, width, device=device)[:, start: start + n]
    w = 1 + _randn(n, device=device, seed=2, scale=0.1)
    out, want = _nan(t, n, device=device), _nan(t, n, device=device)
    norm.rmsnorm(x=x, weight=w, out=out, eps=1e-5)
    reference.rmsnorm(x=x, weight=w, out=want, eps=1e-5)
    _check(out, want, BF16_TOL)


@pytest.mark.parametrize("t,device", _cases([(3,)], [(t,) for t in GPU_TOKENS]))
def test_layernorm(t, device):
    x = _randn(t, 128, device=device, scale=2.0) + 0.5
    w = 1 + _randn(128, device=device, dtype=torch.float32, seed=1, scale=0.1)
    b = _randn(128, device=device, dtype=torch.float32, seed=2, scale=0.1)
    out, want = _nan(t, 128, device=device), _nan(t, 128, device=device)
    norm.layernorm(x=x, weight=w, bias=b, out=out, eps=1e-6)
    reference.layernorm(x=x, weight=w, bias=b, out=want, eps=1e-6)
    _check(out, want, BF16_TOL)


@pytest.mark.parametrize("t,inter,device", _cases([(3, 192)], [(t, 256) for t in GPU_TOKENS]))
def test_silu_mul(t, inter, device):
    x = _randn(t, 2 * inter, device=device, scale=2.0)
    out, want = _nan(t, inter, device=device), _nan(t, inter, device=device)
    norm.silu_mul(x=x, out=out)
    reference.silu_mul(x=x, out=want)
    _check(out, want, BF16_TOL)


@pytest.mark.parametrize("t,n,device", _cases([(3, 1500)], [(t, 6144) for t in GPU_TOKENS]))
def test_add_in_place(t, n, device):
    """out aliases a, as in moe_out <- moe_out + sh_out."""
    a, b = _randn(t, n, device=device), _randn(t, n, device=device, seed=1)
    want = _nan(t, n, device=device)
    reference.add(a=a, b=b, out=want)
    norm.add(a=a, b=b, out=a)
    _check(a, want, BF16_TOL)


@pytest.mark.parametrize("t,h,device", _cases([(3, 2)], [(t, 8) for t in GPU_TOKENS]))
def test_cat(t, h, device):
    a = _randn(t, h, 512, device=device)
    b = _randn(t, h, 128, device=device, seed=1)[..., 32:96]  # a strided view
    out, want = _nan(t, h, 576, device=device), _nan(t, h, 576, device=device)
    norm.cat(a=a, b=b, out=out)
    reference.cat(a=a, b=b, out=want)
    assert torch.equal(out, want)


# -- the ops as the layer calls them ----------------------------------------------------------

def _tolerance(op: str, out: torch.Tensor) -> float:
    if op == "fp8_linear":
        return FP8_TOL
    return FP32_TOL if out.dtype == torch.float32 else BF16_TOL


@pytest.mark.parametrize("model,batch,device", [
    (TINY, 3, "cpu"),
    *[pytest.param(GLM5, b, "cuda", marks=pytest.mark.gpu) for b in GPU_TOKENS]])
def test_layer_nodes_match_reference(model, batch, device):
    """Every node this backend implements, on the layer's own buffers and views (column slices of
    qkv_a, the q_nope slice of q, residual updated in place, moe_out += sh_out). The reference runs
    the layer; each Triton node replays its reference node from the same inputs."""
    tp = 1 if model is TINY else 8
    layer = build_layer(RankDims(model, Shape(batch=batch, context=128, tp=tp)),
                        Variant(fused_rope_cat_cache=False, shared_expert_fused=False))
    tensors = Buffers(layer, device=device).tensors(0)
    mine = {**gemm.OPS, **norm.OPS}
    checked = set()
    for node in layer.nodes:
        bound = bind(node, "reference")
        fn = mine.get(node.op)
        if fn is None:
            bound(tensors)
            continue
        outs = {role: tensors[name] for role, name in node.outputs.items()}
        before = {role: t.clone() for role, t in outs.items()}
        bound(tensors)
        want = {role: t.clone() for role, t in outs.items()}
        for role, t in outs.items():
            t.copy_(before[role])
        args = {role: tensors[name] for role, name in {**node.inputs, **node.outputs}.items()}
        fn(**args, **node.attrs)
        for role, t in outs.items():
            assert not t.isnan().any(), f"{node.name}: {role} not fully written"
            err = _rel(t, want[role])
            assert err <= _tolerance(node.op, t), f"{node.name}: {role} relative error {err:.2e}"
            t.copy_(want[role])  # later nodes read the reference's values
        checked.add(node.op)
    assert checked == set(mine)


# -- GPU only: graph capture ------------------------------------------------------------------

@pytest.mark.gpu
def test_graph_capture_replays_split_k_and_norm():
    """An eager call allocates the split-K workspace; a captured graph then replays the same
    kernels on new input data without host synchronisation."""
    device = "cuda"
    m, n, k, h = 4, 128, 6144, 6144  # idx_wk: split K
    x = _randn(m, k, device=device)
    w, ws = _fp8_weight(n, k, device)
    hidden, res = _randn(m, h, device=device, seed=3), _randn(m, h, device=device, seed=4)
    wn = 1 + _randn(h, device=device, seed=5, scale=0.1)
    out, normed = _nan(m, n, device=device), _nan(m, h, device=device)

    def step():
        norm.rmsnorm_add(x=hidden, residual=res, weight=wn, out=normed, eps=1e-5)
        gemm.fp8_linear(x=x, weight=w, weight_scale=ws, out=out)

    assert gemm.gemm_config("fp8", m, n, k, 1, x.device).splits > 1, "meant to split K"
    step()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    x.copy_(_randn(m, k, device=device, seed=7))
    res0 = _randn(m, h, device=device, seed=8)
    res.copy_(res0)
    out.fill_(float("nan"))
    normed.fill_(float("nan"))
    graph.replay()
    want, res_want, normed_want = _nan(m, n, device=device), res0.clone(), _nan(m, h, device=device)
    reference.fp8_linear(x=x, weight=w, weight_scale=ws, out=want)
    reference.rmsnorm_add(x=hidden, residual=res_want, weight=wn, out=normed_want, eps=1e-5)
    _check(out, want, FP8_TOL)
    _check(normed, normed_want, BF16_TOL)
    assert torch.equal(res, res_want)
    first = out.clone()
    for _ in range(3):  # the last program of each tile reset its counter: replays agree bitwise
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, first)


@pytest.mark.gpu
@pytest.mark.parametrize("n,k", GLM5_FP8_LINEAR)
def test_fp8_linear_graph_replays_are_deterministic(n, k):
    """Each GLM-5 shape at M=4 in a graph: the replays and the eager call agree bitwise."""
    device, m = "cuda", 4
    x = _randn(m, k, device=device)
    w, ws = _fp8_weight(n, k, device)
    out = _nan(m, n, device=device)
    gemm.fp8_linear(x=x, weight=w, weight_scale=ws, out=out)
    torch.cuda.synchronize()
    first = out.clone()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        gemm.fp8_linear(x=x, weight=w, weight_scale=ws, out=out)
    for _ in range(3):
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, first)
