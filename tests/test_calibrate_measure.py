"""`streamlab calibrate --measure` and `--for` without a GPU: the stages derived from the layouts,
the pairs derived from their schedules, the work folder (resume, refusal, interruption), the
merge of measured pairs into a profile, the no-GPU failure. A stand-in runner writes, for each
stage, the files a GPU stage writes, with numbers from known parameters (tests/synthetic.py's run
results, pair timings of a chosen overlap excess). One GPU test runs a tiny calibration for real.
"""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from streamlab.calibration.device import DeviceFacts
from streamlab.calibration.pairbench import FENCE_UNITS, PairAt, PairProtocol, PairsJob
from streamlab.calibration.plan import (
    derive_pairs,
    estimate_pairs_s,
    layouts,
    load_layouts,
    pair_variant,
    serial_stages,
    single_stream,
)
from streamlab.calibration.run import (
    MAX_PAIR_ROUNDS,
    OnDevice,
    PairsFor,
    calibrate_on_device,
    pairs_for,
)
from streamlab.calibration.workdir import MANIFEST, WorkFolder, WorkKey, read_manifest
from streamlab.errors import EXIT_BAD_INPUT, EXIT_ENVIRONMENT, EXIT_INTERRUPTED, Failure
from streamlab.results import dump
from streamlab.scenario import load
from streamlab.sim.calibrate import calibrate
from streamlab.sim.pairwise import NOOP, add_pairs
from streamlab.sim.predict import layout_overlaps
from streamlab.sim.profile import PairMeasure
from streamlab.sim.profile_file import dump_profile, load_profile
from streamlab.sim.provenance import CalibrationShape, kernel_hash
from tests.synthetic import run_result

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ROOT / "scenarios"
HELDOUT = sorted((ROOT / "bench" / "heldout").glob("*.yaml"))
DEVICE = "NVIDIA H200"
FACTS = DeviceFacts(DEVICE, "580.95.05", {"torch": "2.11.0"}, "triton", {"backend": "triton"})
NODE_US = {4: 3.0, 64: 6.0}  # every node's in-graph latency per batch in the stand-in's runs
HARNESS_US, EXCESS = 2.0, 0.4  # the pair harness per unit; every pair's overlap excess


class StandIn:
    """Writes what each GPU stage writes, from known numbers; counts its calls, and raises at the
    call `fail_at` (1-based) to play an interruption or a failed stage."""

    world = 1

    def __init__(self, fail_at: int | None = None, error: BaseException | None = None) -> None:
        self.calls: list[str] = []
        self.jobs: list[PairsJob] = []
        self.fail_at, self.error = fail_at, error or KeyboardInterrupt()

    def _call(self, what: str) -> None:
        self.calls.append(what)
        if len(self.calls) == self.fail_at:
            raise self.error

    def facts(self) -> DeviceFacts:
        return FACTS

    def serial(self, path: str, batch: int, backend: str, folder: Path) -> list[Path]:
        name = load(path).name
        self._call(f"serial {name} b{batch}")
        n = len(load(path).layer.nodes)
        run = run_result(name, batch, node_us=NODE_US[batch], latency=NODE_US[batch] * n + 2 * n * 0.5,
                         device=DEVICE)
        return [dump(run, folder / f"{name}-b{batch}-cuda.json")]

    def pairs(self, job: PairsJob, out: Path) -> Path:
        self._call(f"pairs {out.name}")
        self.jobs.append(job)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(pairwise_doc(job)))
        return out


def pairwise_doc(job: PairsJob) -> dict:
    """What pairbench.measure_pairs writes for `job` on a device where every pair has EXCESS."""
    records = []

    def rec(batch, kind, units, main, alt, us):
        records.append({"state": "clean", "batch": batch, "kind": kind, "units": units, "main": main,
                        "alt": alt, "replay_us": us})
    if job.cross_stream:
        for units in FENCE_UNITS:
            rec(0, "chain", units, [NOOP], [], 5.0 + units * 1.4)
            rec(0, "ladder", units, [NOOP], [NOOP], 11.0 + units * 1.7)
    u = job.protocol.units
    for p in job.pairs:
        d = NODE_US[p.batch]
        rec(p.batch, "pair", u, [NOOP], [NOOP], u * (HARNESS_US + 1.0))
        rec(p.batch, "pair", u, [p.first], [NOOP], u * (HARNESS_US + d))
        rec(p.batch, "pair", u, [NOOP], [p.second], u * (HARNESS_US + d))
        rec(p.batch, "pair", u, [p.first], [p.second], u * (HARNESS_US + d + EXCESS * d))
    scen = load(job.layout)
    layers = {s: {str(b): 250.0 + b for b in job.batches} for s in ("clean", "cupti")} if job.cross_stream else {}
    return {"tool": job.tool, "device": DEVICE, "model": scen.model.name,
            "shape": {"context": job.shape.context, "tp": job.shape.tp, "page_size": job.shape.page_size,
                      "kv_cache": job.shape.kv_cache},
            "variant": vars(scen.variant), "records": records, "noop_us": 1.0, "serial_layer_us": layers}


