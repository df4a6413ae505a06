"""Real all-reduce implementations, each capturable inside a CUDA/HIP graph.

Every implementation is a callable `impl(*, x, out)` (out = sum of x over the ranks) with
- `backend`: the name the run records for the all-reduce nodes (nccl, symm_mem, aiter, gloo, ...);
- `capture()`: a context manager to hold around every graph capture (aiter registers the graph's
  input buffers with its peers when it exits; the others need nothing or only a flush);
- `describe()`: what ran, for the result JSON.

`choose(impl, world, device)` picks one; every rank must call it at the same point (it runs
collectives to agree across ranks).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import time
import warnings
from typing import Callable, ContextManager

import torch
import torch.distributed as dist

from streamlab.errors import EXIT_BAD_INPUT, Failure
from streamlab.kernels.allreduce.emulated import EmulatedAllReduce
from streamlab.kernels.allreduce.progress import in_collective

__all__ = ["IMPLS", "AiterAllReduce", "SymmMemAllReduce", "TorchDistAllReduce", "bandwidths", "busbw_factor",
           "capture_hook", "choose", "describe", "self_test", "symm_mem_problem"]

IMPLS = ("auto", "emulated", "nccl", "symm_mem", "aiter")
DEFAULT_MAX_BYTES = 64 << 20


def busbw_factor(world: int) -> float:
    """nccl-tests: all-reduce bus bandwidth = algbw * 2 (n - 1) / n."""
    return 2 * (world - 1) / world if world > 1 else 0.0


def bandwidths(nbytes: int, us: float | None, world: int) -> tuple[float | None, float | None]:
    """(algbw, busbw) in GB/s for `nbytes` per rank reduced in `us` microseconds."""
    if not us or us <= 0:
        return None, None
    alg = nbytes / (us * 1e3)
    return alg, alg * busbw_factor(world)


class TorchDistAllReduce:
    """torch.distributed.all_reduce on a copy into `out` (NCCL on CUDA, RCCL on ROCm, gloo on
    the CPU). Captured into a graph, ProcessGroupNCCL's kernel runs on its own stream, joined to
    the capturing stream by events: one NCCL kernel (plus the copy) per call."""

    impl = "nccl"

    def __init__(self, group=None) -> None:
        self.group = group
        pg_backend = str(dist.get_backend(group))
        self.backend = "gloo" if pg_backend == "gloo" else "nccl"
        self.library = ("gloo" if pg_backend == "gloo" else
                        "rccl" if torch.version.hip else "nccl")
        self._eager_since_capture = False

    def __call__(self, *, x: torch.Tensor, out: torch.Tensor) -> None:
        with in_collective(f"{self.backend} all_reduce"):
            out.copy_(x)
            dist.all_reduce(out, group=self.group)
        if out.is_cuda and not torch.cuda.is_current_stream_capturing():
            self._eager_since_capture = True

    @contextlib.contextmanager
    def capture(self):
        # Eager collectives leave work for ProcessGroupNCCL's watchdog to poll; an event query
        # from that thread during a capture has broken captures (always on ROCm before the
        # 2026 fix; CUDA torch >= 2.7 queries in thread-local mode). Let it drain first.
        if self._eager_since_capture:
            torch.cuda.synchronize()
            time.sleep(0.3)
            self._eager_since_capture = False
        yield

    def describe(self) -> dict:
        out = {"impl": "nccl", "backend": self.backend, "library": self.library}
        if self.library != "gloo":
            with contextlib.suppress(Exception):
                v = torch.cuda.nccl.version()
                out["library_version"] = ".".join(map(str, v)) if isinstance(v, tuple) else str(v)
        return out


class SymmMemAllReduce:
    """torch symmetric-memory one-shot all-reduce (CUDA): each rank's input sits in a buffer every
    peer can read; one kernel per call barriers with the peers, reads all inputs over NVLink and
    writes the sum. The symmetric buffer is allocated and exchanged once (`rendezvous`); a call
    uses its first x.numel() elements. Where torch has `one_shot_all_reduce_copy_out` the copy
    into the buffer happens inside that kernel (one kernel per call); otherwise x is copied
    first and `one_shot_all_reduce_out` follows (two kernels)."""

    impl = "symm_mem"
    backend = "symm_mem"

    def __init__(self, group, device: torch.device, max_bytes: int,
                 dtype: torch.dtype = torch.bfloat16) -> None:
        problem = symm_mem_problem()
        if problem:
            raise Failure(f"collective.impl symm_mem: {problem}")
        import torch.distributed._symmetric_memory as symm_mem

        self.group_name = group.group_name if group is not None else dist.group.WORLD.group_name
        if hasattr(symm_mem, "enable_symm_mem_for_group"):  # needed before torch 2.9, deprecated after
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with contextlib.suppress(Exception):
                    symm_mem.enable_symm_mem_for_group(self.group_name)
        elt = torch.empty((), dtype=dtype).element_size()
        self.max_numel = max(max_bytes // elt, 1)
        self.buf = symm_mem.empty(self.max_numel, dtype=dtype, device=device)
        with in_collective("symm_mem rendezvous"):
            self.handle = symm_mem.rendezvous(self.buf, self.group_name)
        self.fused = hasattr(torch.ops.symm_mem, "one_shot_all_reduce_copy_out")

    def __call__(self, *, x: torch.Tensor, out: torch.Tensor) -> None:
        n = x.numel()
        if n > self.max_numel or x.dtype != self.buf.dtype:
            raise Failure(f"symm_mem all-reduce set up for at most {self.max_numel} {self.buf.dtype} "
                          f"elements, called with {n} {x.dtype}")
        view = self.buf[:n].view(x.shape)
        with in_collective("symm_mem one_shot_all_reduce"):
            if self.fused:
                torch.ops.symm_mem.one_shot_all_reduce_copy_out(view, x, "sum", self.group_name, out)
            else:
                view.copy_(x)
                torch.ops.symm_mem.one_shot_all_reduce_out(view, "sum", self.group_name, out)

    def capture(self):
        return contextlib.nullcontext()

    def describe(self) -> dict:
        return {"impl": "symm_mem", "backend": "symm_mem",
                "op": "one_shot_all_reduce_copy_out" if self.fused else "copy + one_shot_all_reduce_out",
                "buffer_bytes": self.buf.numel() * self.buf.element_size()}


def symm_mem_problem() -> str | None:
    """Why torch symmetric memory cannot run here, or None."""
    if not torch.cuda.is_available():
        return "needs a CUDA GPU"
    if torch.version.hip:
        return "this run is on ROCm; symm_mem is measured on CUDA (use aiter or nccl on ROCm)"
    try:
        importlib.import_module("torch.distributed._symmetric_memory")
    except ImportError as e:
        return f"torch {torch.__version__} has no symmetric memory ({e})"
    if not (hasattr(torch.ops.symm_mem, "one_shot_all_reduce_out")
            or hasattr(torch.ops.symm_mem, "one_shot_all_reduce_copy_out")):
        return f"torch {torch.__version__} has no torch.ops.symm_mem.one_shot_all_reduce_out"
    return None


class AiterAllReduce:
    """aiter's custom all-reduce (ROCm): IPC buffers exchanged once over a CPU (gloo) group.
    Inside `capture()` (which wraps aiter's own `ca.capture()`), a captured call reads x in place
    and the graph's buffers are registered with the peers when the capture ends; a call captured
    outside it copies x into aiter's pre-registered buffer (correct, one copy more)."""

    impl = "aiter"
    backend = "aiter"

    def __init__(self, cpu_group, device: torch.device, max_bytes: int) -> None:
        if not torch.version.hip:
            raise Failure("collective.impl aiter needs ROCm: this torch is built for "
                          + ("CUDA" if torch.version.cuda else "the CPU only")
                          + "; use nccl or symm_mem", EXIT_BAD_INPUT)
        try:
            from aiter.dist.device_communicators.custom_all_reduce import (
                CustomAllreduce,
            )
        except Exception as e:  # aiter raises plain Exceptions when ROCm pieces are missing
            raise Failure(f"collective.impl aiter: cannot import aiter's CustomAllreduce "
                          f"({type(e).__name__}: {e}); pip install amd-aiter on the ROCm machine") from None
        _check_signatures(CustomAllreduce)
        size = max(max_bytes, 8 << 20)
        size = (size + (2 << 20) - 1) // (2 << 20) * (2 << 20)
        with in_collective("aiter CustomAllreduce setup"):
            self.ca = CustomAllreduce(cpu_group, device, max_size=size)
        if getattr(self.ca, "disabled", False):
            raise Failure(f"aiter custom all-reduce is disabled for world size "
                          f"{dist.get_world_size(cpu_group)} (aiter supports 2, 4, 6, 8 ranks on one node)")
        params = inspect.signature(self.ca.all_reduce).parameters
        self._reg_kw = next((k for k in ("registered_input", "registered") if k in params), None)
        self._capturing = False
        self.max_bytes = size

    def __call__(self, *, x: torch.Tensor, out: torch.Tensor) -> None:
        if x.numel() * x.element_size() > self.max_bytes:
            raise Failure(f"aiter all-reduce set up for at most {self.max_bytes} bytes, called with "
                          f"{x.numel() * x.element_size()}")
        kw = {}
        if self._reg_kw:
            kw[self._reg_kw] = self._capturing and torch.cuda.is_current_stream_capturing()
        with in_collective("aiter all_reduce"):
            self.ca.all_reduce(x, out=out, **kw)

    @contextlib.contextmanager
    def capture(self):
        with self.ca.capture():
            self._capturing = True
            try:
                yield
            finally:
                self._capturing = False

    def describe(self) -> dict:
        import aiter
        return {"impl": "aiter", "backend": "aiter", "class": "CustomAllreduce",
                "aiter_version": getattr(aiter, "__version__", "?"), "max_bytes": self.max_bytes,
                "registered_in_graph": self._reg_kw is not None}


def _check_signatures(custom_allreduce: type) -> None:
    """The constructor and methods we call, against the aiter entry-point table."""
    from streamlab.kernels.aiter.api import BY_KEY
    from streamlab.kernels.aiter.signature import live_problem

    for key in ("CustomAllreduce", "CustomAllreduce.all_reduce", "CustomAllreduce.capture"):
        entry = BY_KEY[key]
        attr = entry.name.partition(".")[2]
        problem = live_problem(entry, getattr(custom_allreduce, attr) if attr else custom_allreduce)
        if problem:
            raise Failure(f"collective.impl aiter: {entry.qualname} {problem}")


class _Emulated:
    """EmulatedAllReduce with the hooks the others have."""

    impl = "emulated"
    backend = "emulated"

    def __init__(self, duration_us: float, device: torch.device) -> None:
        self.inner = EmulatedAllReduce(duration_us, device)
        self.duration_us = duration_us  # the run's budget counts it as the node's floor

    def __call__(self, *, x: torch.Tensor, out: torch.Tensor) -> None:
        self.inner(x=x, out=out)

    def capture(self):
        return contextlib.nullcontext()

    def describe(self) -> dict:
        return {"impl": "emulated", "backend": "emulated", "duration_us": self.inner.duration_us}


def _need_dist(world: int) -> None:
    if not dist.is_initialized():
        raise Failure(f"a real all-reduce over {world} rank{'s' if world > 1 else ''} needs "
                      "torch.distributed initialised (run through `streamlab run SCENARIO --world N`)")


def _agree(ok: str | None, group=None) -> list[str | None]:
    """Every rank's problem (None = fine), so that all ranks take the same branch."""
    if not dist.is_initialized() or dist.get_world_size(group) == 1:
        return [ok]
    got: list = [None] * dist.get_world_size(group)
    with in_collective("agree on the all-reduce"):
        dist.all_gather_object(got, ok, group=group)
    return got


def _first_problem(problems: list[str | None]) -> str | None:
    bad = [(r, p) for r, p in enumerate(problems) if p]
    if not bad:
        return None
    ranks = ", ".join(str(r) for r, _ in bad)
    return f"rank{'s' if len(bad) > 1 else ''} {ranks}: {bad[0][1]}"


def self_test(fn, device: torch.device, world: int, rank: int, numel: int = 4096) -> str | None:
    """One eager call: every element must equal 1 + 2 + ... + world."""
    x = torch.full((numel,), float(rank + 1), dtype=torch.bfloat16, device=device)
    out = torch.empty_like(x)
    fn(x=x, out=out)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    want = world * (world + 1) / 2
    bad = int((out.float() != want).sum())
    return None if bad == 0 else f"self-test: {bad}/{numel} elements differ from {want}"


def choose(impl: str, world: int, device: torch.device, *, max_bytes: int = DEFAULT_MAX_BYTES,
           emulated_us: float = 10.0, group=None, cpu_group=None):
    """The all-reduce for a run of `world` ranks on `device`, or None where the kernels' own
    (a copy on one CPU process) should run.

    auto: one rank -> emulated on a GPU (None on the CPU); several -> aiter on ROCm if it loads,
    symm_mem on CUDA if it sets up and passes a self-test on every rank, else nccl (gloo on the
    CPU). Explicit names fail with a clear message where they cannot run. Collective: call it on
    every rank at the same point. `group`: the process group to reduce over (default: world);
    `cpu_group`: a gloo group over the same ranks, for agreement and aiter's IPC exchange (the
    worker makes one; default: `group`). The object's `describe()` says what ran, and for auto why.
    """
    if impl not in IMPLS:
        raise Failure(f"unknown all-reduce {impl!r}; choose from {', '.join(IMPLS)}", EXIT_BAD_INPUT)
    gpu = device.type == "cuda"
    if impl == "emulated" or (impl == "auto" and world == 1):
        if not gpu:
            if impl == "emulated":
                raise Failure("the emulated all-reduce spins a GPU kernel; on the CPU use "
                              "collective.impl auto or nccl", EXIT_BAD_INPUT)
            return None
        return _Emulated(emulated_us, device)
    rank = dist.get_rank() if dist.is_initialized() else 0
    cpu_group = cpu_group if cpu_group is not None else group
    if impl == "nccl" or (impl == "auto" and not gpu):
        _need_dist(world)
        return TorchDistAllReduce(group)
    notes = []
    order = [impl] if impl != "auto" else (["aiter"] if torch.version.hip else ["symm_mem"])
    for name in order:
        problems = _agree(_local_problem(name), cpu_group)
        made, why = None, _first_problem(problems)
        if why is None:
            _need_dist(world)
            try:
                made = (SymmMemAllReduce(group, device, max_bytes) if name == "symm_mem"
                        else AiterAllReduce(cpu_group, device, max_bytes))
                err = None
            except Failure as e:
                err = str(e)
            except Exception as e:  # a torch / aiter error while setting up
                err = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            why = _first_problem(_agree(err, cpu_group))
        if why is None:
            try:
                err = self_test(made, device, world, rank)
            except Exception as e:
                err = f"self-test raised {type(e).__name__}: {str(e).strip()[:200]}"
            why = _first_problem(_agree(err, cpu_group))
        if why is None:
            if notes:
                made.auto_notes = notes
            return made
        if impl != "auto":
            raise Failure(f"collective.impl {name} cannot run here: {why}")
        notes.append(f"{name} not used: {why}")
    chosen = TorchDistAllReduce(group)
    chosen.auto_notes = notes
    return chosen


def _local_problem(name: str) -> str | None:
    if name == "symm_mem":
        return symm_mem_problem()
    if name == "aiter":
        if not torch.version.hip:
            return "needs ROCm (torch built for HIP)"
        if importlib.util.find_spec("aiter") is None:
            return "the aiter package is not installed (pip install amd-aiter)"
    return None


def describe(fn) -> dict:
    """What an all-reduce object (or a bound kernel backend) ran, for the result."""
    if fn is None:
        return {"impl": "reference", "backend": "reference",
                "note": "one process on the CPU: the all-reduce of one rank is a copy"}
    out = fn.describe() if hasattr(fn, "describe") else {"backend": getattr(fn, "backend", "override")}
    notes = getattr(fn, "auto_notes", None)
    if notes:
        out["auto"] = notes
    return out


def capture_hook(bound: dict) -> Callable[[], ContextManager]:
    """What to hold around every graph capture of a layer bound with `bound` (node -> Bound):
    each distinct collective implementation's `capture()` (aiter registers the graph's buffers
    when it exits; NCCL drains its watchdog's queue first), else nothing.

        around = capture_hook(bound)
        with around():
            with torch.cuda.graph(graph):
                ...
    """
    fns = {id(b.fn): b.fn for b in bound.values() if b.node.is_collective}
    hooks = [f.capture for f in fns.values() if callable(getattr(f, "capture", None))]

    @contextlib.contextmanager
    def around():
        with contextlib.ExitStack() as stack:
            for h in hooks:
                stack.enter_context(h())
            yield

    return around
