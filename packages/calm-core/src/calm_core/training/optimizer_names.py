"""Optimizers by name: torch.optim's and, with the ``calm-core[optim]`` extra, torch-optimizer's.

Names are looked up case-insensitively; torch.optim wins a name both define. An unknown name lists
what exists and suggests close matches. This module depends on nothing else of the training
package, so the config can validate an optimizer name without importing the optimizer builder.
"""

from __future__ import annotations

import difflib
from types import ModuleType

import torch

__all__ = ["OptimizerNotFoundError", "available_optimizers", "get_optimizer_class"]


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
