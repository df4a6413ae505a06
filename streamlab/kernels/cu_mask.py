"""ROCm CU masks: a HIP stream whose kernels run only on chosen compute units.

The ROCm counterpart of the SM budget the Triton kernels honour through their grid
(`max_programs`, kernels/triton/common.py), for kernels whose grid we do not choose (aiter,
hipBLASLt). `hipExtStreamCreateWithCUMask(hipStream_t*, uint32_t cuMaskSize, const uint32_t*
cuMask)` in libamdhip64 creates a stream from `cuMaskSize` uint32 words, bit i of the
bit-vector standing for CU i (bits past the device's CU count are ignored). ROCm's clr gives
such a stream a hardware queue of its own and sets the mask on that queue
(`hsa_amd_queue_cu_set_mask` in rocclr's Device::acquireQueue), so every dispatch on the
stream, whatever its grid, runs on those CUs; `hipStreamDestroy` releases it.

Which CUs. On multi-XCD GPUs (MI300X, MI355X: 8 XCDs x 32 CUs in one device) the kernel
driver deals the mask's bits out across the XCDs: bit i belongs to XCD i % 8 and, inside it,
to the (i // 8)-th CU in the order shader engine first, then shader array, then CU (amdkfd
kfd_mqd_manager.c, mqd_symmetrically_map_cu_mask, for GFX 9.4.3 and later). So the lowest n
bits (`cu_mask(count=n)`) are n CUs spread evenly over every XCD and shader engine: what a
bandwidth-bound decode kernel wants, since each XCD has its own L2 and its own path to
memory. `cus_on_xcds` names the CUs of chosen XCDs instead (their L2 to themselves).

Graphs. A CU mask belongs to the stream's hardware queue, not to the kernels. A captured HIP
graph keeps each kernel node's function, grid, block, shared memory and arguments
(hipKernelNodeParams), nothing of the stream it was captured on; hipGraphLaunch runs the
nodes on the launch stream and on streams the graph executable creates for itself with no
mask (clr hipamd/src/hip_graph_internal.cpp, GraphExec::CreateStreams: plain
`hip::Stream(device, Priority::Normal, hipStreamNonBlocking)`), assigning nodes to them by
its own rule. So a mask on a capture stream does not survive into the graph, and one on the
launch stream lands on whichever nodes the runtime puts there, never on a node of our
choosing. Budgets in the graphs streamlab measures therefore go through the Triton grid,
which works on every GPU; `cu_mask_stream` refuses to start while a capture is underway.

Where it ran: nowhere yet. Written against the HIP API and clr sources above; this project's
GPU is an NVIDIA H200, where `cu_mask_stream` ends in one Failure naming why. The CPU tests
cover the mask arithmetic and that guard; tests/test_sm_budget.py has a `gpu` test that runs
only on a ROCm GPU.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from streamlab.errors import EXIT_BAD_INPUT, EXIT_ENVIRONMENT, Failure

__all__ = ["CUMask", "cu_mask", "cu_mask_stream", "cus_on_xcds", "stream_cu_mask"]

_WORD = 32
_HIP_LIBRARY = "libamdhip64"


@dataclass(frozen=True)
class CUMask:
    """A set of logical CUs of a device with `total` CUs, as HIP takes it: uint32 words, bit i
    of the bit-vector (bit i % 32 of word i // 32) standing for CU i."""

    words: tuple[int, ...]
    total: int

    @property
    def cus(self) -> tuple[int, ...]:
        return tuple(i for i in range(self.total) if self.words[i // _WORD] >> (i % _WORD) & 1)

    def __str__(self) -> str:
        return f"{len(self.cus)} of {self.total} CUs (0x{''.join(f'{w:08x}' for w in reversed(self.words))})"


def cu_mask(*, total: int, count: int | None = None, cus: Iterable[int] | None = None) -> CUMask:
    """The mask of `count` CUs (the lowest bits: spread over every XCD, see the module
    docstring) or of the CUs `cus`, on a device of `total` CUs; exactly one of the two."""
    if (count is None) == (cus is None):
        raise Failure("a CU mask takes either a CU count or a list of CUs, not both or neither",
                      EXIT_BAD_INPUT)
    if type(total) is not int or total < 1:
        raise Failure(f"a device has a whole number of CUs >= 1, got {total!r}", EXIT_BAD_INPUT)
    if count is not None:
        if type(count) is not int or not 1 <= count <= total:
            raise Failure(f"CU count {count!r}: give 1 to {total} (the device's CUs)", EXIT_BAD_INPUT)
        chosen = range(count)
    else:
        chosen = list(cus)
        bad = [c for c in chosen if type(c) is not int or not 0 <= c < total]
        if bad or not chosen or len(set(chosen)) != len(chosen):
            raise Failure(f"CU list {chosen!r}: give distinct CUs 0 to {total - 1}, at least one",
                          EXIT_BAD_INPUT)
    words = [0] * -(-total // _WORD)
    for c in chosen:
        words[c // _WORD] |= 1 << (c % _WORD)
    return CUMask(tuple(words), total)


def cus_on_xcds(xcds: Iterable[int], *, total: int, xcd_count: int) -> list[int]:
    """The CUs (mask bits) of the given XCDs: bit i is on XCD i % xcd_count (module docstring)."""
    xcds = sorted(set(xcds))
    if type(xcd_count) is not int or xcd_count < 1 or total % xcd_count:
        raise Failure(f"{total} CUs do not split into {xcd_count!r} XCDs", EXIT_BAD_INPUT)
    if not xcds or not all(type(x) is int and 0 <= x < xcd_count for x in xcds):
        raise Failure(f"XCDs {xcds!r}: give XCDs 0 to {xcd_count - 1}", EXIT_BAD_INPUT)
    return [i for i in range(total) if i % xcd_count in xcds]


@contextlib.contextmanager
def cu_mask_stream(mask: CUMask, device: int | None = None) -> Iterator[torch.cuda.ExternalStream]:
    """A torch stream (ExternalStream over a HIP stream created with `mask`) on `device` (the
    current one by default), synchronised and destroyed on exit. Only on ROCm, and never while
    a graph is being captured (module docstring: the mask would not reach the graph)."""
    hip = _hip_runtime()
    index = torch.cuda.current_device() if device is None else device
    if mask.total != torch.cuda.get_device_properties(index).multi_processor_count:
        raise Failure(f"the CU mask is for a device of {mask.total} CUs; device {index} has "
                      f"{torch.cuda.get_device_properties(index).multi_processor_count}", EXIT_BAD_INPUT)
    words = (ctypes.c_uint32 * len(mask.words))(*mask.words)
    handle = ctypes.c_void_p()
    with torch.cuda.device(index):
        _check(hip, hip.hipExtStreamCreateWithCUMask(ctypes.byref(handle), len(mask.words), words),
               f"hipExtStreamCreateWithCUMask({mask})")
    try:
        yield torch.cuda.ExternalStream(handle.value, device=torch.device("cuda", index))
    finally:
        with torch.cuda.device(index):
            _check(hip, hip.hipStreamSynchronize(handle), "hipStreamSynchronize")
            _check(hip, hip.hipStreamDestroy(handle), "hipStreamDestroy")


def stream_cu_mask(stream: torch.cuda.Stream, total: int) -> CUMask:
    """The CUs `stream` runs on as HIP reports them (hipExtStreamGetCUMask): its own mask ANDed
    with a global one (HIP_CU_MASK), every CU for a stream without a mask."""
    hip = _hip_runtime()
    words = (ctypes.c_uint32 * -(-total // _WORD))()
    with torch.cuda.device(stream.device):
        _check(hip, hip.hipExtStreamGetCUMask(ctypes.c_void_p(stream.cuda_stream), len(words), words),
               "hipExtStreamGetCUMask")
    return CUMask(tuple(words), total)


def _hip_runtime() -> ctypes.CDLL:
    """The HIP runtime torch itself uses, once it is known that a mask can work here."""
    if torch.version.hip is None:
        built = f"CUDA {torch.version.cuda}" if torch.version.cuda else "the CPU only"
        raise Failure(f"CU masks are a ROCm feature (hipExtStreamCreateWithCUMask) and this torch "
                      f"is built for {built}; on NVIDIA give the node an SM budget (max_programs, "
                      "the Triton grid) instead", EXIT_ENVIRONMENT)
    if not torch.cuda.is_available():
        raise Failure("CU masks need an AMD GPU and torch sees none (check HIP_VISIBLE_DEVICES)",
                      EXIT_ENVIRONMENT)
    if torch.cuda.is_current_stream_capturing():
        raise Failure("a CU mask does not survive into a captured HIP graph (graphs replay kernels "
                      "on their own streams, without the capture stream's mask): budget the node "
                      "with max_programs (the Triton grid) inside graphs", EXIT_BAD_INPUT)
    return _load_hip()


@functools.cache
def _load_hip() -> ctypes.CDLL:
    """libamdhip64 as torch loaded it (one HIP runtime per process: a second copy would own
    other streams), else as the loader finds it."""
    maps = Path("/proc/self/maps")
    loaded = sorted({line.split()[-1] for line in maps.read_text().splitlines()
                     if _HIP_LIBRARY in line and line.split()[-1].startswith("/")}) if maps.exists() else []
    path = loaded[0] if loaded else ctypes.util.find_library("amdhip64")
    if path is None:
        raise Failure(f"{_HIP_LIBRARY}.so is not loaded and the loader cannot find it: install ROCm "
                      "(or a ROCm build of torch) and put its lib folder on LD_LIBRARY_PATH",
                      EXIT_ENVIRONMENT)
    hip = ctypes.CDLL(path)
    stream_p, words_p = ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32)
    for name, args in (("hipExtStreamCreateWithCUMask", (ctypes.POINTER(stream_p), ctypes.c_uint32, words_p)),
                       ("hipExtStreamGetCUMask", (stream_p, ctypes.c_uint32, words_p)),
                       ("hipStreamSynchronize", (stream_p,)), ("hipStreamDestroy", (stream_p,))):
        fn = getattr(hip, name)
        fn.argtypes, fn.restype = args, ctypes.c_int
    hip.hipGetErrorString.argtypes, hip.hipGetErrorString.restype = (ctypes.c_int,), ctypes.c_char_p
    return hip


def _check(hip: ctypes.CDLL, status: int, call: str) -> None:
    if status != 0:
        raise Failure(f"{call} failed: {hip.hipGetErrorString(status).decode()} (hipError_t {status})",
                      EXIT_ENVIRONMENT)
