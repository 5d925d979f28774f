"""Process-group helpers for DDP and FSDP: one code path for 1 process, ``torchrun`` or a spawn.

The trainer calls :func:`setup_distributed`: inside an initialised process group it uses that
group; under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) it initialises one, with NCCL
for CUDA training and gloo otherwise; else it is a single process. Only rank 0 writes logs
and checkpoints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "all_reduce_sum", "barrier", "setup_distributed"]


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: rank, world size, local rank, and whether it owns the group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        """True on the process that writes logs and checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup_distributed(device: torch.device | None = None) -> DistInfo:
    """Join (or create, under torchrun) the default process group; single-process otherwise.

    A group made here uses NCCL when this process trains on a CUDA ``device`` (None: when CUDA is
    available) and gloo otherwise, so ``device: cpu`` under torchrun works on a GPU machine too.
    """
    if dist.is_available() and dist.is_initialized():
        return DistInfo(
            dist.get_rank(),
            dist.get_world_size(),
            int(os.environ.get("LOCAL_RANK", dist.get_rank())),
        )
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    on_cuda = device.type == "cuda" if device is not None else torch.cuda.is_available()
    backend = "nccl" if on_cuda else "gloo"
    if on_cuda:
        torch.cuda.set_device(device if device is not None else local_rank)
    dist.init_process_group(backend=backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, initialized_here=True)


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum ``t`` over ranks in place (a no-op for one process)."""
    if info.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier(info: DistInfo) -> None:
    """Wait for every process of the group (a no-op in a single process)."""
    if info.distributed:
        dist.barrier()
