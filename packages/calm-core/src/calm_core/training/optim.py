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

import difflib
import inspect
import math
from collections.abc import Iterable
from types import ModuleType
from typing import Any

import torch
from torch import nn

from calm_core.training.config import TrainConfig

__all__ = [
    "LRSchedule",
    "OptimizerNotFoundError",
    "available_optimizers",
    "build_optimizer",
    "get_optimizer_class",
    "parameter_groups",
]


class OptimizerNotFoundError(KeyError):
    """An optimizer name that neither torch.optim nor torch-optimizer provides."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def _optimizers_in(module: ModuleType) -> dict[str, type[torch.optim.Optimizer]]:
    out: dict[str, type[torch.optim.Optimizer]] = {}
    for attr in dir(module):
        obj = getattr(module, attr, None)
        if (
            isinstance(obj, type)
            and issubclass(obj, torch.optim.Optimizer)
            and obj is not torch.optim.Optimizer
            and not attr.startswith("_")
        ):
            out.setdefault(attr.lower(), obj)
    return out


def _torch_optimizer() -> ModuleType | None:
    try:
        import torch_optimizer
    except ImportError:
        return None
    return torch_optimizer


def available_optimizers() -> dict[str, str]:
    """Every optimizer name -> the module providing it (``torch.optim`` or ``torch_optimizer``)."""
    names = {name: "torch.optim" for name in _optimizers_in(torch.optim)}
    extra = _torch_optimizer()
    if extra is not None:
        for name in _optimizers_in(extra):
            names.setdefault(name, "torch_optimizer")
    return dict(sorted(names.items()))


def get_optimizer_class(name: str) -> type[torch.optim.Optimizer]:
    """The optimizer class called ``name`` (case-insensitive).

    Raises:
        OptimizerNotFoundError: listing close matches and every available name.
    """
    key = name.lower()
    table = _optimizers_in(torch.optim)
    if key in table:
        return table[key]
    extra = _torch_optimizer()
    if extra is not None:
        more = _optimizers_in(extra)
        if key in more:
            return more[key]
    names = available_optimizers()
    close = difflib.get_close_matches(key, list(names), n=3, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    note = (
        ""
        if extra is not None
        else " More (e.g. lamb) come with the optional extra: pip install 'calm-core[optim]'."
    )
    raise OptimizerNotFoundError(
        f"unknown optimizer {name!r}.{hint} Available: {', '.join(names)}.{note}"
    )


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
    if "fused" in accepted and _fusable([p for g in groups for p in g["params"]]):
        # torch's fused Adam/AdamW kernel: one pass over each tensor instead of a chain of ops
        # (several times faster on CPU, where the default is the per-tensor loop)
        kwargs["fused"] = True
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
