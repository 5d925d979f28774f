"""The adaLN residual MLP shared by the diffusion and flow-matching heads (written once).

``net(x, t, c)``: the input ``x`` is projected to width W; a conditioning vector
``y = TimeEmbed(t) + Linear(c)`` modulates every residual block through adaptive LayerNorm::

    shift, scale, gate = Linear(SiLU(y)).chunk(3)
    x <- x + gate * MLP(LN(x) * (1 + scale) + shift)

and a final adaLN layer (LayerNorm without affine parameters, shift/scale from ``y``) maps to the
output channels. The time embedding uses 256 sinusoidal features, cosine first, with frequencies
``exp(-ln(10000) k / 128)``, followed by a two-layer MLP.

Parameter names follow the layout of the published MLP-adaLN denoiser (``time_embed.mlp.0``,
``res_blocks.i.adaLN_modulation.1``, ...), so reference weights load without renaming. As there,
the modulation layers and the output Linear start at zero: an untrained net outputs zeros and every
block starts as the identity.

Both heads also lay out their batches here: :func:`target_draws` (training: posterior draws beside
their hidden states) and :func:`noise_start` (sampling: Gaussian starts beside their hidden states).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from calm_core.config import ConfigModel
from calm_core.interfaces import GenerativeHead, HeadCost, LatentPosterior, weight_count
from pydantic import Field
from torch import Tensor, nn

__all__ = [
    "AdaLNBlock",
    "AdaLNFinalLayer",
    "AdaLNHeadConfig",
    "AdaLNMLP",
    "TimestepEmbedder",
    "network_head_cost",
    "noise_start",
    "reference_net_shape",
    "strip_net_prefix",
    "target_draws",
    "timestep_features",
]

_LN_EPS = 1e-6


class AdaLNHeadConfig(ConfigModel):
    """Fields shared by the heads built on :class:`AdaLNMLP` (diffusion and flow)."""

    num_blocks: int = Field(4, ge=1, description="adaLN residual blocks of the network.")
    width: int | None = Field(
        None, ge=1, description="Network width W; None uses the backbone's hidden size."
    )
    num_target_samples: int = Field(
        8, ge=1, description="Draws from the codec posterior per position in the loss."
    )


def network_head_cost(head: GenerativeHead, loss_calls: int) -> HeadCost:
    """Cost of a head built on :class:`AdaLNMLP`: each network call runs every weight once per
    row (the condition is embedded again at each call), ``sample`` makes
    ``network_calls_per_sample`` calls and ``loss`` makes ``loss_calls`` (one per target draw)."""
    params = weight_count(head)
    calls = head.network_calls_per_sample
    return HeadCost(
        params=params,
        macs_once=0,
        macs_per_sample=params * calls,
        loss_macs=params * loss_calls,
        calls_per_sample=calls,
    )


def target_draws(
    head: GenerativeHead, hidden: Tensor, target: LatentPosterior, k: int
) -> tuple[int, Tensor, Tensor]:
    """The training batch of a network head: ``(N, draws [k*N, D], cond [k*N, H])``, ``k``
    posterior draws per position (draw-major) and each position's hidden state beside its draws."""
    n = head.check_hidden(hidden)
    if target.mean.shape != (n, head.latent_size):
        raise ValueError(
            f"target posterior must be [{n}, {head.latent_size}], got {tuple(target.mean.shape)}"
        )
    draws = target.sample(k).to(hidden.dtype).reshape(k * n, head.latent_size)
    cond = hidden.unsqueeze(0).expand(k, n, head.hidden_size).reshape(k * n, -1)
    return n, draws, cond


def noise_start(
    head: GenerativeHead, hidden: Tensor, num_samples: int, generator: torch.Generator | None
) -> tuple[int, Tensor, Tensor]:
    """The sampling batch of a network head: ``(N, noise [S*N, D], cond [S*N, H])`` for
    ``S = num_samples`` samples per position (sample-major), the noise drawn from ``generator``."""
    n = head.check_hidden(hidden)
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    rows = num_samples * n
    cond = hidden.unsqueeze(0).expand(num_samples, n, head.hidden_size).reshape(rows, -1)
    x = torch.randn(
        (rows, head.latent_size), generator=generator, device=hidden.device, dtype=hidden.dtype
    )
    return n, x, cond


