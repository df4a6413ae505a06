"""Where a run runs: the device (a GPU when there is one), the kernel backend, the one-process
all-reduce, and the versions a result records."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from streamlab.errors import EXIT_BAD_INPUT, Failure
from streamlab.scenario import Scenario

__all__ = ["Target", "auto_backend", "collective_overrides", "device_name", "pick_target", "versions"]


@dataclass(frozen=True)
class Target:
    device: torch.device
    backend: str
    note: str = ""  # why `--backend auto` chose what it chose, where that is news

    @property
    def gpu(self) -> bool:
        return self.device.type == "cuda"


def pick_target(scen: Scenario, device: str, backend: str | None) -> Target:
    """`--device` (auto, cpu, cuda) and `--backend` (default: the scenario's) resolved for this
    machine; a choice that cannot run here is one Failure saying what to change."""
    if device not in ("auto", "cpu", "cuda"):
        raise Failure(f"--device must be auto, cpu or cuda, got {device!r}", EXIT_BAD_INPUT)
    has_gpu = torch.cuda.is_available()
    if device == "cuda" and not has_gpu:
        raise Failure("--device cuda: no CUDA/HIP GPU is visible to torch "
                      f"(torch {torch.__version__}, built for {'HIP' if torch.version.hip else 'CUDA' if torch.version.cuda else 'CPU only'})")
    dev = torch.device("cuda" if (device == "cuda" or (device == "auto" and has_gpu)) else "cpu")
    choice, note = backend or scen.backend, ""
    if choice == "auto":
        choice, note = auto_backend() if dev.type == "cuda" else ("reference", "")
    if choice == "aiter":
        from streamlab.kernels.aiter import require_aiter
        require_aiter()
    if choice != "reference" and dev.type != "cuda":
        raise Failure(f"backend {choice!r} needs a GPU; on the CPU use --backend reference")
    return Target(dev, choice, note)


def auto_backend() -> tuple[str, str]:
    """aiter on ROCm where it loads, else the portable Triton kernels; with the reason aiter
    was passed over on ROCm."""
    if torch.version.hip:
        from streamlab.kernels.aiter import require_aiter
        try:
            require_aiter()
            return "aiter", ""
        except Failure as e:
            return "triton", f"backend auto: triton, aiter not used ({e})"
    return "triton", ""


def collective_overrides(scen: Scenario, target: Target) -> dict:
    """The all-reduce implementation for a one-process run."""
    if not target.gpu:
        return {}
    from streamlab.kernels.allreduce.emulated import EmulatedAllReduce
    if scen.collective.impl not in ("auto", "emulated"):
        raise Failure(f"collective.impl {scen.collective.impl!r} needs a multi-process run "
                      f"(streamlab run {scen.path} --world N); one GPU runs the emulated "
                      f"all-reduce (collective.impl: emulated)")
    return {"allreduce": EmulatedAllReduce(scen.collective.emulated_us, target.device)}


def device_name(device: torch.device) -> str:
    """The GPU's name, or "cpu"."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


def versions() -> dict[str, str]:
    """Python, torch, CUDA or HIP, and Triton versions of this process, as plain strings (torch's
    is a TorchVersion, which YAML's safe dumper refuses)."""
    import platform
    out = {"python": platform.python_version(), "torch": str(torch.__version__)}
    if torch.version.cuda:
        out["cuda"] = torch.version.cuda
    if torch.version.hip:
        out["hip"] = torch.version.hip
    try:
        import triton
        out["triton"] = str(triton.__version__)
    except ImportError:
        pass
    return out
