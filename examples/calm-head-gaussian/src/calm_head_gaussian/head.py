"""``example.gaussian_energy``: a diagonal-Gaussian mixture head trained by the energy loss.

What is unusual: the head has an explicit density (a mixture of C diagonal Gaussians whose weights,
means and scales an MLP reads off the hidden state) but is *not* trained by its likelihood. It is
trained like CALM's default energy head, by the energy score against draws from the codec
posterior (SPEC §5), using the Rao-Blackwellised mixture estimator in
:mod:`calm_head_gaussian.energy`. Sampling is one network call for any number of samples: the MLP
runs once, then components and Gaussian noise are drawn.

It is small on purpose: it shows everything a third-party head needs (a pydantic config class, the
``GenerativeHead`` constructor contract, ``loss`` and ``sample``, device and dtype following the
inputs, a seeded generator) and nothing else.
"""

from __future__ import annotations

import torch
from calm_core.config import ConfigModel
from calm_core.interfaces import GenerativeHead, LatentPosterior
from pydantic import Field
from torch import Tensor, nn
from torch.nn import functional as F

from calm_head_gaussian.energy import mixture_energy_loss

__all__ = ["GaussianEnergyConfig", "GaussianEnergyHead"]


class GaussianEnergyConfig(ConfigModel):
    """Configuration of :class:`GaussianEnergyHead` (the ``config`` of its component spec)."""

    width: int | None = Field(
        None, gt=0, description="MLP width; None uses the backbone's hidden size."
    )
    num_layers: int = Field(2, ge=0, description="Residual MLP blocks before the output layer.")
    num_components: int = Field(
        1, ge=1, description="Mixture components; 1 is a single diagonal Gaussian."
    )
    num_samples: int = Field(
        8, ge=2, description="N: reparameterised draws per component in the energy loss."
    )
    num_target_samples: int = Field(
        100, ge=1, description="M: draws from the codec posterior per position in the loss."
    )
    alpha: float = Field(
        1.0, gt=0.0, lt=2.0, description="Energy-score exponent a; the score is proper for 0<a<2."
    )
    min_std: float = Field(1e-4, gt=0.0, description="Floor added to every predicted std.")


class _Block(nn.Module):
    """Pre-norm residual MLP block."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.up = nn.Linear(width, 2 * width)
        self.down = nn.Linear(2 * width, width)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = x + self.down(F.silu(self.up(self.norm(x))))
        return out


class GaussianEnergyHead(GenerativeHead):
    """Mixture of diagonal Gaussians over the next chunk's latent, trained by the energy loss.

    Args:
        config: the head's :class:`GaussianEnergyConfig`.
        hidden_size: H, width of the backbone's hidden states (supplied by the model).
        latent_size: D, the codec's latent size (supplied by the model).
    """

    config_class = GaussianEnergyConfig
    config: GaussianEnergyConfig

    def __init__(self, config: GaussianEnergyConfig, *, hidden_size: int, latent_size: int) -> None:
        super().__init__(config, hidden_size=hidden_size, latent_size=latent_size)
        width = config.width or hidden_size
        C, D = config.num_components, latent_size
        self.inp = nn.Linear(hidden_size, width)
        self.blocks = nn.ModuleList(_Block(width) for _ in range(config.num_layers))
        self.norm = nn.LayerNorm(width)
        # per component: D means, D raw scales, 1 logit
        self.out = nn.Linear(width, C * (2 * D + 1))
        with torch.no_grad():  # start near N(0, I) for every component, equal weights
            self.out.weight.mul_(0.1)
            self.out.bias.zero_()

    def distribution(self, hidden: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The predicted mixture at each position.

        Args:
            hidden: ``[N, H]`` backbone hidden states.

        Returns:
            ``(weights [N, C], means [N, C, D], stds [N, C, D])``.
        """
        if hidden.dim() != 2 or hidden.shape[-1] != self.hidden_size:
            raise ValueError(
                f"hidden must be [N, {self.hidden_size}] (N positions, the hidden size), "
                f"got {tuple(hidden.shape)}"
            )
        x = self.inp(hidden)
        for block in self.blocks:
            x = block(x)
        out = self.out(self.norm(x))
        C, D = self.config.num_components, self.latent_size
        logits, params = out.split([C, 2 * C * D], dim=-1)
        mean, raw = params.reshape(-1, C, 2 * D).chunk(2, dim=-1)
        # softplus(raw + 0.5413) = 1 at raw = 0, so the head starts at unit scale
        std = F.softplus(raw + 0.5413) + self.config.min_std
        return logits.softmax(dim=-1), mean, std

    def loss(self, hidden: Tensor, target: LatentPosterior) -> Tensor:
        """Energy loss per position (lower is better).

        Args:
            hidden: ``[N, H]``.
            target: the codec posterior of the true chunks, ``[N, D]``.

        Returns:
            ``[N]``, an unbiased estimate of ``2 E||X - Y||^a - E||X - X'||^a``.
        """
        if target.mean.shape != (hidden.shape[0], self.latent_size):
            raise ValueError(
                f"target posterior must be [{hidden.shape[0]}, {self.latent_size}] to match "
                f"hidden {tuple(hidden.shape)}, got {tuple(target.mean.shape)}"
            )
        weights, mean, std = self.distribution(hidden)
        # distances in at least float32: bf16/fp16 lose them, and CPU cdist has no bf16 kernel
        work = torch.promote_types(mean.dtype, torch.float32)
        targets = target.sample(self.config.num_target_samples).to(work)
        loss = mixture_energy_loss(
            weights.to(work),
            mean.to(work),
            std.to(work),
            targets,
            num_samples=self.config.num_samples,
            alpha=self.config.alpha,
        )
        return loss.to(mean.dtype)

    def sample(
        self, hidden: Tensor, num_samples: int = 1, generator: torch.Generator | None = None
    ) -> Tensor:
        """Draw latents from the predicted mixture with one network call.

        Args:
            hidden: ``[N, H]``.
            num_samples: draws per position.
            generator: optional random generator (same seed, same draws).

        Returns:
            ``[num_samples, N, D]``.
        """
        if num_samples < 1:
            raise ValueError(f"num_samples must be at least 1, got {num_samples}")
        weights, mean, std = self.distribution(hidden)
        N, C, D = mean.shape
        if C == 1:
            comp = torch.zeros((num_samples, N), dtype=torch.long, device=mean.device)
        else:
            # multinomial needs float32/64 probabilities on the generator's device
            draws = torch.multinomial(
                weights.float(), num_samples, replacement=True, generator=generator
            )
            comp = draws.t()  # [S, N]
        index = comp.unsqueeze(-1).unsqueeze(-1).expand(num_samples, N, 1, D)
        mu = mean.unsqueeze(0).expand(num_samples, N, C, D).gather(2, index).squeeze(2)
        sd = std.unsqueeze(0).expand(num_samples, N, C, D).gather(2, index).squeeze(2)
        eps = torch.randn(
            (num_samples, N, D), generator=generator, device=mean.device, dtype=mean.dtype
        )
        return mu + sd * eps
