"""Where a run's files go, and the rule that none replaces an earlier one.

A run writes OUT/STEM.json (its result) and OUT/STEM.trace.json.gz (its timeline), STEM naming
everything that makes one run differ from another: the scenario, model, batch, context, tensor
parallelism, page size and KV-cache dtype, then where it ran (the GPU and kernel backend that
measured it, or the profile that simulated it), and for a run over several ranks the ranks and
the all-reduce. Two runs that differ in any of these never share a file, and every part passes
through `io.name_part`, so no scenario, profile or device name can lead a file out of OUT. A
file that exists is refused before the run starts (`RunFiles.claim`) unless `--force`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from streamlab.io import claim, name_part
from streamlab.scenario import Scenario

__all__ = ["RunFiles", "measured_on", "over_ranks", "run_files", "run_stem", "simulated_on"]


@dataclass(frozen=True)
class RunFiles:
    result: Path
    trace: Path

    def claim(self, *, force: bool) -> RunFiles:
        """Both paths, refused when either exists (unless `force`) or cannot be a file."""
        claim(self.result, force=force)
        claim(self.trace, force=force, what="trace")
        return self


def simulated_on(profile: str) -> str:
    return f"sim-{profile}"


def measured_on(device: str, backend: str) -> str:
    """e.g. `NVIDIA_H100_80GB_HBM3-triton`."""
    return f"{device}-{backend}"


def over_ranks(world: int, allreduce: str) -> str:
    """What a run over several ranks adds: e.g. `w2-nccl`."""
    return f"w{world}-{allreduce}"


def run_stem(scen: Scenario, where: str) -> str:
    s = scen.shape
    parts = (scen.name, scen.model.name, f"b{s.batch}", f"ctx{s.context}", f"tp{s.tp}", f"page{s.page_size}",
             f"kv{s.kv_cache}", where)
    return "-".join(name_part(p) for p in parts)


def run_files(scen: Scenario, out: Path, where: str) -> RunFiles:
    stem = run_stem(scen, where)
    return RunFiles(result=Path(out) / f"{stem}.json", trace=Path(out) / f"{stem}.trace.json.gz")
