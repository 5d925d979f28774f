"""The errors of loading a model directory, apart from :mod:`calm_core.model_dir` so that the
Hub resolution under it (:mod:`calm_core.hub_cache`) can derive its own errors from them."""

from __future__ import annotations

__all__ = ["ComponentNotInstalledError", "ModelLoadError"]


class ModelLoadError(RuntimeError):
    """A model directory that cannot be loaded (missing file, corrupted weights, wrong tensor)."""


class ComponentNotInstalledError(ModelLoadError):
    """The directory needs a component whose providing distribution is not installed."""