def shipped():
    return load_layouts(SCENARIOS)


def request(tmp_path: Path, **over) -> OnDevice:
    base = {"name": "h200", "out": tmp_path / "h200.yaml", "layouts": tuple(shipped()), "batches": (4, 64),
            "work": tmp_path / "h200.calibration", "command": "streamlab calibrate --measure --batch 4,64"}
    return OnDevice(**{**base, **over})


QUIET = Console(width=200, file=io.StringIO())


# --- the plan: derived from the layouts ---------------------------------------------------------

def test_the_variants_and_their_single_stream_layouts_come_from_the_layouts():
    lay = layouts(shipped())
    assert lay.base.name == "serial"  # the variant four of the six shipped layouts run
    assert [s.name for s in lay.variant_serials] == ["serial_moe_unfused"]
    assert lay.shape == CalibrationShape("glm5", 8192, 8, 64, "fp8")
    assert [single_stream(s) for s in shipped()] == [s.name.startswith("serial") for s in shipped()]
    stages = serial_stages(lay, (4, 64))
    assert [s.name for s in stages] == ["serial serial b4", "serial serial_moe_unfused b4",
                                        "serial serial b64", "serial serial_moe_unfused b64"]
    assert stages[0].estimate_s > stages[1].estimate_s  # the first run at a batch compiles


def test_a_variant_without_a_single_stream_layout_is_refused(tmp_path):
    for name in ("serial", "a_v4_moe_dual"):
        (tmp_path / f"{name}.yaml").write_text((SCENARIOS / f"{name}.yaml").read_text())
    with pytest.raises(Failure) as e:
        layouts(load_layouts(tmp_path))
    assert e.value.code == EXIT_BAD_INPUT
    assert "shared_expert_fused=false" in str(e.value) and "a_v4_moe_dual" in str(e.value)
    (tmp_path / "other.yaml").write_text((SCENARIOS / "serial.yaml").read_text().replace(
        "context: 8192", "context: 4096").replace("name: serial", "name: other"))
    (tmp_path / "a_v4_moe_dual.yaml").unlink()
    with pytest.raises(Failure, match="one model and shape"):
        layouts(load_layouts(tmp_path))
    with pytest.raises(Failure, match="no scenario YAML"):
        load_layouts(tmp_path / "empty")


def first_profile(tmp_path: Path, batches=(4, 64)):
    """The profile the serial stages alone give (what the first pairs are derived on)."""
    runner = StandIn()
    lay = layouts(shipped())
    files = [f for st in serial_stages(lay, batches)
             for f in runner.serial(st.path, st.batch, "triton", tmp_path / st.folder)]
    return calibrate(files, "h200", variant_serials=("serial_moe_unfused",))


def test_the_pairs_are_those_the_schedules_overlap_and_the_profile_lacks(tmp_path):
    prof = first_profile(tmp_path)
    pairs = derive_pairs(shipped(), prof, (4, 64))
    assert pairs == tuple(sorted(set(pairs)))  # sorted, each once
    assert {p.batch for p in pairs} == {4, 64}
    # pr23562 forks q_b_proj onto alt, dispatched before the indexer's first GEMM on main
    assert PairAt(4, "q_b_proj", "idx_wq_b") in pairs
    # each pair is an overlap of a shipped layout's simulated replay; single-stream ones have none
    for p in pairs:
        overlapping = [s.name for s in shipped()
                       if any((o.first, o.second) == (p.first, p.second)
                              for o in layout_overlaps(*_layer(s, p.batch), prof))]
        assert overlapping and not any(n.startswith("serial") for n in overlapping), p
    assert derive_pairs([s for s in shipped() if single_stream(s)], prof, (4, 64)) == ()
    # once measured, a pair is no longer derived
    measured = add_pairs(prof, [PairMeasure(p.batch, p.first, p.second, 3.0, 3.0, 4.0) for p in pairs],
                         "test", variant=vars(load(SCENARIOS / "a_v4_moe_dual.yaml").variant))
    assert not set(derive_pairs(shipped(), measured, (4, 64))) & set(pairs)


