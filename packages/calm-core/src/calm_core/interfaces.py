"""The plugin contract: :class:`Codec`, :class:`GenerativeHead` and :class:`LatentPosterior`.

Shapes: B batch, L chunk positions, K tokens per chunk, D latent size, H backbone width,
N flattened positions.

A component is an ``nn.Module`` with a pydantic ``config_class``; it is constructed as
``Cls(config, **context)`` where ``context`` is what the host model supplies (a head gets
``hidden_size`` and ``latent_size``; a codec gets nothing). Persistence is not part of the
contract: :func:`calm_core.model_dir.save_pretrained` / ``load_pretrained`` save and load any
component, under the name recorded in :attr:`Component.registered_name` when
:meth:`calm_core.registry.Registry.build` built it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from calm_core.config import ConfigModel
from calm_core.reductions import argmax_last

__all__ = ["Codec", "Component", "GenerativeHead", "LatentPosterior"]


@dataclass(frozen=True)
class LatentPosterior:
    """A diagonal Gaussian over latents: the codec's encoding of each chunk.

    Attributes:
        mean: ``[..., D]``.
        std: ``[..., D]``, positive.
    """

    mean: Tensor
    std: Tensor

    def __post_init__(self) -> None:
        if self.mean.shape != self.std.shape:
            raise ValueError(
                f"posterior mean and std must have one shape, got {tuple(self.mean.shape)} "
                f"and {tuple(self.std.shape)}"
            )

    @classmethod
    def from_log_std(cls, mean: Tensor, log_std: Tensor) -> LatentPosterior:
        """Build from the mean and the log standard deviation (what encoders usually output)."""
        return cls(mean, log_std.exp())

    @property
    def log_std(self) -> Tensor:
        """``log(std)``, ``[..., D]``."""
        return self.std.log()

    @property
    def shape(self) -> torch.Size:
        """Shape of ``mean`` (and ``std``): ``[..., D]``."""
        return self.mean.shape

    @property
    def latent_size(self) -> int:
        """D, the size of the last dimension."""
        return int(self.mean.shape[-1])

    def sample(self, n: int | None = None, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``mean + std * eps``: ``[n, ..., D]``, or ``[..., D]`` when ``n`` is None."""
        shape = self.mean.shape if n is None else (n, *self.mean.shape)
        eps = torch.randn(
            shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype
        )
        return self.mean + self.std * eps

    def reshape(self, *shape: int) -> LatentPosterior:
        """Reshape the leading (batch) dimensions; the latent dimension is kept."""
        return LatentPosterior(
            self.mean.reshape(*shape, self.latent_size), self.std.reshape(*shape, self.latent_size)
        )

    def __getitem__(self, index: Any) -> LatentPosterior:
        return LatentPosterior(self.mean[index], self.std[index])

    def detach(self) -> LatentPosterior:
        """The same posterior with ``mean`` and ``std`` detached from the autograd graph."""
        return LatentPosterior(self.mean.detach(), self.std.detach())

    def kl_per_dim(self) -> Tensor:
        """KL(q || N(0, I)) per latent dimension: ``0.5 (mu^2 + sigma^2 - 1 - 2 log sigma)``."""
        return 0.5 * (self.mean.pow(2) + self.std.pow(2) - 1.0 - 2.0 * self.log_std)


class Component(nn.Module, ABC):
    """Base of every registered component: a module with a typed config.

    Subclasses set ``config_class`` to their pydantic config class (derived from
    :class:`calm_core.config.ConfigModel`) and accept ``config`` as the first constructor argument.
    """

    config_class: ClassVar[type[ConfigModel]]
    #: "head" or "codec": the registry the component belongs to
    kind: ClassVar[str]
    #: keyword arguments supplied by the host model, recorded on save (e.g. hidden_size).
    context_fields: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: ConfigModel) -> None:
        super().__init__()
        self.config = config
        #: the registry name this instance was built under: set by ``Registry.build`` and by
        #: ``load_pretrained``, read when saving (``config.json`` names the component by it).
        #: None for an instance constructed directly; name it (set it, or pass ``name=`` to
        #: ``save_pretrained``) before saving it or putting it into a model.
        self.registered_name: str | None = None

    def context(self) -> dict[str, Any]:
        """The host-supplied constructor arguments, so the component can be rebuilt from disk."""
        return {name: getattr(self, name) for name in self.context_fields}


