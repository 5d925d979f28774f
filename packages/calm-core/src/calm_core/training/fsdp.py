"""FSDP2 sharding and ``torch.distributed.checkpoint`` (DCP) state for ``strategy: "fsdp"``.

Each trainable block gets its own ``fully_shard`` group (its parameters are gathered just for its
forward and backward), then the root takes the rest (embeddings, head, a CALM's frozen codec).
Gradients are averaged over ranks by the reduce-scatter, as DDP's all-reduce does, so a run on
N processes follows the single-process losses.

Checkpoints of an FSDP run are sharded: every rank writes its own shards of the model and
optimizer state under ``<checkpoint>/dcp/`` with :func:`torch.distributed.checkpoint.save`, keyed
by parameter names (not positions), and :func:`load_sharded` reads them back into any sharding —
another number of processes, or one plain process (DCP reshards on load).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load
from torch.distributed.checkpoint.state_dict_saver import save as dcp_save
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor

__all__ = [
    "SHARDED_DIR",
    "copy_full_state",
    "full_tensor",
    "is_sharded_checkpoint",
    "load_sharded",
    "save_sharded",
    "set_gradient_sync",
    "shard",
]

#: the DCP directory inside a checkpoint of an FSDP run
SHARDED_DIR = "dcp"


def shard(model: nn.Module, blocks: list[nn.Module], device: torch.device) -> None:
    """``fully_shard`` every block, then the root, over all ranks (in place)."""
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for block in blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)


def set_gradient_sync(model: nn.Module, sync: bool) -> None:
    """Skip (``False``) or do the gradient reduce-scatter of the next backward (accumulation)."""
    if isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(sync)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a DTensor (a collective), or ``t`` itself."""
    return t.full_tensor() if isinstance(t, DTensor) else t


@torch.no_grad()
def copy_full_state(sharded: nn.Module, target: nn.Module) -> None:
    """Gather every tensor of ``sharded`` and copy it into the same-named one of ``target``.

    One tensor at a time, so a rank never holds more than one unsharded tensor beyond ``target``.
    A collective: every rank must call it.
    """
    own = target.state_dict()
    for name, value in sharded.state_dict().items():
        whole = full_tensor(value)
        own[name].copy_(whole.to(own[name].device))


def is_sharded_checkpoint(path: Path) -> bool:
    """Whether ``path`` is a checkpoint written by :func:`save_sharded`."""
    return (path / SHARDED_DIR / ".metadata").is_file()


def save_sharded(model: nn.Module, optimizer: torch.optim.Optimizer, path: Path) -> None:
    """Write model and optimizer state under ``path/dcp`` (every rank its own shards)."""
    model_state, optim_state = get_state_dict(model, optimizer)
    with _alone_is_intended(), _unwrapped_failures():
        dcp_save(
            {"model": model_state, "optim": optim_state},
            checkpoint_id=path / SHARDED_DIR,
            no_dist=not _in_group(),
        )


def load_sharded(model: nn.Module, optimizer: torch.optim.Optimizer, path: Path) -> None:
    """Load what :func:`save_sharded` wrote into ``model``/``optimizer``, resharding as needed
    (``get_state_dict`` first creates an empty optimizer's state, which DCP loads in place)."""
    model_state, optim_state = get_state_dict(model, optimizer)
    state: dict[str, Any] = {"model": model_state, "optim": optim_state}
    with _alone_is_intended(), _unwrapped_failures():
        dcp_load(state, checkpoint_id=path / SHARDED_DIR, no_dist=not _in_group())
    set_state_dict(
        model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"]
    )


def _in_group() -> bool:
    # one process (a run resumed alone) reads and writes the same files without a group
    return dist.is_available() and dist.is_initialized()


@contextlib.contextmanager
def _alone_is_intended() -> Iterator[None]:
    # DCP warns that it "assumes" a single process when there is no group: here that is the plan
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


@contextlib.contextmanager
def _unwrapped_failures() -> Iterator[None]:
    # DCP gathers every rank's failure into a CheckpointException, a BaseException that no
    # `except Exception` (nor the trainer's OSError handling: a full disk) sees; raise the first
    # rank's own exception instead, chained to DCP's report of all of them
    try:
        yield
    except CheckpointException as exc:
        failures = [f[0] for f in exc.failures.values() if isinstance(f[0], Exception)]
        if not failures:
            raise
        raise failures[0] from exc