def _layer(scen, batch):
    s = scen.override(batch=batch)
    return s.layer, s.program


def test_the_pairs_run_in_a_variant_that_has_all_their_nodes(tmp_path):
    prof = first_profile(tmp_path)
    unfused = load(SCENARIOS / "a_v4_moe_dual.yaml").variant
    fused = load(SCENARIOS / "a_v4.yaml").variant
    assert pair_variant(prof, [PairAt(4, "q_b_proj", "idx_wq_b")], shipped()) == fused  # a_v4, first by name
    assert pair_variant(prof, [PairAt(4, "experts", "shared_down")], shipped()) == unfused
    with_pairs = add_pairs(prof, [PairMeasure(4, "q_a_norm", "kv_a_norm", 2.0, 2.0, 3.0)], "t", variant=vars(unfused))
    assert pair_variant(with_pairs, [PairAt(4, "q_b_proj", "idx_wq_b")], shipped()) == unfused  # the profile's


def test_a_pairs_stage_estimate_grows_with_its_graphs():
    p = PairProtocol()
    few, many = (estimate_pairs_s(n, 2, p, cross_stream=False) for n in (2, 20))
    assert 0 < few < many < estimate_pairs_s(20, 2, p, cross_stream=True)
    assert estimate_pairs_s(20, 2, replace(p, rounds=10), cross_stream=False) > many


def test_the_time_left_is_the_estimates_ahead_scaled_by_how_the_finished_stages_compared(monkeypatch):
    from streamlab.calibration import progress as module
    clock = [100.0]
    monkeypatch.setattr(module.time, "monotonic", lambda: clock[0])
    out = io.StringIO()
    with module.StageProgress(Console(file=out, width=200)) as p:  # not a terminal: plain lines
        p.ahead([("serial a b4", 20.0), ("serial b b4", 10.0), ("pairs 1", 30.0)])
        assert p.left_s() == 60.0
        with p.stage("serial a b4", 20.0):
            clock[0] += 5.0
            assert p.left_s() == 55.0  # 15 s of this stage's estimate, then 40
            clock[0] += 35.0  # it takes 40 s against 20: everything ahead takes twice its estimate
            assert p.left_s() == 40.0  # past its estimate: only what is ahead
        assert p.ratio == 2.0 and p.left_s() == 80.0
        with p.stage("serial b b4", 10.0):
            clock[0] += 4.0
            assert p.left_s() == pytest.approx(2 * (10.0 - 4.0 / 2) + 2 * 30.0)
    lines = out.getvalue().splitlines()
    assert lines[0].endswith("stage 1/3: serial a b4 (~20 s; ~60 s left)")
    assert lines[1].endswith("serial a b4: done in 40.0 s")
    assert lines[2].endswith("stage 2/3: serial b b4 (~20 s; ~80 s left)")


# --- the work folder ----------------------------------------------------------------------------

KEY = WorkKey(DEVICE, "sha256:0123456789abcdef", CalibrationShape("glm5", 8192, 8, 64, "fp8"), (4, 64), "triton")


