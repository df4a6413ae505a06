"""The profile file: every bad input is one clear Failure naming the file, the key and what is
accepted; provenance and the kernel hash travel with it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from streamlab.cli import app
from streamlab.errors import EXIT_BAD_INPUT, Failure
from streamlab.scenario import load
from streamlab.sim.predict import predict
from streamlab.sim.profile_file import (
    dump_profile,
    load_profile,
    parse_profile,
    profile_path,
)
from streamlab.sim.provenance import hash_files, kernel_hash, kernel_warning

SCENARIOS = Path(__file__).parent.parent / "scenarios"


def h100_doc() -> dict:
    return yaml.safe_load(profile_path("h100").read_text())


def failure(doc, tmp_path: Path) -> str:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(Failure) as e:
        load_profile(str(path))
    assert e.value.code == EXIT_BAD_INPUT
    assert str(e.value).startswith(f"{path}: ")
    return str(e.value)


@pytest.mark.parametrize("key, value, says", [
    ("hbm_gbs", {"value": 0, "source": "x"}, "hbm_gbs.value: 0 is out of range; accepted: > 0 GB/s"),
    ("hbm_gbs", {"value": -5.0, "source": "x"}, "hbm_gbs.value: -5.0 is out of range"),
    ("fence_us", {"value": float("nan"), "source": "x"}, "fence_us.value: nan is out of range; accepted: >= 0 us"),
    ("ar_concurrency_factor", {"value": "fast", "source": "x"}, "'fast' is not a number"),
    ("calibration_noise", {"by_batch": {4: 1.5}, "source": "x"}, "calibration_noise.by_batch.4: 1.5 is out of range"),
    ("fence_us", {"value": 1.0}, "fence_us: has ['value']; accepted: {value: ..., source: ...}"),
    ("node_us", {"qkv_a_proj": {4: 0.0}}, "node_us.qkv_a_proj.4: 0.0 is out of range; accepted: > 0 us"),
    ("node_us", {"attention": {4: 3.0}}, "node_us.attention: no such node in the layer; accepted: input_norm,"),
    ("sm_demand", {"experts": {4: 1.2}}, "sm_demand.experts.4: 1.2 is out of range; accepted: 0 to 1"),
    ("streams", "rocm", "streams: 'rocm' is not known; accepted: 'cuda', 'hip'"),
    ("format", 1, "format: format 1 is not this version's; accepted: format: 2"),
    ("calibration", 3, "calibration: unknown section; accepted: format, name,"),
])
def test_a_bad_value_is_one_failure_naming_the_key_and_what_is_accepted(tmp_path, key, value, says):
    doc = h100_doc()
    doc[key] = value
    assert says in failure(doc, tmp_path)


def test_a_missing_section_or_provenance_key_is_named(tmp_path):
    doc = h100_doc()
    del doc["fence_us"]
    assert "fence_us: missing section; accepted: every profile has format, name" in failure(doc, tmp_path)
    doc = h100_doc()
    del doc["provenance"]["shape"]
    assert "provenance.shape: missing" in failure(doc, tmp_path)
    doc = h100_doc()
    doc["provenance"]["shape"]["model"] = "llama"
    assert "provenance.shape.model: 'llama' is not known; accepted: 'glm5', 'deepseek_v32', 'tiny'" in failure(doc, tmp_path)
    doc = h100_doc()
    doc["pair_measures"]["q_b_proj|idx_wq_b"][4] = [7.0, 8.0]
    assert "pair_measures.q_b_proj|idx_wq_b.4: [7.0, 8.0]; accepted: [first_us, second_us, together_us]" in failure(doc, tmp_path)


def test_not_yaml_and_an_unsafe_tag_fail_cleanly(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(Failure, match="not valid YAML"):
        load_profile(str(path))
    path.write_text("!!python/object/apply:os.system ['true']\n")
    with pytest.raises(Failure, match="not valid YAML"):
        load_profile(str(path))


def test_a_profile_for_another_model_and_a_measured_profile_missing_a_node():
    h100 = load_profile("h100")
    deepseek = load(SCENARIOS / "serial.yaml").override(model="deepseek_v32")
    with pytest.raises(Failure, match=r"h100.yaml: provenance.shape.model: profile h100 was calibrated on glm5, "
                                      r"the scenario runs deepseek_v32; accepted: a profile of deepseek_v32, or "
                                      r"`--model deepseek_v32`") as e:
        predict(deepseek, h100)
    assert e.value.code == EXIT_BAD_INPUT
    scaled = predict(deepseek, h100, other_model=True)  # asked for: scaled by bytes and FLOPs, and said so
    assert scaled.moved and "model deepseek_v32 (calibrated glm5)" in scaled.shape_line()
    unfused_rope = load(SCENARIOS / "serial.yaml")
    unfused_rope = replace(unfused_rope, variant=replace(unfused_rope.variant, fused_rope_cat_cache=False))
    with pytest.raises(Failure, match="node_us: measured profile h100 has no latency for rope, kv_cache_store, q_cat"):
        predict(unfused_rope, h100)
    predict(unfused_rope, load_profile("mi355x"))  # a published profile may lack nodes: it has them anyway


def test_provenance_round_trips_and_the_kernel_hash_is_of_the_installed_sources(tmp_path):
    h100 = load_profile("h100")
    again = parse_profile(yaml.safe_load(dump_profile(h100)), "again")
    assert again.provenance == h100.provenance and again.pair_measures == h100.pair_measures
    assert h100.provenance.shape.model == "glm5" and h100.provenance.batches == (1, 4, 16, 64)
    assert load_profile("h200").provenance.basis == "measured" and not load_profile("h200").provenance.stale
    # the hash covers paths and contents, in path order
    assert hash_files({"a.py": b"x", "b.py": b"y"}) == hash_files({"b.py": b"y", "a.py": b"x"})
    assert hash_files({"a.py": b"x"}) != hash_files({"a.py": b"y"}) != hash_files({"c.py": b"y"})
    (tmp_path / "k").mkdir()
    (tmp_path / "k" / "gemm.py").write_text("kernel")
    (tmp_path / "k" / "notes.txt").write_text("not a source")
    assert kernel_hash(tmp_path / "k") == hash_files({"gemm.py": b"kernel"})
    measured_now = replace(h100, provenance=replace(h100.provenance, kernel_hash=kernel_hash()))
    assert kernel_warning(measured_now.provenance, "h100") is None
    assert "the installed streamlab/kernels/ hash to" in kernel_warning(
        replace(h100.provenance, kernel_hash="sha256:0000000000000000"), "h100")
    assert kernel_warning(load_profile("mi355x").provenance, "mi355x") is None  # not streamlab's kernels


def test_sim_warns_in_one_line_when_the_kernels_differ_and_fails_cleanly_on_a_bad_profile(tmp_path):
    doc = h100_doc()
    doc["provenance"]["kernel_hash"] = "sha256:0000000000000000"
    (tmp_path / "h100.yaml").write_text(yaml.safe_dump(doc))
    r = CliRunner().invoke(app, ["sim", str(SCENARIOS / "serial.yaml"), "--profile", str(tmp_path / "h100.yaml"),
                                 "--out", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    assert "warning: profile h100 was measured with kernels sha256:0000000000000000" in r.output
    doc["launch_gap_us"] = {"value": None, "source": "x"}
    (tmp_path / "h100.yaml").write_text(yaml.safe_dump(doc))
    r = CliRunner().invoke(app, ["sim", str(SCENARIOS / "serial.yaml"), "--profile", str(tmp_path / "h100.yaml"),
                                 "--out", str(tmp_path / "out")])
    assert r.exit_code == EXIT_BAD_INPUT and "launch_gap_us.value: None is not a number" in r.output
    assert "Traceback" not in r.output
