"""Optimizers by name, and the learning-rate schedule.

Names are looked up case-insensitively among ``torch.optim``'s optimizers and, when the optional
``calm-core[optim]`` extra (torch-optimizer) is installed, torch-optimizer's (``lamb``,
``adabelief``, ...); torch.optim wins a name both define. An unknown name lists what exists.

Weight decay goes only to matrices (parameters with ``dim >= 2``: linear and embedding weights);
norms' gains and biases are not decayed, as in the reference and nanoGPT. Only parameters with
``requires_grad=True`` are optimised (a CALM's frozen codec is left out).

The schedule is a pure function of the step, so its checkpointed state is just the step: linear
warm-up from ``lr / warmup_steps`` to ``lr`` (for every shape, unlike the reference, whose
"constant" schedule silently skips warm-up), then constant, cosine or linear decay to
``min_lr_ratio * lr`` at the last step.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from calm_core.training.config import TrainConfig
from calm_core.training.optimizer_names import (
    OptimizerNotFoundError,
    available_optimizers,
    get_optimizer_class,
)

__all__ = [
    "LRSchedule",
    "OptimizerNotFoundError",
    "available_optimizers",
    "build_optimizer",
    "get_optimizer_class",
    "parameter_groups",
]


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters split into decayed (dim >= 2) and non-decayed groups."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    if not decay and not no_decay:
        raise ValueError("the model has no parameters with requires_grad=True to train")
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer ``config.optimizer`` over the model's trainable parameters."""
    cls = get_optimizer_class(config.optimizer)
    accepted = inspect.signature(cls.__init__).parameters
    kwargs: dict[str, Any] = {"lr": config.lr}
    if "betas" in accepted:
        kwargs["betas"] = tuple(config.betas)
    if "eps" in accepted:
        kwargs["eps"] = config.eps
    groups: Iterable[dict[str, Any]] = parameter_groups(model, config.weight_decay)
    if "weight_decay" not in accepted:
        groups = [{"params": [p for g in groups for p in g["params"]]}]
    params = [p for g in groups for p in g["params"]]
    if "fused" in accepted and _fusable(params):
        # torch's fused Adam/AdamW kernel: one pass over each tensor instead of a chain of ops
        # (on CUDA, and several times faster on CPU too, where the default is a per-tensor loop)
        kwargs["fused"] = True
    elif "foreach" in accepted and params and all(p.device.type != "cpu" for p in params):
        # on other accelerators (MPS, ...) the multi-tensor path instead of a per-tensor loop
        kwargs["foreach"] = True
    return cls(list(groups), **kwargs)


def _fusable(params: list[nn.Parameter]) -> bool:
    """Whether torch's fused optimizer kernels take these parameters (float, CPU or CUDA)."""
    return bool(params) and all(
        p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params
    )


class LRSchedule:
    """Sets each param group's lr from the step: warm-up, then constant/cosine/linear."""

    def __init__(self, optimizer: torch.optim.Optimizer, config: TrainConfig) -> None:
        self.optimizer = optimizer
        self.config = config
        self.step_count = 0

    def factor(self, step: int) -> float:
        """lr multiplier for optimizer step ``step`` (0-based)."""
        c = self.config
        if c.warmup_steps and step < c.warmup_steps:
            return (step + 1) / c.warmup_steps
        if c.schedule == "constant":
            return 1.0
        span = max(1, c.steps - c.warmup_steps - 1)
        progress = min(1.0, (step - c.warmup_steps) / span)
        if c.schedule == "cosine":
            shape = 0.5 * (1.0 + math.cos(math.pi * progress))
        else:
            shape = 1.0 - progress
        return c.min_lr_ratio + (1.0 - c.min_lr_ratio) * shape

    def apply(self, step: int) -> float:
        """Set the lr for step ``step`` on every group and return it."""
        lr = self.config.lr * self.factor(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.step_count = step
        return lr

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step_count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step_count = int(state["step"])
