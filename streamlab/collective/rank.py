"""This rank of a multi-process run: its GPU, its process groups, and the control-plane
collectives every rank takes part in (gathering figures), each bracketed for the liveness
monitor. Imports torch only when called: the worker starts its monitor first."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

from streamlab.kernels.allreduce.progress import in_collective

__all__ = ["COLLECTIVE_GRACE", "Ctx", "exit_now", "gather", "init", "teardown"]

COLLECTIVE_GRACE = 30.0  # extra patience for a rank blocked in a collective: it waits for the stuck one


class Ctx:
    """This rank: where it runs and its process groups."""

    def __init__(self, rank: int, world: int, local_rank: int, device, group, cpu_group,
                 run_dir: Path | None) -> None:
        self.rank, self.world, self.local_rank = rank, world, local_rank
        self.device, self.group, self.cpu_group = device, group, cpu_group
        self.run_dir = run_dir

    @property
    def gpu(self) -> bool:
        return self.device.type == "cuda"


def init(device_choice: str, rank: int, world: int, local_rank: int, run_dir: Path | None,
         rank_timeout: float) -> Ctx:
    """Take GPU LOCAL_RANK (or the CPU), join the process group (NCCL on GPUs, gloo on the CPU)
    and a gloo group for results and agreement."""
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    from streamlab.errors import Failure

    if device_choice == "cuda" and not torch.cuda.is_available():
        raise Failure(f"--device cuda: no CUDA/HIP GPU is visible to torch {torch.__version__}")
    gpu = device_choice != "cpu" and torch.cuda.is_available()
    if gpu:
        n = torch.cuda.device_count()
        if local_rank >= n:
            raise Failure(f"LOCAL_RANK {local_rank} but only {n} GPU(s) are visible on this node: "
                          f"start at most {n} ranks per node")
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if "MASTER_ADDR" not in os.environ and world == 1:  # one rank without a launcher
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
    timeout = timedelta(seconds=rank_timeout + 2 * COLLECTIVE_GRACE)
    with in_collective("init_process_group"):
        kw = {"device_id": device} if gpu else {}
        try:
            dist.init_process_group("nccl" if gpu else "gloo", timeout=timeout, **kw)
        except TypeError:  # torch without device_id
            dist.init_process_group("nccl" if gpu else "gloo", timeout=timeout)
        cpu_group = dist.new_group(backend="gloo", timeout=timeout) if gpu else dist.group.WORLD
    return Ctx(rank, world, local_rank, device, dist.group.WORLD, cpu_group, run_dir)


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gather(ctx: Ctx, obj) -> list:
    """Every rank's `obj`, in rank order, on every rank."""
    import torch.distributed as dist

    if ctx.world == 1:
        return [obj]
    got: list = [None] * ctx.world
    with in_collective("gather results"):
        dist.all_gather_object(got, obj, group=ctx.cpu_group)
    return got


def teardown(seconds: float) -> None:
    """Destroy the process group, giving up after `seconds`."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return
    t = threading.Thread(target=lambda: dist.destroy_process_group(), daemon=True)
    t.start()
    t.join(seconds)


def exit_now(code: int) -> None:
    """Leave without running interpreter teardown: process-group and symmetric-memory teardown
    has hung at exit on the lent machines (device-facts.md)."""
    for f in (sys.stdout, sys.stderr):
        try:
            f.flush()
        except Exception:
            pass
    os._exit(code)
