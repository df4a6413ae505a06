"""Where a device profile came from: the device, its software, the shape and batches it was
calibrated at, the command, and a hash of the kernel sources and configs it was measured with.

A profile describes kernels, not a GPU: once the kernels change (a tuning round), a profile
fitted before predicts the old ones (the h200 profile predicted serial at 263.6 us where the
tuned kernels measure 186.2). `kernel_hash()` hashes the installed streamlab/kernels/ tree the
same way the profile's hash was computed, so `sim` (and later `compare`, `check`) can say so.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

KERNEL_FILES = (".py", ".json", ".yaml", ".yml")  # sources and the configs beside them
MEASURED, PUBLISHED = "measured", "published"  # how the profile's node latencies were obtained


@dataclass(frozen=True)
class CalibrationShape:
    """The shape a profile was calibrated at, batch aside (the batches are listed apart)."""

    model: str
    context: int
    tp: int
    page_size: int
    kv_cache: str


@dataclass(frozen=True)
class PairsAdded:
    """Node pairs `streamlab calibrate --measure --for` measured and added to the profile: when,
    the command, the layouts whose overlaps they are, each pair as `bBATCH first|second`, and the
    seconds its stages took."""

    date: str
    command: str
    scenarios: tuple[str, ...]
    pairs: tuple[str, ...]
    seconds: float


@dataclass(frozen=True)
class Provenance:
    """basis: `measured` (streamlab's kernels timed on the device; the profile must then cover
    every node of a layer it simulates) or `published` (built from published figures of other
    kernels; nodes it lacks fall back to a roofline fit). kernel_hash: `kernel_hash()` of the
    kernels measured, None when they were not streamlab's. stale: why the profile no longer
    describes the kernels (empty while it does). settings: what the measurement ran with besides
    the versions (the kernel backend, the ranks, on ROCm the HIP queue variables). stages: seconds
    per stage of `calibrate --measure`. added: the pairs `--for` added since."""

    basis: str
    device: str
    shape: CalibrationShape
    batches: tuple[int, ...]
    date: str
    command: str
    driver: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    kernel_hash: str | None = None
    stale: str = ""
    settings: dict[str, str] = field(default_factory=dict)
    stages: dict[str, float] = field(default_factory=dict)
    added: tuple[PairsAdded, ...] = ()

    @property
    def calibrated(self) -> bool:
        return self.basis == MEASURED


def hash_files(files: Mapping[str, bytes]) -> str:
    """sha256 over the files' relative paths and contents, in path order (first 16 hex digits)."""
    h = hashlib.sha256()
    for path in sorted(files):
        h.update(path.encode() + b"\0" + files[path] + b"\0")
    return "sha256:" + h.hexdigest()[:16]


def kernel_files(root: Path | None = None) -> dict[str, bytes]:
    """The kernel sources and configs under `root` (default: the installed streamlab/kernels/),
    keyed by path relative to it."""
    base = Path(str(resources.files("streamlab.kernels"))) if root is None else root
    return {p.relative_to(base).as_posix(): p.read_bytes() for p in base.rglob("*")
            if p.is_file() and p.suffix in KERNEL_FILES and "__pycache__" not in p.parts}


def kernel_hash(root: Path | None = None) -> str:
    """The hash a profile records of the kernels it was measured with."""
    return hash_files(kernel_files(root))


def kernel_warning(prov: Provenance, name: str) -> str | None:
    """One line when the installed kernels are not the ones the profile was measured with."""
    if prov.stale:
        return f"profile {name} is stale: {prov.stale}"
    if prov.kernel_hash is None:
        return None
    now = kernel_hash()
    if now == prov.kernel_hash:
        return None
    return (f"profile {name} was measured with kernels {prov.kernel_hash} ({prov.date}); the installed "
            f"streamlab/kernels/ hash to {now}: its node latencies may no longer hold (recalibrate: "
            f"streamlab calibrate --measure --out {name}.yaml)")
