"""The energy head (CALM's default): a noise-conditioned MLP generator trained by the energy loss.

One network call draws a sample (SPEC.md §4): uniform noise ``eps ~ U(-0.5, 0.5)^noise_size`` and
the backbone hidden state ``h`` are each projected to the width H (Linear + LayerNorm); residual
blocks refine the noise stream ``x`` conditioned on ``h``::

    [gate, up] = MLP([LN(x), h]);   x <- x + Down(SiLU(gate) * up)

and an output MLP maps ``x`` to a latent; its last Linear starts at zero. Training minimises the
Monte-Carlo energy loss of :mod:`calm_heads.energy_score` with N model samples against M draws
from the codec posterior.

What is unusual: everything that depends only on ``h`` is computed once per position and broadcast
over the N samples. That covers the condition projection and the condition half of each block's
first Linear (its weight is split into a noise part and a condition part), which removes about a
sixth of the generator's matmul FLOPs in training (N = 8) compared with repeating ``h`` N times.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from calm_core.config import ConfigModel
from calm_core.interfaces import GenerativeHead, HeadCost, LatentPosterior, weight_count
from pydantic import Field, field_validator
from torch import Tensor, nn

from calm_heads.energy_score import energy_loss, validate_alpha

__all__ = ["EnergyBlock", "EnergyHead", "EnergyHeadConfig"]

_LN_EPS = 1e-6


class EnergyHeadConfig(ConfigModel):
    """Configuration of the energy head (SPEC.md §4-5); the width is the backbone's hidden size."""

    noise_size: int = Field(64, ge=1, description="Dimension of the uniform input noise.")
    num_blocks: int = Field(
        4, ge=1, description="Residual blocks (about a quarter of the backbone layers)."
    )
    num_samples: int = Field(
        8, ge=2, description="N: model samples per position in the training loss (>= 2)."
    )
    num_target_samples: int = Field(
        100, ge=1, description="M: draws from the codec posterior per position in the loss."
    )
    alpha: float = Field(
        1.0,
        gt=0,
        lt=2,
        description="Distance exponent a of the energy score, strictly between 0 and 2.",
    )

    @field_validator("alpha", mode="before")
    @classmethod
    def _alpha_in_open_interval(cls, value: Any) -> Any:
        # runs before the field's gt/lt (which the JSON schema shows) to say why the bound exists
        if isinstance(value, int | float) and not isinstance(value, bool):
            validate_alpha(float(value))
        return value


