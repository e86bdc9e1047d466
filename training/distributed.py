"""Data-parallel training across processes (DDP), set up from torchrun's environment.

    torchrun --nproc_per_node=8 train.py --data slakh/

Rank 0 alone validates, logs and saves; every rank takes its slice of each global batch (train.py, training/pool.py),
so N processes train what one process accumulating N micro-batches would.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

from cli.common import pick_device


def stop_all(local: bool, device) -> bool:
    """True on every process when any process wants to stop (keeps DDP ranks in step)."""
    if not dist.is_initialized():
        return bool(local)
    flag = torch.tensor([float(local)], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def mean_over_processes(value: float, device) -> float:
    """The mean of a number over all processes (itself without DDP)."""
    if not dist.is_initialized():
        return value
    t = torch.tensor([value], device=device)
    dist.all_reduce(t)
    return t.item() / dist.get_world_size()


def sum_over_processes(t: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of a tensor over all processes (itself without DDP)."""
    if dist.is_initialized():
        t = t.clone()
        dist.all_reduce(t)
    return t


def is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def setup_distributed():
    """DDP from torchrun's environment; returns (rank, world, device). One process alone: `--device auto`'s."""
    if "RANK" not in os.environ:
        return 0, 1, pick_device("auto")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def finish_distributed(ok: bool) -> None:
    """Tear down the process group; after a good run all ranks meet first, so none exits while another talks.

    (Without the meeting, a rank that finished first could tear gloo down while rank 0 was still busy with
    its report; that rank then died at exit with "terminate called without an active exception".)
    """
    if dist.is_initialized():
        if ok:
            dist.barrier()
        dist.destroy_process_group()


def wrap_model(model, compile: bool, world: int, device):
    """What the loop calls: the model, compiled (--compile) and wrapped for DDP when there are processes."""
    fwd = torch.compile(model) if compile else model
    if world > 1:
        fwd = torch.nn.parallel.DistributedDataParallel(
            fwd, device_ids=[device.index] if device.type == "cuda" else None)
    return fwd
