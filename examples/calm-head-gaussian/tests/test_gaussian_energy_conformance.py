"""The example head passes calm's own head conformance suite, as every built-in head does."""

from __future__ import annotations

from typing import Any, ClassVar

from calm_core.testing import HeadConformance


class TestGaussianEnergyHead(HeadConformance):
    """One diagonal Gaussian (the default config)."""

    head_name = "example.gaussian_energy"


class TestGaussianEnergyMixtureHead(HeadConformance):
    """A three-component mixture with a narrow MLP and a cheap loss."""

    head_name = "example.gaussian_energy"
    head_config: ClassVar[dict[str, Any]] = {
        "num_components": 3,
        "width": 12,
        "num_layers": 1,
        "num_samples": 4,
        "num_target_samples": 16,
    }
