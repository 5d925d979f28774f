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

__all__ = [
    "Codec",
    "CodecCost",
    "Component",
    "GenerativeHead",
    "HeadCost",
    "LatentPosterior",
    "weight_count",
]


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


@dataclass(frozen=True)
class HeadCost:
    """What a generative head costs at one backbone position (see :meth:`GenerativeHead.cost`).

    MACs are multiply-accumulates of matrix multiplies (2 FLOPs each); norms, activations and
    the optimizer are not counted.

    Attributes:
        params: weight-matrix entries (biases and norm gains aside, as the paper's Table 1 counts).
        macs_once: MACs per position shared by all samples (e.g. projecting the hidden state).
        macs_per_sample: MACs of one sample drawn by ``sample`` (all its network calls).
        calls_per_sample: network calls per sample; a batch-1 step reads ``params`` per call.
        loss_macs: MACs of one ``loss`` forward at one position, all its samples included.
        loss_flops: FLOPs of that loss outside matrix multiplies worth counting (the energy
            score's pairwise distances); 0 if none.
        exact: False when the MACs are :meth:`GenerativeHead.cost`'s default estimate.
    """

    params: int
    macs_once: int
    macs_per_sample: int
    loss_macs: int
    calls_per_sample: int = 1
    loss_flops: int = 0
    exact: bool = True


@dataclass(frozen=True)
class CodecCost:
    """What a codec costs per chunk of K tokens (see :meth:`Codec.cost`); MACs as in
    :class:`HeadCost`.

    Attributes:
        params: weight-matrix entries, tied matrices counted once.
        encoder_macs: MACs of encoding one chunk to its posterior.
        decoder_macs: MACs of decoding one latent to the chunk's ``[K, V]`` logits.
        decoder_params: weight entries one decode reads (each once), output matrix included.
        exact: False when the numbers are :meth:`Codec.cost`'s default estimate.
    """

    params: int
    encoder_macs: int
    decoder_macs: int
    decoder_params: int
    exact: bool = True


def weight_count(module: nn.Module) -> int:
    """Entries of a module's weight matrices (parameters of 2 or more dims), shared ones once."""
    return sum(p.numel() for p in module.parameters() if p.dim() >= 2)


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

    def cost(self) -> CodecCost:
        """Parameters and MACs per chunk, for :mod:`calm_core.costs` (FLOPs, MFU, weights read).

        Optional: this default counts ``params`` from the module and *estimates* the rest as if
        each of the K tokens met every weight once in the encoder and again in the decoder
        (``K * params`` MACs each way; ``decoder_params = params``), which overstates a codec
        whose encoder and decoder split the weights; ``exact`` is False. Override it with the
        codec's own arithmetic (it may run on a module built on the ``meta`` device).
        """
        params = weight_count(self)
        macs = self.chunk_size * params
        return CodecCost(params, macs, macs, params, exact=False)

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

    def cost(self, num_samples: int | None = None) -> HeadCost:
        """Parameters and MACs at one position, for :mod:`calm_core.costs`.

        Args:
            num_samples: the samples (or network calls) the training loss makes per position;
                None: the head's own setting.

        Optional: this default counts ``params`` from the module and *estimates* the MACs as
        every weight used once per network call: ``macs_per_sample = params *
        network_calls_per_sample`` and ``loss_macs = params * (num_samples or 1)``, nothing
        shared across samples and no non-matmul loss term; ``exact`` is False. Override it with
        the head's own arithmetic (it may run on a module built on the ``meta`` device).
        """
        params = weight_count(self)
        calls = self.network_calls_per_sample
        return HeadCost(
            params=params,
            macs_once=0,
            macs_per_sample=params * calls,
            loss_macs=params * (num_samples or 1),
            calls_per_sample=calls,
            exact=False,
        )

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
