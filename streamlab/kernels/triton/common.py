"""What every Triton module shares: the interpreter flag, dot operands and exact casts.

The CPU interpreter (TRITON_INTERPRET=1) computes tl.dot on bf16/fp8 operands wrongly (numpy has
no such types), rounds fp32 -> bf16 toward zero and drops the carry into the exponent when it
rounds fp32 -> fp8 (7.9 -> 4.0). Under it, `dot_operand` hands tl.dot fp32 operands (which hold
bf16 and fp8 values exactly) and `exact_cast` rounds to nearest even by hand before converting
(the interpreter's own conversion is exact on values already on the grid). On a GPU both are
the native conversions. Kernels take `INTERPRET` as a constexpr argument and pass it on.

Also shared by the GEMM and MoE kernels: decode tiles computed either way round (`tile_dot`,
`by_row`, `by_col`), split reductions finished by the last program to arrive instead of a second
launch (`last_to_arrive`, `sum_partials`) and persistent workspaces (`workspace`); by all that
size grids to the device, its SM (CU) count (`sm_count`, which `planning_for` sets off a GPU);
and by every kernel, SM (CU) budgets (`plan_grid`, `each_work_item`; the per-kernel table is in
the package docstring).

An SM budget (`max_programs`) lets a node occupy at most that many SMs (CUs) at once, so that a
kernel on another stream keeps the rest (SGLang gives DeepGEMM about half the SMs for wq_b in its
dual-stream indexer). A kernel cuts its work exactly as without a budget, into the work items of
its usual grid; under a budget smaller than that grid it launches `max_programs` programs, and
program p does work items p, p + max_programs, ... in turn (a persistent-style loop), each
computing exactly what the program of that id computes unbudgeted. Split reductions keep their
fixed order (the last work item of a tile to arrive sums the partials, whichever program runs
it), so outputs are bitwise the same under any budget. Nothing waits on another program, so any
budget >= 1 makes progress. A budget counts programs: at most that many SMs are busy, fewer if
the hardware places two programs on one SM. Without a budget, or one at least the grid, the
launch is the usual one with the usual parameters, and compiles to the same instructions.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from streamlab.errors import EXIT_BAD_INPUT, Failure
from streamlab.kernels.quant import FP8_MAX

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_planned_sms: int | None = None  # set by `planning_for`
_FP8_MAX = tl.constexpr(FP8_MAX)


@triton.jit
def dot_operand(x, dtype: tl.constexpr, INTERPRET: tl.constexpr):
    """`x` as a tl.dot operand of `dtype` on the GPU, fp32 in the interpreter."""
    if INTERPRET:
        return x.to(tl.float32)
    return x.to(dtype)


@triton.jit
def _round_e4m3(x):
    """fp32 x rounded to the nearest e4m3 value (ties to even), still fp32."""
    bits = x.to(tl.uint32, bitcast=True)
    sign = bits & 0x80000000
    mag = bits ^ sign
    normal = (mag + 0x7FFFF + ((mag >> 20) & 1)) & 0x7FF00000  # keep 3 mantissa bits
    # below 2^-6 e4m3 is subnormal with a fixed step of 2^-9: the ulp of 1.5 * 2^14 in fp32
    sub = ((tl.abs(x) + 24576.0) - 24576.0).to(tl.uint32, bitcast=True)
    return (tl.where(mag < 0x3C800000, sub, normal) | sign).to(tl.float32, bitcast=True)


@triton.jit
def _round_bf16(x):
    """fp32 x rounded to the nearest bf16 value (ties to even), still fp32."""
    bits = x.to(tl.uint32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def exact_cast(x, dtype: tl.constexpr, INTERPRET: tl.constexpr):
    """fp32 -> dtype as torch casts: round to nearest even, saturating for e4m3fn (`to_fp8`)."""
    if dtype == tl.float8e4nv:
        x = tl.clamp(x, -_FP8_MAX, _FP8_MAX)
        if INTERPRET:
            x = _round_e4m3(x)
    elif dtype == tl.bfloat16:
        if INTERPRET:
            x = _round_bf16(x)
    return x.to(dtype)


# -- decode GEMM tiles ----------------------------------------------------------------------
# At decode the activation has a handful of rows and the weight thousands: with SWAP the
# product is computed transposed, w @ a^T, so that weight rows fill the MMA's M side (Hopper's
# wgmma needs 64 or more there) and the activation rows its N side. These helpers put vectors
# and offsets in the product's orientation either way.

@triton.jit
def tile_dot(a, w, SWAP: tl.constexpr, INTERPRET: tl.constexpr):
    """a [BM, K] . w [BN, K] in a's type (w converted: an exact fp8 -> bf16 upcast for bf16 a)
    with fp32 accumulation: [BM, BN], or [BN, BM] with SWAP."""
    w = dot_operand(w, a.dtype, INTERPRET)
    a = dot_operand(a, a.dtype, INTERPRET)
    if SWAP:  # one return: the two orientations have different shapes
        prod = tl.dot(w, tl.trans(a))
    else:
        prod = tl.dot(a, tl.trans(w))
    return prod


@triton.jit
def by_row(v, SWAP: tl.constexpr):
    """A per-row (activation row) vector broadcast over the product."""
    if SWAP:
        v2 = v[None, :]
    else:
        v2 = v[:, None]
    return v2


@triton.jit
def by_col(v, SWAP: tl.constexpr):
    """A per-column (weight row) vector broadcast over the product."""
    if SWAP:
        v2 = v[:, None]
    else:
        v2 = v[None, :]
    return v2


# -- split reductions without a second launch ------------------------------------------------
# A kernel that splits a reduction over several programs writes each program's fp32 partial to a
# workspace; the last program of a group to arrive at the group's counter (an int32 in a zeroed
# persistent buffer) sums the partials in a fixed order and writes the result, so one launch
# gives a deterministic result. That program also puts the counter back to 0, so the next launch
# (a graph replay, say) finds it zeroed again.

@triton.jit
def last_to_arrive(counter, arrivals):
    """True in the program that arrives last of `arrivals` at `counter` (then reset to 0).

    The barrier orders every thread's earlier stores before the arrival, whose acq_rel atomic
    publishes them (release) and, in the last program, makes the others' visible (acquire);
    partials are then read back with cache_modifier=".cg" (L2, not the SM's own L1)."""
    tl.debug_barrier()
    done = tl.atomic_add(counter, 1, sem="acq_rel", scope="gpu")
    last = done == arrivals - 1
    tl.atomic_xchg(counter, 0, mask=last, sem="relaxed", scope="gpu")
    tl.debug_barrier()
    return last


@triton.jit
def sum_partials(p_tile, p_step, splits, mask, SHAPE0: tl.constexpr, SHAPE1: tl.constexpr,
                 UNROLL: tl.constexpr):
    """Sum over s of p_tile[s * p_step] ([SHAPE0, SHAPE1] tiles) in split order; UNROLL
    independent loads per step, so that their L2 round trips overlap (a plain loop waits for
    each in turn)."""
    total = tl.zeros((SHAPE0, SHAPE1), dtype=tl.float32)
    for s0 in range(0, splits, UNROLL):
        for u in tl.static_range(UNROLL):
            s = tl.minimum(s0 + u, splits - 1)  # past the end: a repeated load, added as 0
            p = tl.load(p_tile + s * p_step, mask=mask, other=0.0, cache_modifier=".cg")
            total += tl.where(s0 + u < splits, p, 0.0)
    return total


def sum_unroll(splits: int, tile_elems: int, warps: int) -> int:
    """Partials `sum_partials` loads at once: up to 8, about 64 registers a thread at most."""
    fit = max(1, 2048 * warps // tile_elems)
    return min(8, triton.next_power_of_2(splits), 1 << (fit.bit_length() - 1))


def sm_count(device: torch.device, off_gpu: int) -> int:
    """The SMs (CUs) a launch plans its grid for: the GPU's own; off a GPU, those of the device
    named by `planning_for`, else `off_gpu` (a small pretend GPU, so that the interpreter runs
    the split paths)."""
    if device.type == "cuda":
        return _gpu_sms(device)
    return _planned_sms or off_gpu


@functools.cache
def _gpu_sms(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


@contextlib.contextmanager
def planning_for(sms: int):
    """Plan grids off a GPU as for a device of `sms` SMs (CUs): what `targets` records launches under."""
    global _planned_sms
    before, _planned_sms = _planned_sms, sms
    try:
        yield
    finally:
        _planned_sms = before


_WORKSPACES: dict = {}


def workspace(key: tuple, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device,
              zeroed: bool = False) -> torch.Tensor:
    """A buffer that lives as long as the process, one per `key` (which names its role) and
    shape: allocated on the first (eager) call and reused by every later call and by graph
    replays, so capture allocates nothing.
    Callers key it by their output tensor: nodes that may run at the same time on different
    streams write different outputs, so they never share a workspace or a counter."""
    full = (device, dtype, tuple(shape), *key)
    buf = _WORKSPACES.get(full)
    if buf is None:
        make = torch.zeros if zeroed else torch.empty
        buf = _WORKSPACES[full] = make(shape, dtype=dtype, device=device)
    return buf


# -- SM (CU) budgets ------------------------------------------------------------------------

class GridPlan(NamedTuple):
    """How one kernel launches: `grid` is what the hardware gets, `work` the grid its work is cut
    into (padded to three axes), `persistent` whether each program loops over work items."""

    grid: tuple[int, ...]
    work: tuple[int, int, int]
    persistent: bool

    @property
    def args(self) -> dict:
        """The kernel arguments `each_work_item` reads. Unbudgeted the work sizes are None, which
        Triton takes as constants: the kernel then has exactly its usual parameters."""
        work = self.work if self.persistent else (None, None, None)
        return {"work0": work[0], "work1": work[1], "work2": work[2], "PERSISTENT": self.persistent}


def check_budget(max_programs: int | None) -> None:
    """A budget is None (the whole GPU) or a whole number of programs >= 1."""
    if max_programs is not None and (type(max_programs) is not int or max_programs < 1):
        raise Failure(f"max_programs (an SM / CU budget) must be a whole number >= 1 or unset, "
                      f"got {max_programs!r}", EXIT_BAD_INPUT)


def plan_grid(grid: tuple[int, ...], max_programs: int | None) -> GridPlan:
    """The launch of a kernel whose work is `grid` (one program per work item) under a budget of
    `max_programs` programs: the grid itself when it fits (or there is no budget), else
    `max_programs` programs that loop over the work items."""
    check_budget(max_programs)
    work = (tuple(grid) + (1, 1))[:3]
    if len(grid) > 3 or min(work) < 1:
        raise ValueError(f"a grid has one to three axes of at least one program, got {grid}")
    if max_programs is None or math.prod(work) <= max_programs:
        return GridPlan(tuple(grid), work, False)
    return GridPlan((max_programs,), work, True)


@triton.jit
def each_work_item(body, args, work0, work1, work2, PERSISTENT: tl.constexpr):
    """body(pid, grid, *args) for this program's work: pid is a program id (axes 0, 1, 2) of the
    work grid, grid that grid's size for `grid_size`. Unbudgeted, the program's own id; with
    PERSISTENT (`plan_grid`), each work item whose flat index (axis 0 fastest) is this program's
    id modulo the programs launched, in increasing order."""
    if PERSISTENT:
        for item in range(tl.program_id(0), work0 * work1 * work2, tl.num_programs(0)):
            body((item % work0, (item // work0) % work1, item // (work0 * work1)),
                 (work0, work1, work2), *args)
    else:
        body((tl.program_id(0), tl.program_id(1), tl.program_id(2)), (None, None, None), *args)


@triton.jit
def grid_size(grid, axis: tl.constexpr):
    """Work items along `axis` of the work grid: unbudgeted (grid of Nones) the launch's own
    size, read where it is used, as the kernels did before budgets (read at the start and kept
    live, AMD's compiler spilled more registers in the split GEMMs)."""
    if grid[axis] is None:
        n = tl.num_programs(axis)
    else:
        n = grid[axis]
    return n