class Codec(Component):
    """A K-token chunk autoencoder.

    ``encode(tokens[B, L*K]) -> LatentPosterior[B, L, D]``; ``decode(latents[..., D]) ->
    logits[..., K, V]``; ``loss(tokens) -> dict`` (with a scalar ``"loss"``) for the trainer.
    """

    kind: ClassVar[str] = "codec"

    @property
    @abstractmethod
    def chunk_size(self) -> int:
        """K, tokens per chunk."""

    @property
    @abstractmethod
    def latent_size(self) -> int:
        """D, size of one chunk's latent vector."""

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """V, size of the token vocabulary."""

    @abstractmethod
    def encode(self, tokens: Tensor) -> LatentPosterior:
        """``tokens[B, L*K]`` (int) -> posterior with ``mean``/``std`` ``[B, L, D]``."""

    @abstractmethod
    def decode(self, latents: Tensor) -> Tensor:
        """``latents[..., D]`` -> ``logits[..., K, V]``."""

    @abstractmethod
    def loss(self, tokens: Tensor) -> dict[str, Tensor]:
        """Training objective on ``tokens[B, L*K]``: a dict with scalar ``loss`` and metrics."""

    def decode_tokens(self, latents: Tensor) -> Tensor:
        """``latents[..., D]`` -> argmax token ids ``[..., K]``."""
        return argmax_last(self.decode(latents))

    def decode_states(self, latents: Tensor) -> Tensor:
        """``latents[..., D]`` -> per-position decoder states ``[..., K, S]``.

        With :meth:`tokens_from_states` this splits :meth:`decode_tokens` into a shared part and a
        per-position part, so that callers can decode only the candidates and positions they need
        (the batch temperature sampler decodes the next position only for candidates whose prefix
        can still repeat). Contract: ``tokens_from_states(decode_states(z)[..., k, :])`` equals
        ``decode_tokens(z)[..., k]``. The default state is the decoded id itself (``S = 1``); a
        codec overrides both methods when its per-position work is worth skipping.
        """
        return self.decode_tokens(latents).unsqueeze(-1)

    def tokens_from_states(self, states: Tensor) -> Tensor:
        """Per-position states ``[..., S]`` from :meth:`decode_states` -> token ids ``[...]``."""
        return states[..., 0].long()

    def forward(self, tokens: Tensor) -> dict[str, Tensor]:
        return self.loss(tokens)


class GenerativeHead(Component):
    """Samples the next chunk's latent given the backbone's hidden state.

    Shaped like MAR's diffusion-loss head: ``loss`` and ``sample`` are the whole surface.
    ``hidden_size`` and ``latent_size`` come from the host model.
    """

    kind: ClassVar[str] = "head"
    context_fields: ClassVar[tuple[str, ...]] = ("hidden_size", "latent_size")

    def __init__(self, config: ConfigModel, *, hidden_size: int, latent_size: int) -> None:
        super().__init__(config)
        if hidden_size < 1 or latent_size < 1:
            raise ValueError(
                f"hidden_size and latent_size must be positive, got {hidden_size}, {latent_size}"
            )
        self.hidden_size = int(hidden_size)
        self.latent_size = int(latent_size)

    @abstractmethod
    def loss(self, hidden: Tensor, target: LatentPosterior) -> Tensor:
        """``hidden[N, H]`` and the codec posterior ``[N, D]`` of the true chunk -> loss ``[N]``."""

    @abstractmethod
    def sample(
        self, hidden: Tensor, num_samples: int = 1, generator: torch.Generator | None = None
    ) -> Tensor:
        """``hidden[N, H]`` -> latents ``[num_samples, N, D]``."""

    @property
    def network_calls_per_sample(self) -> int:
        """How many network evaluations one ``sample`` call makes (sampling cost)."""
        return 1

    def check_hidden(self, hidden: Tensor) -> int:
        """Validate ``hidden[N, H]`` and return N (heads call this at the top of loss/sample)."""
        if hidden.dim() != 2 or hidden.shape[1] != self.hidden_size:
            raise ValueError(
                f"hidden must be [N, {self.hidden_size}] (flatten batch and positions first), "
                f"got shape {tuple(hidden.shape)}"
            )
        return int(hidden.shape[0])

    def forward(self, hidden: Tensor, target: LatentPosterior) -> Tensor:
        return self.loss(hidden, target)
