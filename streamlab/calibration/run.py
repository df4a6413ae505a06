"""`streamlab calibrate --measure`: a device profile of this GPU in one command, and `--for`: the
overlaps some layouts create that a profile lacks, measured and added.

`calibrate_on_device`, in stages (plan.py derives them from the layouts):
1. serial: each variant's single-stream layout at each batch, each run in a fresh process as
   `streamlab run` measures it (the layer timed, profiled, every node alone);
2. pairs 1, the cross-stream stage: the fence / graph-entry ladders, the serial layer after
   branched graphs, and the node pairs the layouts create on the profile fitted from stage 1;
3. pairs 2, 3: the pairs the layouts create on the profile refitted with what was measured
   (measuring pairs changes the simulated replay, which may then overlap others), until none
   is missing, at most MAX_PAIR_ROUNDS stages of pairs.
The fit is sim/calibrate.py's (and sim/pairwise.add_pairs for the later rounds), from the stage
files alone, so a resumed calibration fits exactly what an uninterrupted one would. The profile
is written once, at the end; its provenance records the GPU, driver, versions, backend (and HIP
queue settings on ROCm), the command and every stage's seconds.

`pairs_for` measures `missing_pairs` of the given layouts on a profile (rounds as above) and adds
them, the profile's provenance listing them under `added`.

Both keep every finished stage in a work folder (workdir.py): an interruption or a failed stage
leaves those, writes no profile, and says how to resume.
"""

from __future__ import annotations

import datetime
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

from rich.console import Console

from streamlab.calibration.device import DeviceFacts
from streamlab.calibration.pairbench import PairAt, PairProtocol, PairsJob
from streamlab.calibration.plan import (
    PAIRS_GUESS,
    Layouts,
    derive_pairs,
    estimate_pairs_s,
    layouts,
    pair_variant,
    serial_stages,
    single_stream,
)
from streamlab.calibration.progress import StageProgress
from streamlab.calibration.workdir import WorkFolder, WorkKey
from streamlab.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, Failure
from streamlab.io import write_atomic
from streamlab.scenario import Scenario
from streamlab.sim.calibrate import calibrate
from streamlab.sim.pairwise import add_pairs, pairs_in
from streamlab.sim.profile import DeviceProfile
from streamlab.sim.profile_file import dump_profile, load_profile, profile_path
from streamlab.sim.provenance import PairsAdded, kernel_hash

__all__ = ["MAX_PAIR_ROUNDS", "OnDevice", "PairsFor", "Runner", "calibrate_on_device", "pairs_for", "resume_hint",
           "run_stage"]

MAX_PAIR_ROUNDS = 3
PAIR_STATE = "clean"  # the process state pairs are fitted in (sim/pairwise.choose_state)
TOOL = "streamlab calibrate --measure"


class Runner(Protocol):
    """What runs the stages (runner.DeviceRunner on a GPU)."""

    world: int

    def facts(self) -> DeviceFacts: ...

    def serial(self, path: str, batch: int, backend: str, folder: Path) -> list[Path]: ...

    def pairs(self, job: PairsJob, out: Path) -> Path: ...


@dataclass(frozen=True)
class OnDevice:
    """What `calibrate --measure` was asked: the profile's name and file, the layouts it must
    cover, the batches, the work folder, the command line (for the provenance and the resume hint)."""

    name: str
    out: Path
    layouts: tuple[Scenario, ...]
    batches: tuple[int, ...]
    work: Path
    command: str
    resume: bool = False
    protocol: PairProtocol = field(default_factory=PairProtocol)


@dataclass(frozen=True)
class PairsFor:
    """What `calibrate --measure --for` was asked. `layouts`: where to find a layout of the
    profile's pair variant when the scenarios given run another (the scenarios folder)."""

    profile: str
    scenarios: tuple[Scenario, ...]
    out: Path
    work: Path
    command: str
    name: str | None = None
    batches: tuple[int, ...] | None = None
    resume: bool = False
    protocol: PairProtocol = field(default_factory=PairProtocol)
    layouts: tuple[Scenario, ...] = ()


