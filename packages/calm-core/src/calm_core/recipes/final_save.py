"""The end of a run: the final model is written only when it is finite, and a failed write says
what is still good (issue 23).

A run whose weights became NaN or infinite (an lr so large that one step overflows them, while
the loss and gradients of that step were still finite) is refused with :class:`NonFiniteModelError`
instead of being saved and reported as a success. A full disk or a permission problem while
writing the weights (``OSError``, or the ``SafetensorError`` that safetensors raises for them) is
a :class:`~calm_core.training.checkpoint.CheckpointWriteError` naming the last good checkpoint;
the atomic writes of :mod:`calm_core.model_dir` leave any earlier model files intact.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from torch import nn

from calm_core.model_dir import save_pretrained
from calm_core.training.checkpoint import (
    CheckpointWriteError,
    describe_write_error,
    latest_checkpoint,
)

__all__ = ["NonFiniteModelError", "save_final_model"]


class NonFiniteModelError(ValueError):
    """The trained weights hold NaN or infinite values; the model was not saved."""


def _first_non_finite(model: nn.Module) -> str | None:
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                return name
    return None


def save_final_model(model: nn.Module, out: Path) -> Path:
    """Check the weights are finite, then write the model directory ``out``."""
    checkpoints = out / "checkpoints"
    bad = _first_non_finite(model)
    if bad is not None:
        raise NonFiniteModelError(
            f"the trained weights are not finite (tensor '{bad}' holds NaN or inf), so the model "
            f"was not saved to {out}; the run diverged: lower the lr (keep grad_clip on) and "
            "start over with --overwrite (the checkpoints under "
            f"{checkpoints} may hold the same weights)"
        )
    try:
        return save_pretrained(model, out)
    except (OSError, SafetensorError) as exc:
        good = latest_checkpoint(checkpoints)
        raise CheckpointWriteError(
            f"could not write the model to {out}: {describe_write_error(exc)}; the last good "
            f"checkpoint is {good or 'none'} (free space or fix permissions, then run again with "
            "--resume to write the model from it)"
        ) from None
