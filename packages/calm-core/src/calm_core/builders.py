"""Build a model from a named preset (builders apart from the preset data, as torchtune does).

:mod:`calm_core.presets` holds the shapes as plain data and imports nothing of calm; this module
turns one into a CALM or an AR model with random weights.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from calm_core.ar import ARConfig, ARModel
from calm_core.calm import CALM
from calm_core.config import validate_config
from calm_core.presets import get_preset

__all__ = ["build_preset"]


def build_preset(name: str, **overrides: Any) -> nn.Module:
    """Build a model (random weights) from a preset; ``overrides`` replace top-level fields.

    CALM presets need the codec (``autoencoder``) and head plugins installed. Pass ``codec=`` to
    use an existing (e.g. pretrained) codec instead of a random one.
    """
    data = get_preset(name)
    kind = data.pop("kind")
    codec = overrides.pop("codec", None)
    data.update(overrides)
    if kind == "calm":
        return CALM(data, codec=codec)
    return ARModel(validate_config(ARConfig, data))
