"""A diagonal-Gaussian head trained by the likelihood of the posterior mean (a test fixture)."""

from __future__ import annotations

import math

import torch
from calm_core.config import ConfigModel
from calm_core.interfaces import GenerativeHead, LatentPosterior
from pydantic import Field
from torch import Tensor, nn


class DiagonalGaussianConfig(ConfigModel):
    width: int = Field(32, gt=0, description="hidden width of the MLP")
    min_std: float = Field(1e-3, gt=0, description="floor of the predicted standard deviation")


class DiagonalGaussianHead(GenerativeHead):
    config_class = DiagonalGaussianConfig

    def __init__(
        self, config: DiagonalGaussianConfig, *, hidden_size: int, latent_size: int
    ) -> None:
        super().__init__(config, hidden_size=hidden_size, latent_size=latent_size)
        self.net = nn.Sequential(
            nn.Linear(hidden_size, config.width),
            nn.SiLU(),
            nn.Linear(config.width, 2 * latent_size),
        )

    def _params(self, hidden: Tensor) -> tuple[Tensor, Tensor]:
        mean, raw = self.net(hidden).chunk(2, dim=-1)
        return mean, nn.functional.softplus(raw) + self.config.min_std

    def loss(self, hidden: Tensor, target: LatentPosterior) -> Tensor:
        self.check_hidden(hidden)
        mean, std = self._params(hidden)
        z = (target.mean - mean) / std
        return (0.5 * z.pow(2) + std.log() + 0.5 * math.log(2 * math.pi)).sum(-1)

    def sample(
        self, hidden: Tensor, num_samples: int = 1, generator: torch.Generator | None = None
    ) -> Tensor:
        self.check_hidden(hidden)
        mean, std = self._params(hidden)
        eps = torch.randn(
            (num_samples, *mean.shape), generator=generator, dtype=mean.dtype, device=mean.device
        )
        return mean + std * eps
