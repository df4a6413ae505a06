"""`streamlab search --measure` without a GPU: the pairs the top K lack measured by calibrate's
pairs on demand and the search made again on the extended profile, the runs interleaved in
rounds (G rounds side by side on G GPUs), the verdicts against the noise band, the winner's
comment block, the typed measurement, interruption and --resume, outputs that differ, no GPU.
A stand-in measures (calibrate's stand-in for the pairs, chosen latencies for the runs); the
launcher path runs for real on the CPU (two ranks simulating), and one GPU test runs it all."""

from __future__ import annotations

import dataclasses
import io
import json
from dataclasses import replace
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from streamlab.calibration.plan import derive_pairs, load_layouts
from streamlab.collective.launch import launch_layouts
from streamlab.collective.layout_runs import LayoutRun, write_jobs
from streamlab.errors import EXIT_BAD_INPUT, EXIT_ENVIRONMENT, EXIT_INTERRUPTED, Failure
from streamlab.layer import Variant
from streamlab.models import Shape
from streamlab.results import RunResult, SearchMeasurement, dump, load
from streamlab.scenario import load as load_scenario
from streamlab.search.enumerate import Limits
from streamlab.search.find import Request, find
from streamlab.search.measure import Ask, prove
from streamlab.search.write import top_scenarios
from streamlab.sim.profile_file import dump_profile, load_profile
from streamlab.sim.provenance import kernel_hash
from tests.synthetic import run_result
from tests.test_calibrate_measure import DEVICE, SCENARIOS, StandIn

QUIET = Console(width=200, file=io.StringIO())
SERIAL_US, BEST_US = 200.0, 199.0
CANDIDATE_US = {1: 190.0, 2: 199.6}  # rank 1 beyond the noise, rank 2 inside it
NOISE = 0.001  # every run's repeat spread


class Measurer(StandIn):
    """calibrate's stand-in (facts, pairs) plus layout runs with chosen latencies: serial 200 us,
    the best shipped 199, candidate rank 1 190 and rank 2 199.6 (+0.1 us a round)."""

    def __init__(self, gpus: int = 1, differ: tuple[int, ...] = (), **kw) -> None:
        super().__init__(**kw)
        self.gpus = gpus
        self.differ = differ
        self.launches: list[list[LayoutRun]] = []

    def runs(self, runs: list[LayoutRun], backend: str) -> list[Path]:
        self.launches.append(runs)
        out = []
        for run in runs:
            scen = load_scenario(run.path)
            self._call(f"run {scen.name} b{run.shape.batch}")
            rank = int(scen.name.rpartition("_top")[2]) if "_top" in scen.name else 1
            us = (SERIAL_US if scen.name == "serial" else BEST_US if not scen.name.startswith("found_")
                  else CANDIDATE_US[rank]) + 0.1 * int(Path(run.folder).name.split("-")[0][1:])
            r = dataclasses.replace(run_result("serial", run.shape.batch, latency=us, spread=NOISE, device=DEVICE),
                                    scenario=scen.name, path=run.path,
                                    equal_to_serial=not (scen.name.startswith("found_") and rank in self.differ))
            out.append(dump(r, Path(run.folder) / f"{scen.name}-b{run.shape.batch}-cuda.json"))
        return out


@pytest.fixture(scope="module")
def profile(tmp_path_factory) -> str:
    """The h100 profile as if calibrated on the stand-in's GPU with these kernels."""
    p = load_profile("h100")
    path = tmp_path_factory.mktemp("profile") / "h200.yaml"
    path.write_text(dump_profile(replace(p, name="h200", provenance=replace(p.provenance, device=DEVICE,
                                                                               kernel_hash=kernel_hash()))))
    return str(path)


def request(profile: str) -> Request:
    return Request(batches=(4, 64), profile=profile, variant=Variant(), limits=Limits(2, 4, 0), top=2, workers=2)


@pytest.fixture(scope="module")
def first(profile):
    return find(request(profile))


def ask(tmp_path: Path, **over) -> Ask:
    base = {"top": 2, "rounds": 2, "out": tmp_path / "out", "work": tmp_path / "work",
            "command": "streamlab search --measure", "layouts": tuple(load_layouts(SCENARIOS))}
    return Ask(**{**base, **over})