def test_a_work_folder_resumes_only_its_own_calibration(tmp_path):
    work, notes = WorkFolder.open(tmp_path / "w", KEY, "cmd", resume=False)
    assert notes == [] and not (tmp_path / "w" / MANIFEST).exists()
    f = tmp_path / "w" / "runs" / "a.json"
    f.parent.mkdir(parents=True)
    f.write_text("{}")
    work.record("serial serial b4", [f], 17.5)
    assert read_manifest(tmp_path / "w" / MANIFEST).stages[0].files == ("runs/a.json",)
    with pytest.raises(Failure, match="add --resume to continue it"):
        WorkFolder.open(tmp_path / "w", KEY, "cmd", resume=False)
    again, notes = WorkFolder.open(tmp_path / "w", KEY, "cmd", resume=True)
    assert again.done("serial serial b4").seconds == 17.5 and "1 finished stages kept" in notes[0]
    for change, word in (({"device": "NVIDIA H100 80GB HBM3"}, "device"), ({"kernel_hash": "sha256:ffff"},
                         "kernel_hash"), ({"batches": (1, 4)}, "batches"), ({"backend": "aiter"}, "backend")):
        with pytest.raises(Failure) as e:
            WorkFolder.open(tmp_path / "w", replace(KEY, **change), "cmd", resume=True)
        assert e.value.code == EXIT_BAD_INPUT and word in str(e.value) and "cannot be resumed" in str(e.value)
    f.unlink()  # a stage whose file went missing runs again
    again, notes = WorkFolder.open(tmp_path / "w", KEY, "cmd", resume=True)
    assert again.done("serial serial b4") is None and "runs again" in notes[1]
    (tmp_path / "w" / MANIFEST).write_text("{not json")
    with pytest.raises(Failure, match="cannot read the calibration manifest"):
        WorkFolder.open(tmp_path / "w", KEY, "cmd", resume=True)


# --- the whole calibration, on the stand-in -----------------------------------------------------

def test_a_calibration_measures_every_stage_and_writes_the_profile(tmp_path):
    runner = StandIn()
    prof = calibrate_on_device(request(tmp_path), runner, QUIET)
    serial = [f"serial {name} b{b}" for b in (4, 64) for name in ("serial", "serial_moe_unfused")]
    assert runner.calls[:4] == serial and runner.calls[4] == "pairs pairs-1.json"
    first = runner.jobs[0]
    assert first.cross_stream and first.batches == (4, 64) and first.serial.endswith("serial.yaml")
    assert all(not j.cross_stream for j in runner.jobs[1:]) and len(runner.jobs) <= MAX_PAIR_ROUNDS
    # the first stage's pairs are those derived on the serial stages' profile
    assert first.pairs == derive_pairs(shipped(), first_profile(tmp_path / "again"), (4, 64))
    assert load(first.layout).variant == pair_variant(first_profile(tmp_path / "again2"), first.pairs, shipped())
    measured = {(p.batch, p.first, p.second) for p in prof.pair_measures}
    assert measured == {(p.batch, p.first, p.second) for j in runner.jobs for p in j.pairs}
    assert all(p.excess == pytest.approx(EXCESS) for p in prof.pair_measures)
    written = load_profile(str(tmp_path / "h200.yaml"))
    prov = written.provenance
    assert list(prov.stages) == serial + [f"pairs {k}" for k in range(1, len(runner.jobs) + 1)]
    assert prov.settings == {"backend": "triton"} and prov.driver == "580.95.05"
    assert prov.command == "streamlab calibrate --measure --batch 4,64" and prov.batches == (4, 64)
    assert prov.kernel_hash == kernel_hash() and prov.device == DEVICE
    assert "streamlab calibrate --measure (pairs 1) on NVIDIA H200" in written.fence_us.source
    manifest = read_manifest(tmp_path / "h200.calibration" / MANIFEST)
    assert [s.name for s in manifest.stages] == list(prov.stages)


def test_an_interrupted_calibration_keeps_its_stages_and_resumes_to_the_same_profile(tmp_path):
    whole = calibrate_on_device(request(tmp_path / "whole", out=tmp_path / "whole.yaml",
                                        work=tmp_path / "whole.calibration"), StandIn(), QUIET)
    with pytest.raises(Failure) as e:
        calibrate_on_device(request(tmp_path), StandIn(fail_at=3), QUIET)
    assert e.value.code == EXIT_INTERRUPTED
    assert "interrupted in stage serial serial b64" in str(e.value)
    assert "2 finished stages kept" in str(e.value) and "--batch 4,64 --resume" in str(e.value)
    assert not (tmp_path / "h200.yaml").exists()
    done = read_manifest(tmp_path / "h200.calibration" / MANIFEST).stages
    assert [s.name for s in done] == ["serial serial b4", "serial serial_moe_unfused b4"]
    assert all((tmp_path / "h200.calibration" / f).exists() for s in done for f in s.files)
    # a failed stage (the process measuring it died) is the same, with its own exit code
    with pytest.raises(Failure) as e:
        calibrate_on_device(request(tmp_path, resume=True), StandIn(fail_at=2, error=Failure("it died", 3)), QUIET)
    assert e.value.code == 3 and "stage serial serial_moe_unfused b64 failed: it died" in str(e.value)
    assert "3 finished stages kept" in str(e.value)
    runner = StandIn()
    resumed = calibrate_on_device(request(tmp_path, resume=True), runner, QUIET)
    assert runner.calls[0] == "serial serial_moe_unfused b64"  # the finished ones are not measured again
    assert resumed.node_us == whole.node_us and resumed.pair_measures == whole.pair_measures
    assert resumed.fence_us == whole.fence_us and resumed.variant_node_us == whole.variant_node_us


