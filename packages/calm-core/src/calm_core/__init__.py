"""calm-core: Continuous Autoregressive Language Models.

Importing this package is cheap and scans no plugins: heads and codecs are discovered through the
``calm.heads`` / ``calm.codecs`` entry points on first use of :mod:`calm_core.registry`.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from calm_core._version import __version__

# public name -> module that defines it, imported on first attribute access
_LAZY: dict[str, str] = {
    "Codec": "calm_core.interfaces",
    "GenerativeHead": "calm_core.interfaces",
    "LatentPosterior": "calm_core.interfaces",
    "Component": "calm_core.interfaces",
    "ComponentSpec": "calm_core.config",
    "ConfigError": "calm_core.config",
    "ConfigModel": "calm_core.config",
    "load_pretrained": "calm_core.model_dir",
    "save_pretrained": "calm_core.model_dir",
    "push_to_hub": "calm_core.hub",
    "Backbone": "calm_core.backbone",
    "BackboneConfig": "calm_core.backbone",
    "CALM": "calm_core.calm",
    "CALMConfig": "calm_core.calm",
    "ARModel": "calm_core.ar",
    "ARConfig": "calm_core.ar",
    "exact_temperature_sample": "calm_core.sampling",
    "batch_temperature_sample": "calm_core.sampling",
    "evaluate_brier": "calm_core.metrics.brier_eval",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if name in ("registry",):
        return import_module(f"calm_core.{name}")
    raise AttributeError(f"module 'calm_core' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(__all__)