class EnergyBlock(nn.Module):
    """``x <- x + Down(SiLU(gate) * up)`` with ``[gate, up] = MLP([LN(x), c])``."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.width = width
        self.norm = nn.LayerNorm(width, eps=_LN_EPS)
        self.mlp = nn.Sequential(
            nn.Linear(2 * width, width),
            nn.SiLU(),
            nn.Linear(width, width),
            nn.SiLU(),
            nn.Linear(width, 2 * width),
        )
        self.down = nn.Linear(width, width)

    def condition_term(self, cond: Tensor) -> Tensor:
        """The condition half of the first Linear (plus its bias): computed once per position."""
        first = self.mlp[0]
        assert isinstance(first, nn.Linear)
        return F.linear(cond, first.weight[:, self.width :], first.bias)

    def forward(self, x: Tensor, cond_term: Tensor) -> Tensor:
        """``x [S, P, H]``, ``cond_term [P, H]`` from :meth:`condition_term` -> ``[S, P, H]``."""
        first = self.mlp[0]
        assert isinstance(first, nn.Linear)
        r = F.linear(self.norm(x), first.weight[:, : self.width]) + cond_term
        r = self.mlp[4](F.silu(self.mlp[2](F.silu(r))))
        gate, up = r.chunk(2, dim=-1)
        out: Tensor = x + self.down(F.silu(gate) * up)
        return out


class EnergyHead(GenerativeHead):
    """Noise-conditioned MLP generator; loss = Monte-Carlo energy loss (SPEC.md §4-5).

    Args:
        config: an :class:`EnergyHeadConfig`.
        hidden_size: backbone width H (also the generator's width).
        latent_size: codec latent size D.
    """

    config_class: ClassVar[type[ConfigModel]] = EnergyHeadConfig
    config: EnergyHeadConfig

    def __init__(self, config: EnergyHeadConfig, *, hidden_size: int, latent_size: int) -> None:
        super().__init__(config, hidden_size=hidden_size, latent_size=latent_size)
        h = self.hidden_size
        self.noise_proj = nn.Linear(config.noise_size, h)
        self.noise_norm = nn.LayerNorm(h, eps=_LN_EPS)
        self.hidden_proj = nn.Linear(h, h)
        self.hidden_norm = nn.LayerNorm(h, eps=_LN_EPS)
        self.blocks = nn.ModuleList(EnergyBlock(h) for _ in range(config.num_blocks))
        self.out_norm = nn.LayerNorm(h, eps=_LN_EPS)
        self.out_mlp = nn.Sequential(nn.Linear(h, h), nn.SiLU(), nn.Linear(h, self.latent_size))
        # Zero-initialised output: training starts from a generator that outputs exactly 0.
        last = self.out_mlp[2]
        assert isinstance(last, nn.Linear)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    # ------------------------------------------------------------------------------- generator
    def draw_noise(
        self, num_samples: int, num_positions: int, like: Tensor, generator: torch.Generator | None
    ) -> Tensor:
        """Uniform noise on [-0.5, 0.5): ``[num_samples, num_positions, noise_size]``."""
        shape = (num_samples, num_positions, self.config.noise_size)
        return torch.rand(shape, generator=generator, device=like.device, dtype=like.dtype) - 0.5

    def generate(self, hidden: Tensor, noise: Tensor) -> Tensor:
        """Run the generator on explicit noise: one network call.

        Args:
            hidden: ``[P, H]`` (shared by all samples) or ``[S, P, H]``, which must then be one
                hidden state repeated S times (the reference's layout).
            noise: ``[S, P, noise_size]``.

        Returns:
            latents ``[S, P, D]``.
        """
        if hidden.dim() == 3:
            if not torch.equal(hidden, hidden[:1].expand_as(hidden)):
                raise ValueError(
                    "a 3-D hidden [S, P, H] must repeat one [P, H] state S times; pass [P, H]"
                )
            hidden = hidden[0]
        if hidden.dim() != 2 or hidden.shape[-1] != self.hidden_size:
            raise ValueError(
                f"hidden must be [P, {self.hidden_size}], got shape {tuple(hidden.shape)}"
            )
        if noise.dim() != 3 or noise.shape[1:] != (hidden.shape[0], self.config.noise_size):
            raise ValueError(
                f"noise must be [S, {hidden.shape[0]}, {self.config.noise_size}], got "
                f"{tuple(noise.shape)}"
            )
        cond = self.hidden_norm(self.hidden_proj(hidden))  # [P, H], once per position
        x = self.noise_norm(self.noise_proj(noise))  # [S, P, H]
        for block in self.blocks:
            assert isinstance(block, EnergyBlock)
            x = block(x, block.condition_term(cond))
        out: Tensor = self.out_mlp(self.out_norm(x))
        return out

    # --------------------------------------------------------------------------- head contract
    def loss(self, hidden: Tensor, target: LatentPosterior) -> Tensor:
        """Energy loss per position ``[N]`` with N model samples and M posterior draws."""
        self.check_hidden(hidden)
        if target.mean.shape != (hidden.shape[0], self.latent_size):
            raise ValueError(
                f"target posterior must be [{hidden.shape[0]}, {self.latent_size}], got "
                f"{tuple(target.mean.shape)}"
            )
        cfg = self.config
        noise = self.draw_noise(cfg.num_samples, hidden.shape[0], hidden, None)
        samples = self.generate(hidden, noise)
        return energy_loss(
            samples,
            target.mean.to(samples.dtype),
            target.std.to(samples.dtype),
            num_target_samples=cfg.num_target_samples,
            alpha=cfg.alpha,
        )

    def sample(
        self, hidden: Tensor, num_samples: int = 1, generator: torch.Generator | None = None
    ) -> Tensor:
        """``num_samples`` latents per position ``[num_samples, N, D]``: one batched call."""
        self.check_hidden(hidden)
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        noise = self.draw_noise(num_samples, hidden.shape[0], hidden, generator)
        return self.generate(hidden, noise)

    @property
    def network_calls_per_sample(self) -> int:
        return 1

    def cost(self, num_samples: int | None = None) -> HeadCost:
        """Exact matmul MACs: the condition path once per position, the noise path per sample.

        Per block the first Linear's condition half (``H^2``) is shared by the samples; its noise
        half, the two inner Linears (``H^2 + 2H^2``) and ``down`` (``H^2``) run per sample. The
        energy loss adds ``3D`` FLOPs (difference, square, add) per pair: ``N M`` model-target
        and ``N (N - 1)`` model-model pairs.
        """
        H, D, cfg = self.hidden_size, self.latent_size, self.config
        blocks = len(self.blocks)
        once = H * H + blocks * H * H  # hidden_proj + each block's condition half
        per_sample = cfg.noise_size * H + blocks * 5 * H * H + H * H + H * D
        n = num_samples if num_samples is not None else cfg.num_samples
        return HeadCost(
            params=weight_count(self),
            macs_once=once,
            macs_per_sample=per_sample,
            loss_macs=once + n * per_sample,
            loss_flops=3 * D * (n * cfg.num_target_samples + n * (n - 1)),
        )

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
    ) -> EnergyHead:
        """Build from the reference ``mlp_generator.*`` weights and its CALM config.

        Args:
            state_dict: reference key names with the fixture prefix stripped; only the
                ``mlp_generator.`` entries are used (``generative_head.`` is an alias).
            ref_config: the reference config dict (``noise_size``, ``num_mlp_layers``,
                ``num_samples``, ``beta``, ``hidden_size``, ``latent_size``).
            hidden_size: defaults to ``ref_config["hidden_size"]``.
            latent_size: defaults to ``ref_config["latent_size"]``.
            **overrides: further :class:`EnergyHeadConfig` fields (e.g. ``num_target_samples``).
        """
        config = EnergyHeadConfig(
            noise_size=int(ref_config["noise_size"]),
            num_blocks=int(ref_config["num_mlp_layers"]),
            num_samples=int(ref_config.get("num_samples", 8)),
            alpha=float(ref_config.get("beta", 1.0)),
            **overrides,
        )
        head = cls(
            config,
            hidden_size=int(hidden_size if hidden_size is not None else ref_config["hidden_size"]),
            latent_size=int(latent_size if latent_size is not None else ref_config["latent_size"]),
        )
        state = {}
        for key, value in state_dict.items():
            if key.startswith("mlp_generator."):
                state[_reference_key_to_ours(key[len("mlp_generator.") :])] = value
        if not state:
            raise KeyError("no 'mlp_generator.*' keys in the reference state dict")
        missing, unexpected = head.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise KeyError(
                f"reference generator weights do not match the config: missing {missing}, "
                f"unexpected {unexpected}"
            )
        return head


_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^noise_embd\.", "noise_proj."),
    (r"^norm_noise\.", "noise_norm."),
    (r"^hidden_embd\.", "hidden_proj."),
    (r"^norm_hidden\.", "hidden_norm."),
    (r"^mlp_blocks\.(\d+)\.in_ln\.", r"blocks.\1.norm."),
    (r"^mlp_blocks\.(\d+)\.linears\.", r"blocks.\1.mlp."),
    (r"^mlp_blocks\.(\d+)\.down_proj\.", r"blocks.\1.down."),
    (r"^final_layer\.in_ln\.", "out_norm."),
    (r"^final_layer\.linears\.", "out_mlp."),
)


def _reference_key_to_ours(key: str) -> str:
    for pattern, repl in _RENAMES:
        new, count = re.subn(pattern, repl, key)
        if count:
            return new
    return key  # left as is: reported as unexpected by load_state_dict