def test_without_a_gpu_calibrate_measure_fails_and_writes_nothing(tmp_path):
    import torch

    from streamlab.cli import app
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = tmp_path / "p.yaml"
    r = CliRunner().invoke(app, ["calibrate", "--measure", "--batch", "4", "--out", str(out),
                                 "--scenarios", str(SCENARIOS)])
    assert r.exit_code == EXIT_ENVIRONMENT and "torch sees none" in r.output
    assert list(tmp_path.iterdir()) == []


def test_calibrate_refuses_options_that_do_not_go_together(tmp_path):
    from streamlab.cli import app
    out = str(tmp_path / "p.yaml")
    for args, words in ((["--measure", "r.json"], "drop the result files"),
                        (["--for", "--profile", "h100"], "--for measures the overlaps"),
                        (["--for", str(SCENARIOS / "a_v4.yaml")], "--profile"),
                        (["--measure", "--pairwise", "p.json"], "--pairwise"),
                        ([], "needs result files")):
        r = CliRunner().invoke(app, ["calibrate", *args, "--out", out])
        assert r.exit_code == EXIT_BAD_INPUT and words in r.output, (args, r.output)
    assert list(tmp_path.iterdir()) == []


# --- pairs on demand ----------------------------------------------------------------------------

def test_for_measures_the_pairs_the_layouts_lack_and_adds_them(tmp_path):
    calibrate_on_device(request(tmp_path), StandIn(), QUIET)
    base = load_profile(str(tmp_path / "h200.yaml"))
    heldout = tuple(load(p) for p in HELDOUT)
    lacking = derive_pairs(heldout, base, (4, 64))
    assert lacking  # the held-out layouts were written to create overlaps the shipped ones lack
    runner = StandIn()
    req = PairsFor(str(tmp_path / "h200.yaml"), heldout, tmp_path / "more.yaml", tmp_path / "more.calibration",
                   "streamlab calibrate --measure --for ...", layouts=tuple(shipped()))
    more = pairs_for(req, runner, QUIET)
    assert runner.jobs[0].pairs == lacking and not runner.jobs[0].cross_stream
    written = load_profile(str(tmp_path / "more.yaml"))
    (added,) = written.provenance.added
    assert added.scenarios == tuple(str(p) for p in HELDOUT) and added.command == req.command
    assert set(added.pairs) == {str(p) for j in runner.jobs for p in j.pairs}
    old = {(p.batch, p.first, p.second) for p in base.pair_measures}
    new = {(p.batch, p.first, p.second) for p in more.pair_measures}
    assert new == old | {(p.batch, p.first, p.second) for j in runner.jobs for p in j.pairs}
    assert written.node_us == base.node_us and written.name == "h200"
    assert written.provenance.stages == base.provenance.stages  # the calibration's, kept
    if len(runner.jobs) < MAX_PAIR_ROUNDS:  # it converged: nothing left to measure, nothing written
        assert pairs_for(replace(req, profile=str(tmp_path / "more.yaml"), out=tmp_path / "none.yaml"),
                         StandIn(), QUIET) is None
        assert not (tmp_path / "none.yaml").exists()


def test_for_with_nothing_missing_needs_no_gpu_and_writes_nothing(tmp_path):
    calibrate_on_device(request(tmp_path), StandIn(), QUIET)

    class NoGpu(StandIn):
        def facts(self):
            raise AssertionError("no stage should run")
    req = PairsFor(str(tmp_path / "h200.yaml"), (load(SCENARIOS / "serial.yaml"),), tmp_path / "x.yaml",
                   tmp_path / "x.calibration", "cmd")
    assert pairs_for(req, NoGpu(), QUIET) is None
    assert not (tmp_path / "x.yaml").exists() and not (tmp_path / "x.calibration").exists()


