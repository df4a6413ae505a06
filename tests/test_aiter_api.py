"""The aiter backend without aiter: the entry-point table against the installed wheel's sources,
the checker itself on made-up drift, the guard's messages and exit codes, and the per-node
binding with its fallbacks (aiter's availability faked, never imported).

The source test needs the amd-aiter wheel installed (`pip install --no-deps amd-aiter`, as
.ci/run does); `import aiter` raises without ROCm, so nothing here imports it.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

from streamlab.cli import app
from streamlab.errors import EXIT_ENVIRONMENT, Failure
from streamlab.kernels import binding_summary
from streamlab.kernels.aiter import runtime
from streamlab.kernels.aiter.api import (
    BY_KEY,
    CONSTANTS,
    ENTRY_POINTS,
    TESTED_WITH,
    EntryPoint,
)
from streamlab.kernels.aiter.nodes import bind_aiter
from streamlab.kernels.aiter.runtime import AiterRuntime, load
from streamlab.kernels.aiter.signature import (
    constant_problem,
    installed_version,
    live_problem,
    package_root,
    source_problem,
    version_tuple,
)
from streamlab.kernels.triton import OPS as TRITON_OPS
from streamlab.layer import Variant, build_layer
from streamlab.models import GLM5, TINY, RankDims, Shape

SCENARIOS = Path(__file__).parent.parent / "scenarios"
ROOT = package_root()
needs_wheel = pytest.mark.skipif(
    ROOT is None, reason="amd-aiter is not installed: pip install --no-deps amd-aiter (CI does)")

# What the installed releases lack of the newer (2026) aiter API; their nodes fall back.
KNOWN_GAPS = {
    "0.1.7.post2.dev18": {"indexer_k_quant_and_cache/preshuffle",
                          "cp_gather_indexer_k_quant_cache/preshuffle",
                          "deepgemm_fp8_paged_mqa_logits"},
}


def _never_import(name):
    raise AssertionError(f"imported {name}")


# -- the installed wheel ----------------------------------------------------------------------

@needs_wheel
def test_locating_the_package_does_not_import_it():
    assert package_root() is not None
    assert "aiter" not in sys.modules


@needs_wheel
def test_installed_sources_take_the_calls_we_make():
    version = installed_version(ROOT)
    problems = {e.key: source_problem(e, ROOT) for e in ENTRY_POINTS}
    broken = {k: p for k, p in problems.items() if p and BY_KEY[k].required}
    assert not broken, f"amd-aiter {version} no longer takes these calls: {broken}"
    gaps = {k for k, p in problems.items() if p}
    if version in KNOWN_GAPS:
        assert gaps == KNOWN_GAPS[version], {k: problems[k] for k in gaps ^ KNOWN_GAPS[version]}
    assert all(constant_problem(c, ROOT) is None for c in CONSTANTS)
    assert "aiter" not in sys.modules


@needs_wheel
def test_the_wheel_is_the_tested_release_or_newer():
    assert version_tuple(installed_version(ROOT)) >= version_tuple(TESTED_WITH)[:3]


# -- the checker on made-up drift ---------------------------------------------------------------

def _fake_package(tmp_path: Path, source: str) -> Path:
    root = tmp_path / "aiter"
    (root / "ops").mkdir(parents=True)
    (root / "__init__.py").write_text("raise RuntimeError('never imported')\n")
    (root / "ops" / "__init__.py").write_text("")
    (root / "ops" / "k.py").write_text(textwrap.dedent(source))
    return root


ENTRY = EntryPoint("k", "aiter.ops.k", "kern", ("x", "out", "eps"), keywords=("mode",),
                   defaults=(("flag", "0"),))


@pytest.mark.parametrize("source,problem", [
    ("def kern(x, out, eps, mode=1, flag=0): ...", None),
    ("def kern(x, out, eps, *, mode=1): ...", None),  # no `flag` knob: its behaviour is fixed
    ("def kern(x, out, epsilon, mode=1): ...", "parameter 3 is 'epsilon'; we pass 'eps' there"),
    ("def kern(out, x, eps, mode=1): ...", "parameter 1 is 'out'; we pass 'x' there"),
    ("def kern(x, out): ...", "takes 2 positional parameters; we pass 'eps' as parameter 3"),
    ("def kern(x, out, eps, mode, stream): ...", "parameter 'stream' is required"),
    ("def kern(x, out, eps, flag=1, mode=0): ...", "default of 'flag' is 1; we rely on 0"),
    ("def kern(x, out, eps): ...", "has no keyword parameter 'mode'"),
    ("def other(x, out, eps, mode=1): ...", "kern is not defined in aiter/ops/k.py"),
    ("import sys\nif sys:\n    def kern(x): ...\nelse:\n    def kern(x, out, eps, mode=0): ...",
     None),  # the last definition wins
    ("def kern(*args, **kwargs): ...", None),  # opaque: nothing to check
])
def test_source_check_catches_drift(tmp_path, source, problem):
    got = source_problem(ENTRY, _fake_package(tmp_path, source))
    assert got == problem if problem is None else problem in got


def test_source_check_of_classes_and_methods(tmp_path):
    root = _fake_package(tmp_path, """
        class Comm:
            def __init__(self, group, device, max_size=1): ...
            def all_reduce(self, inp, *, out=None): ...
        """)
    ok = [EntryPoint("c", "aiter.ops.k", "Comm", ("group", "device"), keywords=("max_size",)),
          EntryPoint("m", "aiter.ops.k", "Comm.all_reduce", ("inp",), keywords=("out",))]
    assert [source_problem(e, root) for e in ok] == [None, None]
    bad = EntryPoint("m", "aiter.ops.k", "Comm.capture", ())
    assert "class Comm has no capture" in source_problem(bad, root)


def test_live_check_of_imported_functions():
    def kern(x, out, eps, mode=1): ...

    def renamed(x, out, epsilon, mode=1): ...

    class Comm:
        def __init__(self, group, device, max_size=1): ...

        def all_reduce(self, inp, *, out=None): ...

    assert live_problem(ENTRY, kern) is None
    assert "we pass 'eps'" in live_problem(ENTRY, renamed)
    assert live_problem(ENTRY, lambda *a, **k: None) is None  # a torch custom-op wrapper
    assert live_problem(BY_KEY["CustomAllreduce"], Comm) is None
    assert live_problem(BY_KEY["CustomAllreduce.all_reduce"], Comm.all_reduce) is None


def test_version_parts():
    assert version_tuple("0.1.7.post2.dev18") == (0, 1, 7)
    assert version_tuple("0.1.10rc1") == (0, 1, 10)
    assert version_tuple("0.1.6+gabc") == (0, 1, 6)


# -- the guard ------------------------------------------------------------------------------------

def test_guard_on_this_machine_names_the_build(monkeypatch):
    monkeypatch.setattr(torch.version, "hip", None)
    for cuda, build in ((None, "CPU"), ("13.0", "CUDA")):
        monkeypatch.setattr(torch.version, "cuda", cuda)
        with pytest.raises(Failure) as e:
            load(_never_import)
        assert e.value.code == EXIT_ENVIRONMENT
        assert f"needs ROCm: this torch is a {build} build" in str(e.value)


def test_guard_without_the_package(monkeypatch):
    monkeypatch.setattr(torch.version, "hip", "7.0")
    monkeypatch.setattr(runtime, "package_root", lambda: None)
    with pytest.raises(Failure, match="aiter package is not installed"):
        load(_never_import)


@needs_wheel
def test_guard_on_an_old_release(monkeypatch):
    monkeypatch.setattr(torch.version, "hip", "7.0")
    monkeypatch.setattr(runtime, "installed_version", lambda root: "0.1.5")
    with pytest.raises(Failure, match="amd-aiter 0.1.5 is older than 0.1.7"):
        load(_never_import)


@needs_wheel
def test_guard_names_the_kernel_whose_signature_changed(monkeypatch):
    monkeypatch.setattr(torch.version, "hip", "7.0")
    drifted = EntryPoint("gemm_a8w8_blockscale", "aiter.ops.gemm_op_a8w8",
                         "gemm_a8w8_blockscale_ck", ("XQ", "WQ", "a_scale", "w_scale", "Out"),
                         used_by="fp8_linear")
    monkeypatch.setattr(runtime, "ENTRY_POINTS", (drifted,))
    with pytest.raises(Failure) as e:
        load(_never_import)  # fails before importing aiter
    msg = str(e.value)
    assert "gemm_a8w8_blockscale_ck (fp8_linear): parameter 3 is 'x_scale'" in msg
    assert "use --backend triton" in msg and e.value.code == EXIT_ENVIRONMENT


@needs_wheel
def test_guard_reports_a_failing_import(monkeypatch):
    monkeypatch.setattr(torch.version, "hip", "7.0")

    def failing(name):
        raise RuntimeError("ROCm version file not found")
    with pytest.raises(Failure, match="import aiter .* failed: RuntimeError: ROCm version file"):
        load(failing)


@needs_wheel
def test_load_keeps_newer_capabilities_as_fallback_reasons(monkeypatch):
    """With the wheel's sources and a stand-in for the imported modules: the required entry
    points load, the newer ones are recorded unavailable with the reason."""
    monkeypatch.setattr(torch.version, "hip", "7.0")
    module = SimpleNamespace(
        **{e.name.split(".")[0]: (lambda *a, **k: None) for e in ENTRY_POINTS},
        fp8=torch.float8_e4m3fn, QuantType=SimpleNamespace(per_1x128=3),
        ActivationType=SimpleNamespace(Silu=0))
    module.CustomAllreduce = SimpleNamespace(all_reduce=lambda *a, **k: None,
                                             capture=lambda *a, **k: None)
    rt = load(lambda name: module)
    assert set(rt.fns) == {e.key for e in ENTRY_POINTS} - set(rt.unavailable)
    assert all(why.endswith("(needs a newer aiter)") for why in rt.unavailable.values())
    if installed_version(ROOT) in KNOWN_GAPS:
        assert set(rt.unavailable) == KNOWN_GAPS[installed_version(ROOT)]
    assert rt.constant("QuantType.per_1x128") == 3


def test_auto_picks_triton_and_says_why_on_rocm_without_aiter(monkeypatch):
    import streamlab.kernels.aiter as backend
    from streamlab.exec import target

    monkeypatch.setattr(torch.version, "hip", None)
    assert target.auto_backend() == ("triton", "")
    monkeypatch.setattr(torch.version, "hip", "7.0")

    def missing():
        raise Failure("backend aiter: the aiter package is not installed")
    monkeypatch.setattr(backend, "require_aiter", missing)
    choice, note = target.auto_backend()
    assert choice == "triton" and "aiter package is not installed" in note
    monkeypatch.setattr(backend, "require_aiter", lambda: AiterRuntime("x"))
    assert target.auto_backend() == ("aiter", "")


def test_cli_asking_for_aiter_here_fails_cleanly_and_writes_nothing(tmp_path):
    out = tmp_path / "runs"
    r = CliRunner().invoke(app, ["run", str(SCENARIOS / "serial.yaml"), "--backend", "aiter",
                                 "--out", str(out)])
    assert r.exit_code == EXIT_ENVIRONMENT, r.output
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: backend aiter needs ROCm"), r.output
    assert not out.exists()
    assert "aiter" not in sys.modules


# -- binding and fallbacks, availability faked ------------------------------------------------------

NEWER = {"indexer_k_quant_and_cache/preshuffle", "deepgemm_fp8_paged_mqa_logits"}


def _fake_runtime(missing=NEWER, fp8=torch.float8_e4m3fn) -> AiterRuntime:
    return AiterRuntime(
        "fake", {e.key: (lambda *a, **k: None) for e in ENTRY_POINTS if e.key not in missing},
        {k: f"{k} lacks a parameter" for k in missing},
        {"fp8": fp8, "QuantType.per_1x128": 3, "ActivationType.Silu": 0})


def _bind(dims, variant, rt):
    layer = build_layer(dims, variant)
    return {n.name: bind_aiter(n, layer.tensors, rt) for n in layer.nodes}


def test_nodes_fall_back_with_their_reasons_recorded():
    bound = _bind(RankDims(GLM5, Shape()), Variant(preshuffle_index_cache=True), _fake_runtime())
    backends = {name: b.backend for name, b in bound.items()}
    on_aiter = {n for n, b in backends.items() if b == "aiter"}
    assert on_aiter == {"input_norm", "qkv_a_proj", "q_a_norm", "kv_a_norm", "q_b_proj",
                        "idx_wq_b", "idx_wk", "idx_rope", "idx_topk", "rope_cat_cache", "o_proj",
                        "post_norm", "moe_topk", "experts"}
    assert backends["idx_k_cache"] == ("triton (aiter fallback: aiter fake: "
                                       "indexer_k_quant_and_cache/preshuffle lacks a parameter)")
    assert backends["idx_logits"].startswith("triton (aiter fallback: aiter fake: deepgemm")
    assert "one weight scale for all heads" in backends["bmm_w_kc"]
    assert backends["idx_hadamard_q"] == "triton"  # no aiter kernel: plain Triton
    assert bound["idx_k_cache"].fn is TRITON_OPS["index_k_cache_store"]  # the Triton op runs
    lines = binding_summary(bound)
    assert lines[0].startswith("kernels: aiter 14 nodes") and "(4 of them fallbacks)" in lines[0]
    assert any(line.startswith("  idx_k_cache: triton (aiter fallback") for line in lines)


def test_plain_pages_and_a_newer_aiter_map_the_indexer_cache():
    plain = _bind(RankDims(GLM5, Shape()), Variant(preshuffle_index_cache=False), _fake_runtime())
    assert plain["idx_k_cache"].backend == "aiter"
    newer = _bind(RankDims(GLM5, Shape()), Variant(preshuffle_index_cache=True), _fake_runtime(()))
    assert newer["idx_k_cache"].backend == newer["idx_logits"].backend == "aiter"
    odd_pages = _bind(RankDims(GLM5, Shape(page_size=8)), Variant(preshuffle_index_cache=True),
                      _fake_runtime(()))
    assert "KVBlockSize % 16" in odd_pages["idx_logits"].backend


def test_shape_limits_and_gfx942_fp8_fall_back():
    tiny = _bind(RankDims(TINY, Shape(tp=1, context=256)), Variant(), _fake_runtime(()))
    assert "always selects 2048 per row; this node keeps 64" in tiny["idx_topk"].backend
    assert "multiple of 16; 4 heads" in tiny["idx_logits"].backend
    fnuz = _bind(RankDims(GLM5, Shape()), Variant(), _fake_runtime((), fp8=torch.float8_e4m3fnuz))
    assert "float8_e4m3fnuz" in fnuz["qkv_a_proj"].backend and "gfx950" in fnuz["experts"].backend
    assert fnuz["input_norm"].backend == "aiter"
