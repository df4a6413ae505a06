"""The work folder of an on-device calibration: every finished stage's files and a manifest.

A stage writes its files first (each atomically); the manifest, rewritten atomically after each
stage, then lists it with its files and seconds. A stage cut short is therefore never listed, and
its partial files are overwritten when it runs again. `--resume` continues from the listed
stages, and only where they were measured like this calibration would measure them (`WorkKey`:
the GPU, the kernels' hash, the calibration shape and batches, the backend, the ranks, and for
`--for` the profile the pairs are added to); any other folder is refused with one message.

    manifest.json: {"format": 1, "kind": "calibration-work", "key": {...}, "command": ...,
                    "started": ..., "stages": [{"name", "files", "seconds", "finished"}, ...]}
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from dataclasses import dataclass, replace
from pathlib import Path

from streamlab.errors import EXIT_BAD_INPUT, Failure
from streamlab.io import write_json_atomic
from streamlab.results import from_json
from streamlab.sim.provenance import CalibrationShape

__all__ = ["MANIFEST", "Manifest", "StageDone", "WorkFolder", "WorkKey"]

MANIFEST = "manifest.json"
FORMAT, KIND = 1, "calibration-work"


@dataclass(frozen=True)
class WorkKey:
    """What a work folder's stages were measured with: a calibration resumes only on its own."""

    device: str
    kernel_hash: str
    shape: CalibrationShape
    batches: tuple[int, ...]
    backend: str
    world: int = 1
    base_profile: str = ""  # --for: the hash of the profile the pairs are added to
    layouts: str = ""  # search --measure: the hash of the profile ranked on and the layouts measured

    def differences(self, other: WorkKey) -> list[str]:
        """`field: theirs (here: ours)` for every field that differs."""
        return [f"{f.name} {getattr(other, f.name)!r} (this calibration: {getattr(self, f.name)!r})"
                for f in dataclasses.fields(self) if getattr(self, f.name) != getattr(other, f.name)]


@dataclass(frozen=True)
class StageDone:
    name: str
    files: tuple[str, ...]  # relative to the work folder
    seconds: float
    finished: str  # ISO time


@dataclass(frozen=True)
class Manifest:
    key: WorkKey
    command: str
    started: str
    stages: tuple[StageDone, ...] = ()


def _now() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")


class WorkFolder:
    """The finished stages of one calibration in `path`."""

    def __init__(self, path: Path, manifest: Manifest) -> None:
        self.path = Path(path)
        self.manifest = manifest

    @classmethod
    def open(cls, path: Path, key: WorkKey, command: str, *, resume: bool) -> tuple[WorkFolder, list[str]]:
        """The folder for a calibration with `key`; with lines to print (stages kept, dropped).
        A folder holding another calibration's stages is refused; one holding this calibration's
        is continued with `resume` and refused without it (nothing is overwritten unasked)."""
        path = Path(path)
        manifest_path = path / MANIFEST
        if not manifest_path.exists():
            notes = [f"nothing to resume in {path}: starting afresh"] if resume else []
            return cls(path, Manifest(key, command, _now())), notes
        found = read_manifest(manifest_path)
        if not resume:
            raise Failure(f"{path} holds {len(found.stages)} finished stages of a calibration started "
                          f"{found.started} ({found.command}): add --resume to continue it, or remove the "
                          "folder (or pass another --work) to start over", EXIT_BAD_INPUT)
        diffs = key.differences(found.key)
        if diffs:
            raise Failure(f"{path}: its stages were measured with another set-up, it cannot be resumed here: "
                          + "; ".join(diffs) + ". Remove the folder or pass another --work", EXIT_BAD_INPUT)
        kept = tuple(s for s in found.stages if all((path / f).exists() for f in s.files))
        notes = [f"resuming {path}: {len(kept)} finished stages kept"]
        notes += [f"stage {s.name}: a file is missing, it runs again" for s in found.stages if s not in kept]
        return cls(path, replace(found, stages=kept)), notes

    def done(self, name: str) -> StageDone | None:
        return next((s for s in self.manifest.stages if s.name == name), None)

    def record(self, name: str, files: list[Path], seconds: float) -> StageDone:
        """List a finished stage (its files already written) in the manifest."""
        rel = tuple(str(Path(f).relative_to(self.path)) for f in files)
        done = StageDone(name, rel, seconds, _now())
        stages = tuple(s for s in self.manifest.stages if s.name != name) + (done,)
        self.manifest = replace(self.manifest, stages=stages)
        write_json_atomic(self.path / MANIFEST, {"format": FORMAT, "kind": KIND,
                                                 **dataclasses.asdict(self.manifest)})
        return done

    def files(self, name: str) -> list[Path]:
        done = self.done(name)
        return [self.path / f for f in done.files] if done else []

    @property
    def seconds(self) -> dict[str, float]:
        """Seconds per finished stage, in the order they finished."""
        return {s.name: s.seconds for s in self.manifest.stages}


def read_manifest(path: Path) -> Manifest:
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise Failure(f"{path}: cannot read the calibration manifest: {e}; remove the folder to start over",
                      EXIT_BAD_INPUT) from None
    if not isinstance(doc, dict) or doc.get("kind") != KIND or doc.get("format") != FORMAT:
        raise Failure(f"{path}: not a calibration manifest of format {FORMAT} (kind {KIND!r})", EXIT_BAD_INPUT)
    return from_json({k: v for k, v in doc.items() if k != "format"}, Manifest, str(path))