def test_for_refuses_a_profile_of_another_gpu_or_of_published_figures(tmp_path):
    calibrate_on_device(request(tmp_path), StandIn(), QUIET)
    prof = load_profile(str(tmp_path / "h200.yaml"))
    other = tmp_path / "h100.yaml"
    other.write_text(dump_profile(replace(prof, provenance=replace(prof.provenance, device="NVIDIA H100"))))
    heldout = tuple(load(p) for p in HELDOUT)
    with pytest.raises(Failure, match="measured on NVIDIA H100, this GPU is NVIDIA H200"):
        pairs_for(PairsFor(str(other), heldout, tmp_path / "x.yaml", tmp_path / "x", "cmd"), StandIn(), QUIET)
    with pytest.raises(Failure, match="published figures"):
        pairs_for(PairsFor("mi355x", heldout, tmp_path / "x.yaml", tmp_path / "x", "cmd"), StandIn(), QUIET)
    assert not (tmp_path / "x.yaml").exists()


def test_the_provenance_of_a_calibration_reads_back(tmp_path):
    calibrate_on_device(request(tmp_path), StandIn(), QUIET)
    prof = load_profile(str(tmp_path / "h200.yaml"))
    again = tmp_path / "again.yaml"
    again.write_text(dump_profile(prof))
    assert load_profile(str(again)).provenance == prof.provenance
    bad = tmp_path / "bad.yaml"
    bad.write_text((tmp_path / "h200.yaml").read_text().replace("stages:\n", "stages:\n    nonsense: -1\n", 1))
    with pytest.raises(Failure, match="provenance.stages.nonsense"):
        load_profile(str(bad))


# --- on a GPU -----------------------------------------------------------------------------------

TINY = {"model: glm5": "model: tiny", "context: 8192, tp: 8": "context: 512, tp: 1",
        "measure: {layers: 4, warmup: 20, iters: 50, repeats: 5}":
        "measure: {layers: 2, warmup: 2, iters: 10, repeats: 2, seconds: 0.2, profile_replays: 2}"}


def tiny_scenarios(folder: Path) -> Path:
    """serial and a_v4 at the tiny model's shape, in `folder`: what the GPU tests calibrate on."""
    folder.mkdir()
    for name in ("serial", "a_v4"):
        text = (SCENARIOS / f"{name}.yaml").read_text()
        for a, b in TINY.items():
            text = text.replace(a, b)
        (folder / f"{name}.yaml").write_text(text)
    return folder


@pytest.mark.gpu
def test_a_tiny_calibration_on_the_gpu_then_pairs_for_a_held_out_layout(tmp_path):
    """Every stage for real, at a small shape: two layouts' variants, one batch, few units."""
    from streamlab.calibration.runner import DeviceRunner

    folder = tiny_scenarios(tmp_path / "scenarios")
    quick = PairProtocol(units=2, rounds=2, replays=5, lead_in=1, settle_s=0.2)
    req = OnDevice("tiny", tmp_path / "tiny.yaml", tuple(load_layouts(folder)), (2,), tmp_path / "work",
                   "pytest", protocol=quick)
    prof = calibrate_on_device(req, DeviceRunner(), Console(width=160))
    assert prof.provenance.stages and "pairs 1" in prof.provenance.stages
    assert prof.multi_stream_graph_entry_us.source.startswith("measured")
    assert set(prof.node_us) == {n.name for n in load(folder / "serial.yaml").layer.nodes}
    doc = json.loads((tmp_path / "work" / "pairs-1.json").read_text())
    assert {r["kind"] for r in doc["records"]} >= {"chain", "ladder"} and doc["noop_us"] > 0
    text = (ROOT / "bench" / "heldout" / "indexer_first.yaml").read_text()
    for a, b in TINY.items():
        text = text.replace(a, b)
    (tmp_path / "indexer_first.yaml").write_text(text)
    layout = load(tmp_path / "indexer_first.yaml")
    lacking = derive_pairs([layout], load_profile(str(tmp_path / "tiny.yaml")), (2,))
    more = pairs_for(PairsFor(str(tmp_path / "tiny.yaml"), (layout,), tmp_path / "more.yaml", tmp_path / "more",
                              "pytest", protocol=quick, layouts=tuple(load_layouts(folder))),
                     DeviceRunner(), Console(width=160))
    if lacking:
        assert more is not None and {str(p) for p in lacking} <= set(more.provenance.added[0].pairs)
    else:
        assert more is None