def timestep_features(t: Tensor, dim: int = 256, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal features ``[cos(t f_k)..., sin(t f_k)...]`` of shape ``[N, dim]``.

    Computed in at least float32 (integer and half-precision timesteps are promoted), so large
    timesteps keep their phase.
    """
    if dim % 2:
        raise ValueError(f"timestep feature size must be even, got {dim}")
    dtype = torch.promote_types(t.dtype, torch.float32) if t.is_floating_point() else torch.float32
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, device=t.device, dtype=dtype) / half
    )
    args = t.to(dtype).unsqueeze(-1) * freqs
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedder(nn.Module):
    """Sinusoidal features followed by Linear -> SiLU -> Linear."""

    def __init__(self, width: int, frequency_size: int = 256) -> None:
        super().__init__()
        self.frequency_size = frequency_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_size, width), nn.SiLU(), nn.Linear(width, width)
        )

    def forward(self, t: Tensor) -> Tensor:
        first = self.mlp[0]
        assert isinstance(first, nn.Linear)
        feats = timestep_features(t, self.frequency_size).to(first.weight.dtype)
        out: Tensor = self.mlp(feats)
        return out


def _modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale) + shift


class AdaLNBlock(nn.Module):
    """Residual block ``x + gate * MLP(adaLN(x))`` modulated by the conditioning vector."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.in_ln = nn.LayerNorm(width, eps=_LN_EPS)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        shift, scale, gate = self.adaLN_modulation(y).chunk(3, dim=-1)
        h = _modulate(self.in_ln(x), shift, scale)
        out: Tensor = x + gate * self.mlp(h)
        return out


class AdaLNFinalLayer(nn.Module):
    """``Linear(LN(x) * (1 + scale) + shift)`` with a non-affine LayerNorm."""

    def __init__(self, width: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(width, elementwise_affine=False, eps=_LN_EPS)
        self.linear = nn.Linear(width, out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(y).chunk(2, dim=-1)
        out: Tensor = self.linear(_modulate(self.norm_final(x), shift, scale))
        return out


class AdaLNMLP(nn.Module):
    """The denoiser / velocity network ``net(x, t, c)`` of the diffusion and flow heads.

    Args:
        in_channels: size of ``x`` (the latent size D).
        width: W, the network width.
        out_channels: output size (D, or 2D for a learned variance).
        cond_channels: size of the condition ``c`` (the backbone width H).
        num_blocks: number of :class:`AdaLNBlock`.
        frequency_size: number of sinusoidal timestep features.
    """

    def __init__(
        self,
        in_channels: int,
        width: int,
        out_channels: int,
        cond_channels: int,
        num_blocks: int,
        frequency_size: int = 256,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.time_embed = TimestepEmbedder(width, frequency_size)
        self.cond_embed = nn.Linear(cond_channels, width)
        self.input_proj = nn.Linear(in_channels, width)
        self.res_blocks = nn.ModuleList(AdaLNBlock(width) for _ in range(num_blocks))
        self.final_layer = AdaLNFinalLayer(width, out_channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform Linears, zero biases, N(0, 0.02) time MLP, zero modulation and output."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        for layer in (self.time_embed.mlp[0], self.time_embed.mlp[2]):
            assert isinstance(layer, nn.Linear)
            nn.init.normal_(layer.weight, std=0.02)
        zeroed: list[nn.Module] = [self.final_layer.adaLN_modulation[1], self.final_layer.linear]
        for block in self.res_blocks:
            assert isinstance(block, AdaLNBlock)
            zeroed.append(block.adaLN_modulation[1])
        for layer in zeroed:
            assert isinstance(layer, nn.Linear)
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def condition(self, t: Tensor, c: Tensor) -> Tensor:
        """The conditioning vector ``y = TimeEmbed(t) + Linear(c)``: ``[N, W]``."""
        out: Tensor = self.time_embed(t) + self.cond_embed(c)
        return out

    def forward(self, x: Tensor, t: Tensor, c: Tensor) -> Tensor:
        """``x [N, in]``, timestep values ``t [N]``, condition ``c [N, cond]`` -> ``[N, out]``."""
        y = self.condition(t, c)
        h = self.input_proj(x)
        for block in self.res_blocks:
            h = block(h, y)
        out: Tensor = self.final_layer(h, y)
        return out

    def load_reference_state(self, state_dict: Mapping[str, Tensor], prefix: str = "") -> None:
        """Load reference weights (same key names, optionally under ``prefix``), strictly.

        Raises:
            KeyError: keys missing or unexpected, listing them.
        """
        state = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
        missing, unexpected = self.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise KeyError(
                f"reference adaLN-MLP weights do not match: missing {missing}, unexpected "
                f"{unexpected}"
            )


def strip_net_prefix(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Drop a leading ``net.`` from reference keys (the heads' network attribute), if present."""
    if any(k.startswith("net.") for k in state_dict):
        return {k[4:]: v for k, v in state_dict.items() if k.startswith("net.")}
    return dict(state_dict)


def reference_net_shape(
    ref_config: Mapping[str, Any], hidden_size: int | None, latent_size: int | None
) -> tuple[int, int, int, int]:
    """(latent size, condition size, width, blocks) from reference net args or a CALM config."""
    if "in_channels" in ref_config:
        d = int(latent_size if latent_size is not None else ref_config["in_channels"])
        h = int(hidden_size if hidden_size is not None else ref_config["z_channels"])
        return d, h, int(ref_config["model_channels"]), int(ref_config["num_res_blocks"])
    d = int(latent_size if latent_size is not None else ref_config["latent_size"])
    h = int(hidden_size if hidden_size is not None else ref_config["hidden_size"])
    return d, h, h, int(ref_config["num_mlp_layers"])
