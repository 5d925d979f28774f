"""What the trainer does to a model before training it: activation checkpointing, ``torch.compile``,
and the data-parallel wrapper of the configured strategy (DDP, or FSDP2 through
:mod:`calm_core.training.fsdp`).

Blocks are found by convention, not by type, so any model built like calm's works: the children of
an ``nn.ModuleList`` named ``layers`` or ``blocks`` that hold trainable parameters, inside the
model's ``backbone`` when it has one (a CALM's energy head has ``blocks`` too, but calls methods of
them other than ``forward``, which an FSDP unit does not allow; its frozen codec is left alone).
Both in-place changes are undone by :meth:`PreparedModel.restore`, so the model handed to the
trainer is a plain module again after ``fit()``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.checkpoint import checkpoint

from calm_core.training import fsdp
from calm_core.training.config import TrainConfig
from calm_core.training.distributed import DistInfo

__all__ = [
    "PreparedModel",
    "apply_activation_checkpointing",
    "compile_parts",
    "find_blocks",
    "prepare_model",
]

BLOCK_LISTS = ("layers", "blocks")
#: the submodules ``compile: true`` compiles (the backbone and the head); the whole model when none
COMPILED_PARTS = ("backbone", "head", "lm_head")


def find_blocks(model: nn.Module) -> list[nn.Module]:
    """The trainable children of every ``ModuleList`` named ``layers`` or ``blocks`` in the
    model's ``backbone`` (in the whole model when it has no backbone)."""
    root = getattr(model, "backbone", None)
    root = root if isinstance(root, nn.Module) else model
    found: list[nn.Module] = []
    for name, module in root.named_modules():
        if isinstance(module, nn.ModuleList) and name.rsplit(".", 1)[-1] in BLOCK_LISTS:
            found += [b for b in module if any(p.requires_grad for p in b.parameters())]
    return found


def _checkpointed(forward: Callable[..., Any]) -> Callable[..., Any]:
    def run(*args: Any, **kwargs: Any) -> Any:
        if not torch.is_grad_enabled():  # evaluation: nothing to recompute
            return forward(*args, **kwargs)
        # non-reentrant: works with keyword arguments, frozen inputs and FSDP's hooks; the RNG
        # state is stashed and replayed, so dropout draws the same masks when recomputing
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    return run


def apply_activation_checkpointing(blocks: list[nn.Module]) -> None:
    """Recompute each block's activations in the backward pass instead of keeping them.

    The block's ``forward`` is replaced on the instance (its parameter names do not change, so
    checkpoints and state dicts are the same as without it).
    """
    for block in blocks:
        block.__dict__["forward"] = _checkpointed(block.forward)


def compile_parts(model: nn.Module, blocks: list[nn.Module] | None = None) -> list[nn.Module]:
    """``torch.compile`` the backbone and the head in place (``nn.Module.compile``: the state
    dict keys stay the same); the whole model when it has neither. Returns what was compiled.

    With ``blocks`` (FSDP), each block is compiled instead of the backbone around them: a compiled
    backbone would trace through the FSDP units' gather/reshard hooks of its blocks.
    """
    parts = [
        getattr(model, n) for n in COMPILED_PARTS if isinstance(getattr(model, n, None), nn.Module)
    ]
    if blocks:
        parts = [p for p in parts if p is not getattr(model, "backbone", None)] + blocks
    parts = parts or [model]
    for part in parts:
        part.compile()
    return parts


@dataclass
class PreparedModel:
    """The module the training step calls (``wrapped``) and the module it trains (``module``).

    ``module`` is the model itself for one process and DDP; for FSDP it is a sharded copy (the
    model given stays a plain module and receives the trained weights in :meth:`restore`).
    """

    original: nn.Module
    module: nn.Module
    wrapped: nn.Module
    strategy: str
    blocks: list[nn.Module] = field(default_factory=list)
    compiled: list[nn.Module] = field(default_factory=list)

    @property
    def sharded(self) -> bool:
        return self.module is not self.original

    def restore(self, *, copy_weights: bool) -> None:
        """Undo the in-place changes; with FSDP, gather the trained weights into the original
        (collective: every rank calls it)."""
        for block in self.blocks:
            block.__dict__.pop("forward", None)
        for part in self.compiled:
            part._compiled_call_impl = None
        if self.sharded and copy_weights:
            fsdp.copy_full_state(self.module, self.original)


def prepare_model(
    model: nn.Module, config: TrainConfig, info: DistInfo, device: torch.device
) -> PreparedModel:
    """Move ``model`` to ``device`` and apply, in this order, activation checkpointing,
    ``torch.compile`` and the data-parallel strategy (DDP or FSDP2; nothing for one process).

    Under FSDP the model given is not moved: a copy of it is sharded onto the device.
    """
    sharded = info.distributed and config.strategy == "fsdp"
    if sharded:
        # fully_shard shards this copy in place, moving one unit at a time to the device (never
        # the whole model at once); the original stays whole where it is
        module = copy.deepcopy(model)
    else:
        module = model = model.to(device)
    blocks = find_blocks(module)
    prepared = PreparedModel(model, module, module, config.strategy)
    if config.activation_checkpointing:
        if not blocks:
            raise ValueError(
                "activation_checkpointing needs blocks to recompute: the model has no trainable "
                f"nn.ModuleList named {' or '.join(BLOCK_LISTS)}; set activation_checkpointing: "
                "false"
            )
        apply_activation_checkpointing(blocks)
        prepared.blocks = blocks
    if config.compile:
        prepared.compiled = compile_parts(module, blocks if sharded else None)
    if sharded:
        fsdp.shard(module, blocks, device)
    elif info.distributed:
        ids = [device.index] if device.type == "cuda" else None
        prepared.wrapped = DistributedDataParallel(
            module, device_ids=ids, find_unused_parameters=config.find_unused_parameters
        )
    return prepared