@pytest.fixture(scope="module")
def proved(profile, first, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("proved")
    runner = Measurer()
    return prove(request(profile), first, ask(tmp), runner, QUIET, find), runner, tmp


def test_the_pairs_the_top_k_lack_are_measured_and_the_space_searched_again(profile, first, proved, tmp_path):
    proof, runner, _ = proved
    lacking = derive_pairs([load_scenario(f.path) for o in first.batches
                            for f in top_scenarios(first, o.batch, tmp_path, 2)], load_profile(profile), (4, 64))
    assert lacking and runner.jobs[0].pairs == lacking  # exactly what the top K lacked, no more
    m = proof.measurement
    assert set(m.pairs_added) == {str(p) for j in runner.jobs for p in j.pairs} and m.reranks >= 1
    extended = load_profile(m.ranked_on)  # written under --out, ranked on
    assert Path(m.ranked_on).parent == proof.written[0].parent and m.ranked_on.endswith("-search.yaml")
    assert {str(p) for a in extended.provenance.added for p in a.pairs} == set(m.pairs_added)
    assert len(extended.pair_excess) > len(load_profile(profile).pair_excess)


def test_runs_are_interleaved_in_rounds_serial_first(proved):
    proof, runner, _ = proved
    runs = [c for c in runner.calls if c.startswith("run ")]
    per_round = []
    for b in (4, 64):
        names = [x.scenario for x in next(o for o in proof.measurement.batches if o.batch == b).layouts]
        per_round += [f"run {n} b{b}" for n in ["serial", names[2], names[0], names[1]]]
    assert runs == per_round * 2  # round 1 then round 2, each batch's serial first
    assert all(len(launch) == 1 for launch in runner.launches)  # one GPU: one fresh process a run


def test_verdicts_winner_and_its_comment_block(proved):
    proof, _, _ = proved
    for b in proof.measurement.batches:
        top1, top2, best, serial = b.layouts
        assert (top1.role, top2.role, best.role, serial.role) == ("candidate", "candidate", "best shipped", "serial")
        assert top1.median_us == pytest.approx(190.15) and top1.round_medians_us == pytest.approx((190.1, 190.2))
        assert top1.vs_serial.delta_us == pytest.approx(-10.0) and top1.vs_serial.verdict == "faster"
        assert top1.vs_best_shipped.verdict == "faster" and top1.vs_best_shipped.other == best.scenario
        # the band: 0.5% of serial's median at least (check.MIN_BAND), above twice the runs' 0.1% noise
        assert top1.vs_serial.band_us == pytest.approx(0.005 * 200.2)
        assert top2.vs_serial.delta_us == pytest.approx(-0.4) and top2.vs_serial.verdict == "within the noise"
        assert top2.vs_best_shipped.delta_us == pytest.approx(0.6) and top2.vs_best_shipped.verdict == "within the noise"
        assert serial.vs_serial is None and all(x.equal_to_serial for x in b.layouts)
        assert b.winner == top1.scenario
        text = Path(b.winner_file).read_text()
        assert "Predicted, then measured on the GPU." in text and "measured:  on NVIDIA H200" in text
        assert f"{top1.median_us:.1f} us per layer (p20 {top1.p20_us:.1f}" in text
        assert f"vs serial {serial.median_us:.1f} us: -10.0 us (-5.0%), faster (band +-1.0 us; rounds -10.0, -10.0)" in text
        assert f"vs best shipped {best.scenario} {best.median_us:.1f} us: -9.0 us" in text
        assert "the measured fastest of the top 2 at batch" in text and f"rank 2 {top2.median_us:.1f} us" in text
        assert load_scenario(Path(b.winner_file)).name.startswith("found_")  # loads and validates
        assert (Path(b.report) / "report.md").exists() and list(Path(b.report).glob("*.png"))


def test_the_measurement_is_a_typed_result_that_reads_back(proved):
    proof, _, _ = proved
    path = next(p for p in proof.written if p.name.startswith("search-measure-"))
    assert load(path, SearchMeasurement) == proof.measurement
    doc = json.loads(path.read_text())
    assert doc["kind"] == "search-measure" and doc["rounds"] == 2 and doc["gpus"] == 1


def test_an_interrupted_measurement_keeps_its_runs_and_resumes(profile, first, proved, tmp_path):
    whole = proved[0].measurement
    with pytest.raises(Failure) as e:
        prove(request(profile), first, ask(tmp_path), Measurer(fail_at=4 + len(proved[1].jobs)), QUIET, find)
    assert e.value.code == EXIT_INTERRUPTED and "--measure --resume" in str(e.value)
    assert "3 finished stages kept" in str(e.value)
    with pytest.raises(Failure) as e:  # not without --resume
        prove(request(profile), first, ask(tmp_path), Measurer(), QUIET, find)
    assert e.value.code == EXIT_BAD_INPUT and "add --resume" in str(e.value)
    runner = Measurer()
    again = prove(request(profile), first, ask(tmp_path, resume=True), runner, QUIET, find).measurement
    assert not runner.jobs  # the pairs were measured before
    assert len([c for c in runner.calls if c.startswith("run ")]) == 16 - 3
    strip = lambda m: [(x.scenario, x.median_us, x.vs_serial) for b in m.batches for x in b.layouts]
    assert strip(again) == strip(whole)


def test_a_candidate_whose_outputs_differ_is_not_the_winner(profile, first, tmp_path):
    proof = prove(request(profile), first, ask(tmp_path, rounds=1), Measurer(differ=(1,)), QUIET, find)
    for b in proof.measurement.batches:
        assert not b.layouts[0].equal_to_serial and b.winner == b.layouts[1].scenario
    assert len(proof.differ) == 2


def test_with_two_gpus_two_rounds_run_side_by_side(profile, first, tmp_path):
    runner = Measurer(gpus=2)
    proof = prove(request(profile), first, ask(tmp_path, rounds=3), runner, QUIET, find)
    sizes = [len(launch) for launch in runner.launches]
    assert sizes == [2] * 8 + [1] * 8  # rounds 1-2 side by side, then round 3 alone
    assert [Path(r.folder).name.split("-")[0] for r in runner.launches[0]] == ["r1", "r2"]
    assert all(len(x.round_medians_us) == 3 for b in proof.measurement.batches for x in b.layouts)


def test_the_launcher_runs_one_layout_per_rank(tmp_path):
    """torch's elastic launcher for real, two ranks on the CPU (each checks its layout and
    simulates it: what a rank does on a GPU, measured there)."""
    shape = Shape(batch=2, context=256, tp=1)
    runs = [LayoutRun(str(SCENARIOS / f"{n}.yaml"), "tiny", shape, str(tmp_path / n), device="cpu")
            for n in ("serial", "a_v4")]
    launch_layouts(write_jobs(tmp_path / "jobs.json", runs, "reference"), 2)
    for run in runs:
        (result,) = Path(run.folder).glob("*.json")
        r = load(result, RunResult)
        assert r.scenario == Path(run.path).stem and r.equal_to_serial and r.shape == shape


def test_without_a_gpu_search_measure_fails_before_any_work(tmp_path):
    import torch

    from streamlab.cli import app
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    r = CliRunner().invoke(app, ["search", "--measure", "--out", str(tmp_path / "x")])
    assert r.exit_code == EXIT_ENVIRONMENT and "torch sees none" in r.output
    assert list(tmp_path.iterdir()) == []


# --- on a GPU -----------------------------------------------------------------------------------

@pytest.mark.gpu
def test_a_tiny_search_measured_on_the_gpu(tmp_path):
    """Calibrate a tiny profile, search it, measure the top 1 beside serial and the best shipped."""
    from streamlab.calibration.pairbench import PairProtocol
    from streamlab.calibration.run import OnDevice, calibrate_on_device
    from streamlab.search.measure import GpuRunner
    from tests.test_calibrate_measure import tiny_scenarios

    folder = tiny_scenarios(tmp_path / "scenarios")
    quick = PairProtocol(units=2, rounds=2, replays=5, lead_in=1, settle_s=0.2)
    calibrate_on_device(OnDevice("tiny", tmp_path / "tiny.yaml", tuple(load_layouts(folder)), (2,),
                                 tmp_path / "cal", "pytest", protocol=quick), GpuRunner(), Console(width=160))
    req = Request(model="tiny", shape=Shape(batch=2, context=512, tp=1), batches=(2,),
                  profile=str(tmp_path / "tiny.yaml"), limits=Limits(2, 4, 0), layers=2, top=1, workers=2,
                  shipped=folder)
    proof = prove(req, find(req), ask(tmp_path, top=1, rounds=1, layouts=tuple(load_layouts(folder))),
                  GpuRunner(), Console(width=160), find)
    (b,) = proof.measurement.batches
    assert [x.role for x in b.layouts] == ["candidate", "best shipped", "serial"]
    assert all(x.equal_to_serial and x.median_us > 0 for x in b.layouts) and b.winner
    assert "measured:  on" in Path(b.winner_file).read_text()


def test_the_cli_prints_the_measurement_as_json_and_writes_under_out(profile, tmp_path, monkeypatch):
    from streamlab.cli import app
    from streamlab.search import measure

    monkeypatch.setattr(measure, "GpuRunner", lambda **kw: Measurer(gpus=kw["gpus"] or 1))
    r = CliRunner().invoke(app, ["search", "--profile", profile, "--batch", "4", "--top", "2", "--max-waits", "4",
                                 "--barriers", "0", "--variant", "fused_rope_cat_cache=true", "--workers", "2",
                                 "--measure", "--rounds", "1", "--json", "--out", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["kind"] == "search-measure" and doc["rounds"] == 1 and doc["top"] == 2
    (b,) = doc["batches"]
    assert b["winner"] and Path(b["winner_file"]).parent == tmp_path / "out"
    assert all(Path(p).is_relative_to(tmp_path / "out") for p in (doc["ranked_on"], b["report"]))
    assert list(tmp_path.iterdir()) == [tmp_path / "out"]
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*") if p.is_file()}
    for extra, words in (((), "holds a measurement started before: add --resume"),
                         (("--resume",), "exists: an earlier found scenario is never replaced; pass --force")):
        again = CliRunner().invoke(app, ["search", "--profile", profile, "--batch", "4", "--top", "2", "--measure",
                                         "--json", "--out", str(tmp_path / "out"), *extra])
        assert again.exit_code == EXIT_BAD_INPUT and words in json.loads(again.stdout)["error"], again.output
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*") if p.is_file()} == before
