"""The GPU a calibration measures on, as its profile records it: name, driver, software versions,
the kernel backend, and on ROCm the HIP queue settings a graph's streams land on.

`require_gpu` runs in the calling process and creates no GPU context (a context left in the
orchestrating process would stay resident beside every measured run, and an exclusive-process GPU
would refuse the runs); `device_facts` runs in a process of its own. The ROCm paths are written
from the ROCm documentation and have never run on AMD hardware.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch

from streamlab.errors import EXIT_BAD_INPUT, EXIT_ENVIRONMENT, Failure
from streamlab.exec.target import auto_backend, versions
from streamlab.schedule.graph import HIP_QUEUES

__all__ = ["BACKENDS", "HIP_SETTINGS", "DeviceFacts", "device_facts", "require_gpu"]

BACKENDS = ("auto", "triton", "aiter")  # what a calibration times: GPU kernels
HIP_SETTINGS = ("GPU_MAX_HW_QUEUES", "DEBUG_HIP_FORCE_GRAPH_QUEUES")  # hardware queues; a graph's queues


@dataclass(frozen=True)
class DeviceFacts:
    name: str
    driver: str
    versions: dict[str, str]
    backend: str  # the kernels every stage runs (auto resolved)
    settings: dict[str, str]  # backend, and on ROCm the HIP queue variables (unset: their default)

    @property
    def hip_queues(self) -> int:
        """The queues a HIP graph spreads its streams over (schedule.graph's rule)."""
        forced = self.settings.get("DEBUG_HIP_FORCE_GRAPH_QUEUES", "")
        return int(forced) if forced.isdigit() and int(forced) > 0 else HIP_QUEUES


def require_gpu() -> None:
    """One Failure, before anything is written, where torch sees no GPU."""
    if not torch.cuda.is_available():
        built = "HIP" if torch.version.hip else "CUDA" if torch.version.cuda else "CPU only"
        raise Failure(f"calibrate --measure times kernels on a GPU, and torch sees none (torch {torch.__version__}, "
                      f"built for {built}); on a machine without one, fit from result files measured on a GPU: "
                      "streamlab calibrate RESULT.json... --pairwise PAIRWISE.json --name NAME --out PROFILE.yaml",
                      EXIT_ENVIRONMENT)


def device_facts(backend: str | None) -> DeviceFacts:
    """This process's GPU 0 and the backend `backend` resolves to here (auto: aiter on ROCm where
    it loads, else triton)."""
    choice = backend or "auto"
    if choice not in BACKENDS:
        raise Failure(f"--backend {choice!r}: a calibration times GPU kernels; accepted: {', '.join(BACKENDS)}",
                      EXIT_BAD_INPUT)
    if choice == "auto":
        choice, _ = auto_backend()
    if choice == "aiter":
        from streamlab.kernels.aiter import require_aiter
        require_aiter()
    out = dict(versions())
    settings = {"backend": choice}
    if torch.version.hip:
        settings.update({k: os.environ.get(k, "") for k in HIP_SETTINGS})
        rocm = _read(Path(os.environ.get("ROCM_PATH", "/opt/rocm")) / ".info" / "version")
        if rocm:
            out["rocm"] = rocm
    if choice == "aiter":
        try:
            out["aiter"] = metadata.version("amd-aiter")
        except metadata.PackageNotFoundError:
            out["aiter"] = "built from source"
    return DeviceFacts(torch.cuda.get_device_name(0), _driver(), out, choice, settings)


def _driver() -> str:
    """The kernel driver's version: nvidia-smi on NVIDIA, the amdgpu module on ROCm; "" unknown."""
    if torch.version.hip:
        return _read(Path("/sys/module/amdgpu/version"))
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader", "-i", "0"],
                              check=False, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""
