"""The flow-matching head (an ablation in the paper): rectified-flow velocity regression.

Path ``x_t = (1 - t) x0 + t z`` from Gaussian noise ``x0`` (t = 0) to a target latent ``z``
(t = 1); the adaLN MLP regresses the constant velocity ``z - x0`` given ``(x_t, t, h)``.
Training draws ``num_target_samples`` latents per position from the codec posterior. Sampling
integrates ``dx/dt = v(x, t, h)`` from t = 0 to 1 with the Euler rule (one call per step) or the
midpoint rule (two calls per step; the default, 10 steps = 20 calls).

What is unusual, kept for weight compatibility with the published head: the network embeds the
time as the integer ``floor(t * time_bins)`` (1000 bins by default), so the time input is
piecewise constant in t.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import torch
from calm_core.config import ConfigModel
from calm_core.interfaces import GenerativeHead, HeadCost, LatentPosterior
from pydantic import Field
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

__all__ = ["FlowHead", "FlowHeadConfig"]


class FlowHeadConfig(AdaLNHeadConfig):
    """Configuration of the flow-matching head (SPEC.md §4)."""

    steps: int = Field(10, ge=1, description="Integration steps from noise to a sample.")
    solver: Literal["midpoint", "euler"] = Field(
        "midpoint", description="ODE solver: 'midpoint' (2 calls/step) or 'euler' (1 call/step)."
    )
    time_bins: int = Field(
        1000, ge=1, description="The net embeds floor(t * time_bins) (reference-compatible)."
    )


class FlowHead(GenerativeHead):
    """adaLN-MLP velocity field trained by rectified flow; Euler or midpoint sampling.

    Args:
        config: a :class:`FlowHeadConfig`.
        hidden_size: backbone width H (the condition size, and the default width).
        latent_size: codec latent size D.
    """

    config_class: ClassVar[type[ConfigModel]] = FlowHeadConfig
    config: FlowHeadConfig

    def __init__(self, config: FlowHeadConfig, *, hidden_size: int, latent_size: int) -> None:
        super().__init__(config, hidden_size=hidden_size, latent_size=latent_size)
        self.net = AdaLNMLP(
            in_channels=self.latent_size,
            width=config.width or self.hidden_size,
            out_channels=self.latent_size,
            cond_channels=self.hidden_size,
            num_blocks=config.num_blocks,
        )

    @property
    def network_calls_per_sample(self) -> int:
        per_step = 2 if self.config.solver == "midpoint" else 1
        return per_step * self.config.steps

    def cost(self, num_samples: int | None = None) -> HeadCost:
        """Every weight once per network call and row; the loss makes one call per target draw."""
        n = num_samples if num_samples is not None else self.config.num_target_samples
        return network_head_cost(self, n)

    def velocity(self, x: Tensor, t: Tensor | float, cond: Tensor) -> Tensor:
        """``v(x, t, h)`` for ``x [R, D]``, time ``t`` (scalar or ``[R]``) in [0, 1]."""
        if not isinstance(t, Tensor):
            t = torch.full((x.shape[0],), t, device=x.device, dtype=x.dtype)
        # The net sees integer time bins, like the reference; binned in at least float32 so a
        # half-precision t keeps its resolution.
        t_bins = torch.floor(
            t.to(torch.promote_types(t.dtype, torch.float32)) * self.config.time_bins
        )
        out: Tensor = self.net(x, t_bins, cond)
        return out

    # ------------------------------------------------------------------------------- training
    def loss_terms(self, target: Tensor, cond: Tensor, t: Tensor, x0: Tensor) -> Tensor:
        """Velocity-regression loss ``[R]`` for explicit draws (the parity entry point).

        Args:
            target: latents ``z`` ``[R, D]`` (the t = 1 end).
            cond: hidden states ``[R, H]``.
            t: times ``[R]`` in [0, 1).
            x0: noise ``[R, D]`` (the t = 0 end).
        """
        tt = t.to(target.dtype).unsqueeze(-1)
        xt = (1.0 - tt) * x0 + tt * target
        v = self.velocity(xt, t.to(target.dtype), cond)
        return (v - (target - x0)).pow(2).mean(dim=-1)

    def loss(self, hidden: Tensor, target: LatentPosterior) -> Tensor:
        """Mean velocity-regression loss over ``num_target_samples`` posterior draws: ``[N]``."""
        k = self.config.num_target_samples
        n, z, cond = target_draws(self, hidden, target, k)
        t = torch.rand(k * n, device=hidden.device, dtype=hidden.dtype)
        x0 = torch.randn_like(z)
        return self.loss_terms(z, cond, t, x0).reshape(k, n).mean(dim=0)

    # ------------------------------------------------------------------------------- sampling
    def integrate(self, x_init: Tensor, cond: Tensor) -> Tensor:
        """Integrate the ODE from ``x_init [R, D]`` at t = 0 to t = 1 with the configured solver."""
        steps = self.config.steps
        dt = 1.0 / steps
        x = x_init
        for s in range(steps):
            t = s / steps
            v = self.velocity(x, t, cond)
            if self.config.solver == "midpoint":
                v = self.velocity(x + 0.5 * dt * v, (s + 0.5) / steps, cond)
            x = x + dt * v
        return x

    def sample(
        self, hidden: Tensor, num_samples: int = 1, generator: torch.Generator | None = None
    ) -> Tensor:
        """``[num_samples, N, D]`` latents; :attr:`network_calls_per_sample` batched calls."""
        n, x, cond = noise_start(self, hidden, num_samples, generator)
        return self.integrate(x, cond).reshape(num_samples, n, self.latent_size)

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
    ) -> FlowHead:
        """Build from the reference velocity net's weights (keys as in its ``net``).

        Args:
            state_dict: ``time_embed.*``, ``cond_embed.*``, ``res_blocks.*``, ... (a leading
                ``net.`` is also accepted).
            ref_config: the reference's net arguments (``in_channels``, ``model_channels``,
                ``z_channels``, ``num_res_blocks``) or a CALM config (``hidden_size``,
                ``latent_size``, ``num_mlp_layers``).
            hidden_size: condition size; defaults from ``ref_config``.
            latent_size: latent size; defaults from ``ref_config``.
            **overrides: further :class:`FlowHeadConfig` fields (``steps``, ``solver``).
        """
        d, h, width, blocks = reference_net_shape(ref_config, hidden_size, latent_size)
        if int(ref_config.get("out_channels", d)) != d:
            raise ValueError("the flow head predicts a velocity: out_channels must equal D")
        config = FlowHeadConfig(num_blocks=blocks, width=None if width == h else width, **overrides)
        head = cls(config, hidden_size=h, latent_size=d)
        head.net.load_reference_state(strip_net_prefix(state_dict))
        return head
