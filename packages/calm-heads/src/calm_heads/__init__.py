"""calm-heads: the energy, diffusion and flow-matching generative heads of CALM.

The heads are published through the ``calm.heads`` entry points (``energy``, ``diffusion``,
``flow``) and built by name with :data:`calm_core.registry.heads`; importing this package is only
needed to use the classes directly. Submodules are imported lazily, on first attribute access.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from calm_heads.diffusion import DiffusionHead, DiffusionHeadConfig
    from calm_heads.energy import EnergyHead, EnergyHeadConfig
    from calm_heads.energy_score import energy_distance, energy_loss
    from calm_heads.flow import FlowHead, FlowHeadConfig

__all__ = [
    "DiffusionHead",
    "DiffusionHeadConfig",
    "EnergyHead",
    "EnergyHeadConfig",
    "FlowHead",
    "FlowHeadConfig",
    "energy_distance",
    "energy_loss",
]

_LAZY = {
    "DiffusionHead": "calm_heads.diffusion",
    "DiffusionHeadConfig": "calm_heads.diffusion",
    "EnergyHead": "calm_heads.energy",
    "EnergyHeadConfig": "calm_heads.energy",
    "FlowHead": "calm_heads.flow",
    "FlowHeadConfig": "calm_heads.flow",
    "energy_distance": "calm_heads.energy_score",
    "energy_loss": "calm_heads.energy_score",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'calm_heads' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