def calibrate_on_device(req: OnDevice, runner: Runner, console: Console) -> DeviceProfile:
    """Measure every stage (module docstring), fit, write the profile to `req.out`."""
    lay = layouts(list(req.layouts))
    facts = runner.facts()
    key = WorkKey(facts.name, kernel_hash(), lay.shape, req.batches, facts.backend, runner.world)
    work, notes = WorkFolder.open(req.work, key, req.command, resume=req.resume)
    serial = serial_stages(lay, req.batches)
    pairs_names: list[str] = []
    hint = resume_hint(req.command)
    with StageProgress(console) as progress:
        for line in notes:
            progress.print(line)
        progress.print(f"calibrating {req.name} on {facts.name} ({facts.backend}): {len(serial)} serial runs "
                       f"({', '.join(s.name for s in lay.serials)} at batches {', '.join(map(str, req.batches))}), "
                       f"then the pairs the layouts create; stages kept in {work.path}")
        nb = len(req.batches)
        guess = estimate_pairs_s(PAIRS_GUESS * nb, nb, req.protocol, cross_stream=True)
        progress.ahead([(s.name, s.estimate_s) for s in serial] + [("pairs 1", guess)])
        for st in serial:
            run_stage(work, progress, st.name, st.estimate_s, hint,
                   lambda st=st: runner.serial(st.path, st.batch, facts.backend, work.path / st.folder))
        prof = _fit(req.name, lay, facts, work, [s.name for s in serial], pairs_names, req.command)
        for k in range(1, MAX_PAIR_ROUNDS + 1):
            name = f"pairs {k}"
            if not work.done(name):
                pairs = derive_pairs(lay.all, prof, req.batches)
                if k > 1 and not pairs:
                    break
                est = estimate_pairs_s(len(pairs), len(req.batches), req.protocol, cross_stream=k == 1)
                progress.ahead([(name, est)])
                progress.print(f"{name}: {_pairs_line(pairs)}")
                job = _job(prof, pairs, lay.all, lay, facts, req.protocol, name, cross_stream=k == 1,
                           serial=lay.base.path, batches=req.batches)
                run_stage(work, progress, name, est, hint,
                       lambda job=job, out=work.path / f"pairs-{k}.json": [runner.pairs(job, out)])
            else:
                progress.skip(name)
            pairs_names.append(name)
            prof = _fit(req.name, lay, facts, work, [s.name for s in serial], pairs_names, req.command)
        left = derive_pairs(lay.all, prof, req.batches)
        if left:
            progress.print(f"after {MAX_PAIR_ROUNDS} rounds of pairs, {len(left)} overlaps are still unmeasured "
                           f"(the prediction interval widens by them): {_pairs_line(left)}")
    settings = {**facts.settings, **({"world": str(runner.world)} if runner.world > 1 else {})}
    versions = {**prof.provenance.versions, **facts.versions}
    prof = replace(prof, provenance=replace(prof.provenance, versions=versions, settings=settings,
                                            stages=work.seconds))
    write_atomic(req.out, dump_profile(prof))
    return prof


def pairs_for(req: PairsFor, runner: Runner, console: Console) -> DeviceProfile | None:
    """Measure the overlaps `req.scenarios` create that the profile lacks, add them, write the
    profile to `req.out`; None (nothing written) when none is missing."""
    base = load_profile(req.profile)
    batches = tuple(req.batches or base.provenance.batches)
    names = ", ".join(s.name for s in req.scenarios)
    pairs = derive_pairs(req.scenarios, base, batches)
    if not pairs:
        console.print(f"nothing to measure: profile {base.name} has measured every overlap of {names} at "
                      f"batches {', '.join(map(str, batches))}; nothing written")
        return None
    if not base.provenance.calibrated:
        raise Failure(f"{base.origin}: profile {base.name} is built from published figures (provenance.basis "
                      f"{base.provenance.basis}): pairs measured here would sit beside node latencies of other "
                      "kernels; calibrate this GPU first: streamlab calibrate --measure --out PROFILE.yaml",
                      EXIT_BAD_INPUT)
    facts = runner.facts()
    _same_set_up(base, facts)
    key = WorkKey(facts.name, kernel_hash(), base.provenance.shape, batches, facts.backend, 1,
                  base_profile=_file_hash(profile_path(req.profile)))
    work, notes = WorkFolder.open(req.work, key, req.command, resume=req.resume)
    hint = resume_hint(req.command)
    prof, measured, names_done = base, [], []
    source = (f"measured: {TOOL} on {facts.name} ({PAIR_STATE} process state); the pairs `--for` added are "
              "listed in provenance.added")
    with StageProgress(console) as progress:
        for line in notes:
            progress.print(line)
        for k in range(1, MAX_PAIR_ROUNDS + 1):
            name = f"pairs for {k}"
            if not work.done(name):
                if k > 1:
                    pairs = derive_pairs(req.scenarios, prof, batches)
                    if not pairs:
                        break
                est = estimate_pairs_s(len(pairs), len(batches), req.protocol, cross_stream=False)
                progress.ahead([(name, est)])
                progress.print(f"{name}: {_pairs_line(pairs)}")
                job = _job(prof, pairs, (*req.scenarios, *req.layouts), None, facts, req.protocol, name)
                run_stage(work, progress, name, est, hint,
                       lambda job=job, out=work.path / f"pairs-for-{k}.json": [runner.pairs(job, out)])
            else:
                progress.skip(name)
            names_done.append(name)
            (path,) = work.files(name)
            new, pw = pairs_in(path, PAIR_STATE)
            prof = add_pairs(prof, new, source, variant=pw.variant)
            measured += new
        left = derive_pairs(req.scenarios, prof, batches)
        if left:
            progress.print(f"after {MAX_PAIR_ROUNDS} rounds, {len(left)} overlaps are still unmeasured: "
                           f"{_pairs_line(left)}")
    seconds = sum(s for n, s in work.seconds.items() if n in names_done)
    added = PairsAdded(datetime.date.today().isoformat(), req.command, tuple(s.path for s in req.scenarios),
                       tuple(str(PairAt(p.batch, p.first, p.second)) for p in measured), seconds)
    prof = replace(prof, name=req.name or base.name,
                   provenance=replace(prof.provenance, added=(*base.provenance.added, added)))
    write_atomic(req.out, dump_profile(prof))
    return prof


