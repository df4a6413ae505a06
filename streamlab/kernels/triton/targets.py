"""Compile a layer's Triton kernels for a GPU this machine does not have.

Every node's Triton implementation runs once at the layer's real shapes on meta tensors (no
memory, no data) with Triton's launcher replaced by a recorder and the grids planned for the
target's SM (CU) count, so the launches are those the layer would make there; nodes given an
SM / CU budget launch as they would under it (the persistent variant of their kernels, grids of
at most that many programs). Each distinct launch (kernel, argument types, constexprs, warps,
stages) is then compiled by Triton's own compiler for the target's architecture. A pass shows
that the kernels compile for that architecture at those configs. Nothing runs, so it says
nothing about results or speed.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import torch
import triton
import triton.backends
from triton.backends.compiler import GPUTarget
from triton.runtime.jit import JITFunction, mangle_type

from streamlab.errors import EXIT_BAD_INPUT, EXIT_ENVIRONMENT, Failure
from streamlab.kernels import Bound, bind_layer
from streamlab.kernels.tensors import TORCH_DTYPES, with_views
from streamlab.kernels.triton.common import check_budget, planning_for
from streamlab.layer import Layer
from streamlab.models.hardware import HARDWARE


@dataclass(frozen=True)
class Target:
    """A GPU to compile for: its hardware entry (for the SM / CU count) and Triton's name for it."""

    hardware: str
    backend: str  # cuda | hip
    arch: int | str  # compute capability (cuda) or gfx name (hip)
    warp_size: int

    @property
    def units(self) -> int:
        return HARDWARE[self.hardware].units

    @property
    def gpu(self) -> GPUTarget:
        return GPUTarget(self.backend, self.arch, self.warp_size)

    def __str__(self) -> str:
        arch = f"sm_{self.arch}" if self.backend == "cuda" else self.arch
        return f"{self.hardware} ({arch}, {self.units} {'SMs' if self.backend == 'cuda' else 'CUs'})"


TARGETS = {t.hardware: t for t in (Target("h100", "cuda", 90, 32), Target("h200", "cuda", 90, 32),
                                   Target("mi355x", "hip", "gfx950", 64))}


@dataclass
class KernelLaunch:
    """One distinct launch: what Triton compiles. `nodes` and `batches` say where it came from,
    `programs` the most programs one launch of it had, per node."""

    kernel: JITFunction
    signature: dict[str, str]
    constexprs: dict[str, object]
    options: dict[str, object]
    nodes: set[str] = field(default_factory=set)
    batches: set[int] = field(default_factory=set)
    programs: dict[str, int] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.kernel.fn.__name__

    @property
    def key(self) -> tuple:
        """Equal for two launches that compile to the same binary."""
        return (self.kernel.fn.__module__, self.name, tuple(self.signature.items()),
                repr(sorted(self.constexprs.items())), repr(sorted(self.options.items())))


@dataclass(frozen=True)
class Compiled:
    launch: KernelLaunch
    seconds: float
    error: str | None  # first line of the compiler's message; None when it compiled


def target(name: str) -> Target:
    """The target called `name`, once this Triton is known to have its compiler backend."""
    if name not in TARGETS:
        raise Failure(f"unknown compile target {name!r}; known: {', '.join(TARGETS)}", EXIT_BAD_INPUT)
    tgt = TARGETS[name]
    backend = {"cuda": "nvidia", "hip": "amd"}[tgt.backend]
    if backend not in triton.backends.backends:
        raise Failure(f"this Triton ({triton.__version__}) has no {backend} backend to compile for {tgt}",
                      EXIT_ENVIRONMENT)
    return tgt


