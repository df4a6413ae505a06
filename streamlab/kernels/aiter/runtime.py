"""Load aiter once and say what of it can be used: the guard behind `--backend aiter`.

`import aiter` raises on machines without ROCm, so aiter is imported only where torch is a HIP
build, and only after the installed sources passed the entry-point check. Every way loading can
fail ends in one `Failure` whose message names the kernel and the reason. A capability that
only newer aiter has (`EntryPoint.required` False) does not fail the load: it is recorded as
unavailable, and the nodes that need it fall back to Triton with that reason.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from streamlab.errors import Failure
from streamlab.kernels.aiter.api import (
    CONSTANTS,
    ENTRY_POINTS,
    MIN_VERSION,
    TESTED_WITH,
    EntryPoint,
)
from streamlab.kernels.aiter.signature import (
    constant_problem,
    installed_version,
    live_problem,
    package_root,
    source_problem,
    version_tuple,
)


class Unmapped(Exception):
    """This node cannot run on aiter here; the message says why (recorded on the node)."""


@dataclass(frozen=True)
class AiterRuntime:
    """What a loaded aiter offers: entry points by key, and why the others cannot be used.

    Tests build one with fake functions to exercise binding and fallbacks without aiter."""

    version: str
    fns: dict[str, Callable] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    constants: dict[str, object] = field(default_factory=dict)

    def fn(self, key: str) -> Callable:
        if key not in self.fns:
            raise Unmapped(self._why(key))
        return self.fns[key]

    def constant(self, key: str) -> object:
        if key not in self.constants:
            raise Unmapped(self._why(key))
        return self.constants[key]

    def _why(self, key: str) -> str:
        return f"aiter {self.version}: {self.unavailable.get(key, f'{key} is not loaded')}"


_LOADED: AiterRuntime | None = None


def require_aiter() -> AiterRuntime:
    """The loaded aiter, or a Failure (exit code 3) that says which kernel and why."""
    global _LOADED
    if _LOADED is None:
        _LOADED = load(importlib.import_module)
    return _LOADED


def load(import_module: Callable[[str], object]) -> AiterRuntime:
    if not torch.version.hip:
        raise Failure("backend aiter needs ROCm: this torch is a "
                      f"{'CUDA' if torch.version.cuda else 'CPU'} build ({torch.__version__}); "
                      "use --backend triton")
    root = package_root()
    if root is None:
        raise Failure("backend aiter: the aiter package is not installed "
                      "(pip install -e '.[rocm]' installs amd-aiter)")
    version = installed_version(root)
    if version_tuple(version) < MIN_VERSION:
        raise Failure(f"backend aiter: amd-aiter {version} is older than "
                      f"{'.'.join(map(str, MIN_VERSION))}; streamlab was checked against {TESTED_WITH}")
    hard: list[str] = []
    soft: dict[str, str] = {}

    def note(entry: EntryPoint, problem: str) -> None:
        line = f"{entry.qualname} ({entry.used_by}): {problem}"
        if entry.required:
            hard.append(line)
        else:
            soft[entry.key] = f"{entry.qualname}: {problem}"

    for entry in ENTRY_POINTS:
        problem = source_problem(entry, root)
        if problem:
            note(entry, f"{problem} (needs a newer aiter)" if not entry.required else problem)
    _fail_if(hard, version)
    try:
        import_module("aiter")
    except Exception as e:  # noqa: BLE001 - aiter raises plain Exceptions when ROCm pieces are missing
        raise Failure(f"backend aiter: import aiter {version} failed: {type(e).__name__}: {e}") from None
    fns: dict[str, Callable] = {}
    for entry in ENTRY_POINTS:
        if entry.key in soft:
            continue
        try:
            obj = _resolve(import_module(entry.module), entry.name)
        except Exception as e:  # noqa: BLE001 - a module may need a newer Triton, a gfx target...
            note(entry, f"cannot be imported: {type(e).__name__}: {e}")
            continue
        problem = live_problem(entry, obj)
        if problem:
            note(entry, problem)
        else:
            fns[entry.key] = obj
    _fail_if(hard, version)
    constants: dict[str, object] = {}
    for const in CONSTANTS:
        try:
            constants[const.key] = _resolve(import_module(const.module), const.path)
        except Exception as e:  # noqa: BLE001 - any failure to resolve is a missing constant
            soft[const.key] = (f"{const.module}.{const.path} is missing "
                               f"({constant_problem(const, root) or f'{type(e).__name__}: {e}'})")
    return AiterRuntime(version, fns, soft, constants)


def _resolve(obj: object, path: str) -> object:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _fail_if(hard: list[str], version: str) -> None:
    if hard:
        raise Failure(f"backend aiter: the installed amd-aiter {version} does not take the calls "
                      f"streamlab makes (checked against {TESTED_WITH}): " + "; ".join(hard)
                      + "; use --backend triton, or install a matching amd-aiter")