def _fit(name: str, lay: Layouts, facts: DeviceFacts, work: WorkFolder, serial: list[str], pairs: list[str],
         command: str) -> DeviceProfile:
    """The profile from the finished stages' files: runs and the first pairs file through
    sim.calibrate, later pairs files added (sim.pairwise.add_pairs)."""
    runs = [f for n in serial for f in work.files(n) if f.suffix == ".json"]
    files = [f for n in pairs for f in work.files(n)]
    prof = calibrate(runs, name, serial=lay.base.name, variant_serials=tuple(s.name for s in lay.variant_serials),
                     pairwise=files[0] if files else None, pairwise_state=PAIR_STATE, command=command,
                     driver=facts.driver, hip_queues=facts.hip_queues)
    for i, path in enumerate(files[1:], 2):
        new, pw = pairs_in(path, PAIR_STATE)
        prof = add_pairs(prof, new, f"measured: {TOOL} on {facts.name}, pairs stages 1-{i} ({PAIR_STATE} process "
                         "state)", variant=pw.variant)
    return prof


def _job(prof: DeviceProfile, pairs: tuple[PairAt, ...], scens, lay: Layouts | None, facts: DeviceFacts,
         protocol: PairProtocol, name: str, **cross) -> PairsJob:
    """The pairs stage's job: the pairs at the profile's shape, in its pair variant, built from a
    layout of that variant (a single-stream one where the layouts have it)."""
    variant = pair_variant(prof, pairs, scens)
    layout = (lay.of_variant(variant) if lay else None) or next(
        (s for s in sorted(scens, key=lambda s: not single_stream(s)) if s.variant == variant), None)
    if layout is None:
        raise Failure(f"no layout of the profile's pair variant {variant} to build the pairs' layer from; "
                      "give --scenarios a folder with one", EXIT_BAD_INPUT)
    return PairsJob(layout.path, prof.provenance.shape, pairs, facts.backend, tool=f"{TOOL} ({name})",
                    protocol=protocol, **cross)


def run_stage(work: WorkFolder, progress: StageProgress, name: str, estimate_s: float, hint: str,
              run: Callable[[], list[Path]], *, unwritten: str = "no profile written") -> list[Path]:
    """Run one stage unless the work folder has it; record it once its files are written. A
    stage that fails or is interrupted leaves the finished ones and says how to go on
    (`unwritten`: what the command has not written yet). `search --measure` runs its stages here too."""
    if work.done(name):
        progress.skip(name)
        return work.files(name)
    t0 = time.monotonic()
    try:
        with progress.stage(name, estimate_s):
            files = run()
    except KeyboardInterrupt:
        raise Failure(f"interrupted in stage {name}. {_kept(work, hint, unwritten)}", EXIT_INTERRUPTED) from None
    except Failure as e:
        raise Failure(f"stage {name} failed: {e}\n{_kept(work, hint, unwritten)}", e.code) from None
    except Exception:
        progress.print(f"stage {name} crashed (below). {_kept(work, hint, unwritten)}")
        raise
    work.record(name, files, time.monotonic() - t0)
    return files


def _kept(work: WorkFolder, hint: str, unwritten: str) -> str:
    n = len(work.manifest.stages)
    listed = "manifest.json" if n else "none yet"
    return (f"{n} finished stage{'s' if n != 1 else ''} kept in {work.path} ({listed}); {unwritten}. "
            f"Continue with: {hint}")


def resume_hint(command: str) -> str:
    return command if " --resume" in command else command + " --resume"


def _pairs_line(pairs: tuple[PairAt, ...]) -> str:
    by_batch: dict[int, list[str]] = {}
    for p in pairs:
        by_batch.setdefault(p.batch, []).append(f"{p.first}|{p.second}")
    return (f"{len(pairs)} pairs: " if pairs else "no pairs") + "; ".join(
        f"b{b} " + ", ".join(v) for b, v in sorted(by_batch.items()))


def _same_set_up(prof: DeviceProfile, facts: DeviceFacts) -> None:
    """Pairs measured here belong in `prof` only if it was measured on this GPU with these kernels."""
    prov, where = prof.provenance, prof.origin or prof.name
    if prov.device != facts.name:
        raise Failure(f"{where}: profile {prof.name} was measured on {prov.device}, this GPU is {facts.name}: "
                      "pairs measured here do not belong in it; calibrate this GPU: streamlab calibrate --measure",
                      EXIT_BAD_INPUT)
    now = kernel_hash()
    if prov.kernel_hash != now:
        raise Failure(f"{where}: profile {prof.name} was measured with kernels {prov.kernel_hash}, the installed "
                      f"ones hash to {now}: pairs of these kernels would mix with node latencies of those; "
                      f"recalibrate: streamlab calibrate --measure --out {prof.name}.yaml", EXIT_BAD_INPUT)


def _file_hash(path: Path) -> str:
    return "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]