def record_launches(layers: Iterable[Layer], tgt: Target,
                    budgets: Mapping[str, int] | None = None) -> tuple[list[KernelLaunch], dict[str, str]]:
    """The distinct launches of every node of `layers` as planned for `tgt`, and the nodes whose
    implementation failed before launching (node -> message). `budgets` (node -> max_programs)
    plans those nodes under their SM / CU budget."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise Failure("compiling for a target needs Triton's compiler, not its interpreter: "
                      "unset TRITON_INTERPRET", EXIT_BAD_INPUT)
    layers, budgets = list(layers), dict(budgets or {})
    for max_programs in budgets.values():
        check_budget(max_programs)
    unknown = sorted(set(budgets) - {n.name for layer in layers for n in layer.nodes})
    if unknown:
        raise Failure(f"SM budgets name nodes the layer does not have: {', '.join(unknown)}",
                      EXIT_BAD_INPUT)
    launches: dict[tuple, KernelLaunch] = {}
    failed: dict[str, str] = {}
    where: dict[str, object] = {}

    def record(kernel: JITFunction, *args, grid, warmup, **kwargs):
        launch = launch_of(kernel, args, kwargs)
        launch = launches.setdefault(launch.key, launch)
        node = where["node"]
        launch.nodes.add(node)
        launch.batches.add(where["batch"])
        launch.programs[node] = max(launch.programs.get(node, 0), math.prod(grid))

    with _launcher(record), planning_for(tgt.units):
        for layer in layers:
            for name, bound, tensors in _on_meta(layer):
                where.update(node=name, batch=layer.dims.tokens)
                if name in budgets:
                    _check_triton(bound)
                try:
                    bound(tensors, budgets.get(name))
                except Exception as e:  # noqa: BLE001 - reported per node, the others still compile
                    failed.setdefault(name, f"{type(e).__name__}: {e}".splitlines()[0])
    return list(launches.values()), failed


def _on_meta(layer: Layer) -> Iterator[tuple[str, Bound, dict[str, torch.Tensor]]]:
    """Every node of `layer` bound to Triton, with the layer's tensors on the meta device."""
    tensors = with_views(layer, {n: torch.empty(s.shape, dtype=TORCH_DTYPES[s.dtype], device="meta")
                                 for n, s in layer.tensors.items() if s.view is None})
    for name, bound in bind_layer(layer, "triton").items():
        yield name, bound, tensors


def _check_triton(bound: Bound) -> None:
    if bound.backend != "triton":
        raise Failure(f"node {bound.node.name} runs on {bound.backend}, which takes no SM budget "
                      "(budgets apply to Triton kernels)", EXIT_BAD_INPUT)


def work_grids(layer: Layer, units: int) -> dict[str, tuple[int, ...]]:
    """Programs of each launch of every Triton node of `layer`, unbudgeted, as planned for a
    device of `units` SMs (CUs): the work items an SM budget spreads over (what the simulator's
    budget model reads). The nodes' host code runs on meta tensors with Triton's launcher, JIT
    or interpreter alike, replaced by a recorder: nothing compiles or runs, about 0.1 s a layer.
    A node without a Triton launch (the all-reduce) has none."""
    grids: dict[str, list[int]] = {}
    where = {"node": ""}

    def record(kernel, *args, grid, warmup, **kwargs):
        grids.setdefault(where["node"], []).append(math.prod(grid))

    with _launcher(record, interpreter=True), planning_for(units):
        for name, bound, tensors in _on_meta(layer):
            if bound.backend == "triton":
                where["node"] = name
                bound(tensors)
    return {name: tuple(g) for name, g in grids.items()}


def launch_of(kernel: JITFunction, args: tuple, kwargs: dict) -> KernelLaunch:
    """What Triton would compile for `kernel[grid](*args, **kwargs)`."""
    params = {p.name for p in kernel.params}
    bound = kernel.signature.bind(*args, **{k: v for k, v in kwargs.items() if k in params})
    bound.apply_defaults()
    signature, constexprs = {}, {}
    for p in kernel.params:
        value = bound.arguments[p.name]
        signature[p.name] = "constexpr" if p.is_constexpr else mangle_type(value)
        if signature[p.name] == "constexpr":
            constexprs[p.name] = value
    return KernelLaunch(kernel, signature, constexprs, {k: v for k, v in kwargs.items() if k not in params})


@contextlib.contextmanager
def _launcher(record, interpreter: bool = False):
    """Replace every Triton launch with `record(kernel, *args, grid=..., warmup=..., **kwargs)`;
    with `interpreter`, the interpreter's launches too (TRITON_INTERPRET=1)."""
    classes = [JITFunction]
    if interpreter:
        from triton.runtime.interpreter import InterpretedFunction
        classes.append(InterpretedFunction)
    runs = [cls.run for cls in classes]
    for cls in classes:
        cls.run = record
    try:
        yield
    finally:
        for cls, run in zip(classes, runs):
            cls.run = run


def compile_launch(launch: KernelLaunch, tgt: Target) -> Compiled:
    start = time.perf_counter()
    try:
        src = triton.compiler.ASTSource(fn=launch.kernel, signature=launch.signature,
                                        constexprs=launch.constexprs)
        triton.compile(src, target=tgt.gpu, options=launch.options)
        error = None
    except Exception as e:  # noqa: BLE001 - the compiler's own message is the result
        error = (f"{type(e).__name__}: {e}".strip().splitlines() or [type(e).__name__])[0]
    return Compiled(launch, time.perf_counter() - start, error)
