"""The diffusion head (an ablation in the paper): an adaLN MLP denoiser conditioned on the hidden
state, trained with epsilon prediction plus the learned-variance variational-bound term.

Training (per position): draw ``num_target_samples`` latents from the codec posterior, a uniform
timestep and Gaussian noise for each, noise the latent, and score the network's
``[eps_hat, v]`` output with ``mean((eps_hat - eps)^2) + vb`` (``vb`` in bits, computed with the
predicted mean held fixed so it only trains the variance). Sampling runs the reverse process on a
respaced schedule of ``sampling_steps`` steps (one network call per step).

What is unusual: nothing in the sampler names a device; the noise comes from the caller's
``torch.Generator`` on the device of the hidden states. The respaced timesteps are exposed as
:attr:`DiffusionHead.sampling_timesteps`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from calm_core.config import ConfigModel
from calm_core.interfaces import GenerativeHead, HeadCost, LatentPosterior
from pydantic import Field, model_validator
from torch import Tensor

from calm_heads.adaln_mlp import (
    AdaLNHeadConfig,
    AdaLNMLP,
    network_head_cost,
    noise_start,
    reference_net_shape,
    strip_net_prefix,
    target_draws,
)
from calm_heads.diffusion_schedule import LINEAR_MIN_STEPS, DiffusionSchedule, ScheduleName

__all__ = ["DiffusionHead", "DiffusionHeadConfig"]


class DiffusionHeadConfig(AdaLNHeadConfig):
    """Configuration of the diffusion head (SPEC.md §4)."""

    train_steps: int = Field(1000, ge=2, description="Diffusion steps T used in training.")
    sampling_steps: int = Field(
        100, ge=1, description="Respaced reverse steps at sampling time (<= train_steps)."
    )
    schedule: ScheduleName = Field("cosine", description="Noise schedule: 'cosine' or 'linear'.")
    clip_x0: float | None = Field(
        None,
        gt=0,
        description="Sampling only: clamp each step's predicted clean latent to [-clip_x0, "
        "clip_x0] (None = off, the reference). Keeps the samples of a briefly trained head "
        "bounded; pick a bound a little above the largest |latent| the codec produces.",
    )

    @model_validator(mode="after")
    def _sampling_within_training(self) -> DiffusionHeadConfig:
        if self.schedule == "linear" and self.train_steps < LINEAR_MIN_STEPS:
            raise ValueError(
                f"the linear schedule needs train_steps >= {LINEAR_MIN_STEPS} (its last beta "
                f"0.02 * 1000 / train_steps reaches 1), got {self.train_steps}; use more steps "
                "or schedule='cosine'"
            )
        if self.sampling_steps > self.train_steps:
            raise ValueError(
                f"sampling_steps ({self.sampling_steps}) cannot exceed train_steps "
                f"({self.train_steps}): respacing keeps a subset of the training timesteps"
            )
        return self


class DiffusionHead(GenerativeHead):
    """adaLN-MLP denoiser with a cosine schedule, epsilon prediction and learned variance.

    Args:
        config: a :class:`DiffusionHeadConfig`.
        hidden_size: backbone width H (the condition size, and the default width).
        latent_size: codec latent size D.
    """

    config_class: ClassVar[type[ConfigModel]] = DiffusionHeadConfig
    config: DiffusionHeadConfig

    def __init__(self, config: DiffusionHeadConfig, *, hidden_size: int, latent_size: int) -> None:
        super().__init__(config, hidden_size=hidden_size, latent_size=latent_size)
        self.net = AdaLNMLP(
            in_channels=self.latent_size,
            width=config.width or self.hidden_size,
            out_channels=2 * self.latent_size,  # [eps, variance interpolation value]
            cond_channels=self.hidden_size,
            num_blocks=config.num_blocks,
        )
        # float64 tables computed on the CPU, also under a default device of 'meta' (the model
        # checks and the cost counts build a head there) or 'cuda'
        with torch.device("cpu"):
            self.train_schedule = DiffusionSchedule.named(config.schedule, config.train_steps)
            self.sample_schedule = self.train_schedule.respaced(config.sampling_steps)

    @property
    def sampling_timesteps(self) -> list[int]:
        """The training timesteps visited by the sampler, in increasing order."""
        return list(self.sample_schedule.timestep_map)

    @property
    def network_calls_per_sample(self) -> int:
        return self.sample_schedule.num_steps

    def cost(self, num_samples: int | None = None) -> HeadCost:
        """Every weight once per network call and row; the loss makes one call per target draw."""
        n = num_samples if num_samples is not None else self.config.num_target_samples
        return network_head_cost(self, n)

    # ------------------------------------------------------------------------------- training
    def loss_terms(self, x0: Tensor, cond: Tensor, t: Tensor, noise: Tensor) -> dict[str, Tensor]:
        """Loss for explicit draws (the parity entry point).

        Args:
            x0: clean latents ``[R, D]``.
            cond: hidden states ``[R, H]``.
            t: integer timesteps ``[R]`` in ``[0, train_steps)``.
            noise: ``[R, D]`` standard normal.

        Returns:
            ``{"loss", "mse", "vb"}``, each ``[R]`` (``loss = mse + vb``, vb in bits).
        """
        sched = self.train_schedule
        xt = sched.q_sample(x0, t, noise)
        out = self.net(xt, sched.model_timesteps(t, x0.dtype), cond)
        eps, var_values = out.split(self.latent_size, dim=-1)
        mse = (eps - noise).pow(2).mean(dim=-1)
        vb = sched.vb_bits(eps.detach(), var_values, x0, xt, t)
        return {"loss": mse + vb, "mse": mse, "vb": vb}

    def loss(self, hidden: Tensor, target: LatentPosterior) -> Tensor:
        """Mean of ``mse + vb`` over ``num_target_samples`` posterior draws: ``[N]``."""
        k = self.config.num_target_samples
        n, x0, cond = target_draws(self, hidden, target, k)
        t = torch.randint(0, self.train_schedule.num_steps, (k * n,), device=hidden.device)
        noise = torch.randn_like(x0)
        terms = self.loss_terms(x0, cond, t, noise)
        return terms["loss"].reshape(k, n).mean(dim=0)

    # ------------------------------------------------------------------------------- sampling
    def denoise(self, x_init: Tensor, cond: Tensor, generator: torch.Generator | None) -> Tensor:
        """Run the respaced reverse process from ``x_init [R, D]`` given ``cond [R, H]``."""
        sched = self.sample_schedule
        x = x_init
        for i in reversed(range(sched.num_steps)):
            t = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
            out = self.net(x, sched.model_timesteps(t, x.dtype), cond)
            eps, var_values = out.split(self.latent_size, dim=-1)
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = sched.p_sample_step(eps, var_values, x, t, noise, self.config.clip_x0)
        return x

    def sample(
        self, hidden: Tensor, num_samples: int = 1, generator: torch.Generator | None = None
    ) -> Tensor:
        """``[num_samples, N, D]`` latents, ``sampling_steps`` batched network calls."""
        n, x, cond = noise_start(self, hidden, num_samples, generator)
        return self.denoise(x, cond, generator).reshape(num_samples, n, self.latent_size)

    # ------------------------------------------------------------------------------ reference
    @classmethod
    def from_reference(
        cls,
        state_dict: Mapping[str, Tensor],
        ref_config: Mapping[str, Any],
        *,
        hidden_size: int | None = None,
        latent_size: int | None = None,
        **overrides: Any,
    ) -> DiffusionHead:
        """Build from the reference denoiser's weights (keys as in its ``net``, prefix stripped).

        Args:
            state_dict: ``time_embed.*``, ``cond_embed.*``, ``res_blocks.*``, ... (a leading
                ``net.`` is also accepted).
            ref_config: the reference's net arguments (``in_channels``, ``model_channels``,
                ``z_channels``, ``num_res_blocks``; ``out_channels`` must be 2 x in_channels) or
                a CALM config (``hidden_size``, ``latent_size``, ``num_mlp_layers``).
            hidden_size: condition size; defaults from ``ref_config``.
            latent_size: latent size; defaults from ``ref_config``.
            **overrides: further :class:`DiffusionHeadConfig` fields.
        """
        d, h, width, blocks = reference_net_shape(ref_config, hidden_size, latent_size)
        if int(ref_config.get("out_channels", 2 * d)) != 2 * d:
            raise ValueError("the diffusion head learns its variance: out_channels must be 2 x D")
        config = DiffusionHeadConfig(
            num_blocks=blocks, width=None if width == h else width, **overrides
        )
        head = cls(config, hidden_size=h, latent_size=d)
        head.net.load_reference_state(strip_net_prefix(state_dict))
        return head
