"""calm-head-gaussian: an example third-party head for calm.

Installing the distribution is the whole integration: its ``calm.heads`` entry point publishes
:class:`~calm_head_gaussian.head.GaussianEnergyHead` as ``example.gaussian_energy``, and calm finds
it with no code change.
"""

from __future__ import annotations

__version__ = "0.1.0"

from calm_head_gaussian.energy import mixture_energy_loss
from calm_head_gaussian.head import GaussianEnergyConfig, GaussianEnergyHead

__all__ = ["GaussianEnergyConfig", "GaussianEnergyHead", "__version__", "mixture_energy_loss"]
