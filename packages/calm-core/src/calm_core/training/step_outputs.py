"""The contract of a micro-step's output: a dict with a scalar ``"loss"``; its other scalar entries
are summed (on the device, without a sync) and logged as metrics."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["accumulate_scalars", "check_output", "forward_loss_step"]


def forward_loss_step(model: nn.Module, batch: torch.Tensor) -> dict[str, Any]:
    """The default loss step: the model's own forward pass, ``model(batch)``."""
    out: dict[str, Any] = model(batch)
    return out


def check_output(out: Any) -> torch.Tensor:
    """The scalar ``"loss"`` of a loss step's output, or a TypeError saying what came instead."""
    if not isinstance(out, dict) or "loss" not in out:
        got = sorted(out) if isinstance(out, dict) else type(out).__name__
        raise TypeError(f"model(tokens) must return a dict with a scalar 'loss'; got {got}")
    loss = out["loss"]
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise TypeError("model(tokens)['loss'] must be a scalar tensor")
    return loss


def accumulate_scalars(sums: dict[str, torch.Tensor], out: dict[str, Any]) -> None:
    """Add the scalar entries of a model output to ``sums`` (detached, fp32, no sync)."""
    for key, value in out.items():
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                continue
            v = value.detach().float().reshape(())
        elif isinstance(value, int | float) and not isinstance(value, bool):
            v = torch.tensor(float(value))
        else:
            continue
        sums[key] = sums[key] + v.to(sums[key].device) if key in sums else v
