"""Tiny in-process head and codec used by calm-core's own tests (calm_core never imports plugins)."""

from __future__ import annotations

import torch
from calm_core.config import ConfigModel
from calm_core.interfaces import Codec, GenerativeHead, LatentPosterior
from pydantic import Field
from torch import Tensor, nn


class TinyHeadConfig(ConfigModel):
    width: int = Field(8, gt=0, description="hidden width")
    mode: str = Field("gauss", pattern="^(gauss|fixed)$")


class TinyHead(GenerativeHead):
    """mean = MLP(h); samples = mean + eps; loss = squared error to the posterior mean."""

    config_class = TinyHeadConfig

    def __init__(self, config: TinyHeadConfig, *, hidden_size: int, latent_size: int) -> None:
        super().__init__(config, hidden_size=hidden_size, latent_size=latent_size)
        self.net = nn.Sequential(
            nn.Linear(hidden_size, config.width), nn.Tanh(), nn.Linear(config.width, latent_size)
        )

    def loss(self, hidden: Tensor, target: LatentPosterior) -> Tensor:
        return (self.net(hidden) - target.mean).pow(2).sum(-1)

    def sample(
        self, hidden: Tensor, num_samples: int = 1, generator: torch.Generator | None = None
    ) -> Tensor:
        mean = self.net(hidden)
        eps = torch.randn(
            (num_samples, *mean.shape), generator=generator, dtype=mean.dtype, device=mean.device
        )
        return mean + eps


class TinyCodecConfig(ConfigModel):
    vocab_size: int = Field(11, gt=1)
    chunk_size: int = Field(2, gt=0)
    latent_size: int = Field(4, gt=0)


class TinyCodec(Codec):
    """A linear chunk autoencoder with a tied embedding."""

    config_class = TinyCodecConfig

    def __init__(self, config: TinyCodecConfig) -> None:
        super().__init__(config)
        c = config
        self.embed = nn.Embedding(c.vocab_size, 6)
        self.enc = nn.Linear(6 * c.chunk_size, 2 * c.latent_size)
        self.dec = nn.Linear(c.latent_size, 6 * c.chunk_size)
        self.out = nn.Linear(6, c.vocab_size, bias=False)
        self.out.weight = self.embed.weight  # tied, to exercise alias saving

    @property
    def chunk_size(self) -> int:
        return int(self.config.chunk_size)  # type: ignore[attr-defined]

    @property
    def latent_size(self) -> int:
        return int(self.config.latent_size)  # type: ignore[attr-defined]

    @property
    def vocab_size(self) -> int:
        return int(self.config.vocab_size)  # type: ignore[attr-defined]

    def encode(self, tokens: Tensor) -> LatentPosterior:
        b, t = tokens.shape
        if t % self.chunk_size:
            raise ValueError(f"length {t} is not a multiple of K={self.chunk_size}")
        x = self.embed(tokens).reshape(b, t // self.chunk_size, -1)
        mean, log_std = self.enc(x).chunk(2, dim=-1)
        return LatentPosterior.from_log_std(mean, log_std.clamp(-5, 2))

    def decode(self, latents: Tensor) -> Tensor:
        h = self.dec(latents).reshape(*latents.shape[:-1], self.chunk_size, 6)
        return self.out(h)

    def loss(self, tokens: Tensor) -> dict[str, Tensor]:
        post = self.encode(tokens)
        logits = self.decode(post.sample())
        ce = nn.functional.cross_entropy(logits.reshape(-1, self.vocab_size), tokens.reshape(-1))
        return {"loss": ce, "ce": ce.detach()}
