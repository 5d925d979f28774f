"""The robust K-chunk autoencoder (SPEC.md §2), registered as codec ``autoencoder``.

Context-free: every chunk of K tokens is encoded on its own, so a batch is simply a pile of chunks
and training is a handful of large matmuls (no attention, no Python loop over K or positions).

Layout, per chunk: embed K tokens -> residual pre-norm SwiGLU FFN stage on each token -> concat
(K*H) -> linear to H -> FFN stage on the chunk vector -> RMSNorm -> linear to 2D (mean, log std).
The decoder mirrors it and produces logits with the (tied) input embedding.

What is unusual:

* The training draws (token mask, posterior noise, latent dropout mask) are made in one place
  (:meth:`ChunkAutoencoder.draw`) from an optional ``torch.Generator`` and can be injected as a
  :class:`TrainingDraws`, so the training objective is reproducible and testable against recorded
  reference draws.
* ``encode`` never samples: it returns the posterior. Only :meth:`loss` samples (training).
* The deterministic variant (``variational=False``) is a config choice: the latent is the mean,
  with no KL term and no latent dropout; its posterior std is a fixed tiny constant.
* ``mask_token="dedicated"`` adds one embedding row used only as the mask input; it is never a
  decoding target (the logits use the first ``vocab_size`` rows only). The reference replaces
  masked tokens with id 0 (``mask_token=0``, the default).
* The reconstruction loss never materialises log-probabilities: it is the fused linear +
  cross-entropy of :mod:`calm_codecs.fused_ce`, with one logits buffer reused across steps.
* The reference rounds activations to bfloat16 in its train-mode encoder; that is a bug and is
  not replicated: train and eval modes run the same arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Self

import torch
import torch.nn.functional as F
from calm_core.config import ConfigModel
from calm_core.interfaces import Codec, CodecCost, LatentPosterior, weight_count
from calm_core.presets import BENCH_CODEC
from calm_core.reductions import argmax_last
from pydantic import Field, model_validator
from torch import Tensor, nn

from calm_codecs.fused_ce import LogitsWorkspace, linear_cross_entropy

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["AutoencoderConfig", "ChunkAutoencoder", "FFNStack", "TrainingDraws"]

#: posterior std reported by the deterministic variant (it has no learned variance)
DETERMINISTIC_STD = 1e-4
#: up to this many decoded positions, argmax ids come from ``E @ h^T`` (see ``_argmax_ids``)
FEW_ROWS = 64


class AutoencoderConfig(ConfigModel):
    """Shape and training objective of :class:`ChunkAutoencoder`.

    The defaults are the benchmark ("bench") shape of BENCHMARKS.md
    (``calm_core.presets.BENCH_CODEC``) with the paper's objective; the tuned training recipe
    lives in ``calm_core.recipes.RECIPES``.
    """

    vocab_size: int = Field(
        BENCH_CODEC["vocab_size"], ge=2, description="V, token vocabulary size."
    )
    chunk_size: int = Field(BENCH_CODEC["chunk_size"], ge=1, description="K, tokens per chunk.")
    latent_size: int = Field(
        BENCH_CODEC["latent_size"], ge=1, description="D, latent vector size per chunk."
    )
    hidden_size: int = Field(
        BENCH_CODEC["hidden_size"], ge=1, description="Width H of every layer."
    )
    intermediate_size: int = Field(
        BENCH_CODEC["intermediate_size"], ge=1, description="Inner size of each SwiGLU FFN."
    )
    ffn_layers_per_stage: int = Field(
        1,
        ge=0,
        description="Residual FFN layers in each of the four stages (encoder per-token, encoder "
        "per-chunk, decoder per-chunk, decoder per-token).",
    )
    rms_norm_eps: float = Field(1e-6, gt=0, description="Epsilon of every RMSNorm.")
    variational: bool = Field(
        True,
        description="False gives the deterministic autoencoder: latent = mean, no KL term, no "
        "latent dropout.",
    )
    kl_weight: float = Field(1e-3, ge=0, description="Weight w of the clipped KL term.")
    kl_floor: float = Field(
        0.5,
        ge=0,
        description="Per-dimension KL floor (free bits): dims whose KL is below it get no "
        "KL gradient.",
    )
    token_mask_rate: float = Field(
        0.15, ge=0, lt=1, description="Probability of replacing each input token (training only)."
    )
    mask_token: Annotated[int, Field(ge=0)] | Literal["dedicated"] = Field(
        0,
        description="Replacement id for masked input tokens: an id in [0, vocab_size) (the "
        "reference uses 0), or 'dedicated' for an extra embedding row used only as the mask.",
    )
    latent_dropout: float = Field(
        0.15, ge=0, lt=1, description="Dropout probability on the sampled latent (training only)."
    )
    random_token_rate: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Probability of replacing each training token, input and target alike, by a "
        "uniformly random id (training only). The codec's target is the identity, so random ids "
        "are valid data: they train every vocabulary row, including tokens that are rare or "
        "absent in the training text (0 = off, the reference behaviour).",
    )

    @model_validator(mode="after")
    def _check_mask_token(self) -> Self:
        if isinstance(self.mask_token, int) and not 0 <= self.mask_token < self.vocab_size:
            raise ValueError(
                f"mask_token {self.mask_token} is outside the vocabulary [0, {self.vocab_size}); "
                "use an id in range or 'dedicated'"
            )
        return self


@dataclass(frozen=True)
class TrainingDraws:
    """The random draws of one training step, for N chunks.

    Attributes:
        token_keep: bool ``[N, K]``; False marks an input token replaced by the mask token.
        eps: ``[N, D]`` standard normal noise for the posterior sample (unused if deterministic).
        latent_keep: bool ``[N, D]`` dropout mask of the sampled latent (True = kept).
        random_ids: ``[N, K]`` ids that replace the clean tokens (input and target) where they
            are >= 0; ``None`` (or all -1) replaces nothing.
    """

    token_keep: Tensor
    eps: Tensor
    latent_keep: Tensor
    random_ids: Tensor | None = None


class RMSNorm(nn.Module):
    """``x / sqrt(mean(x^2) + eps) * gain``, computed in float32 (no bias)."""

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size))

    def forward(self, x: Tensor) -> Tensor:
        y = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
        out: Tensor = self.weight * y.to(x.dtype)
        return out


class FFNLayer(nn.Module):
    """Residual pre-norm SwiGLU: ``x + down(silu(gate(n)) * up(n))`` with ``n = RMSNorm(x)``.

    Gate and up projections are one fused ``[2I, H]`` matrix (gate rows first): one matmul.
    """

    def __init__(self, hidden: int, inner: int, eps: float) -> None:
        super().__init__()
        self.norm = RMSNorm(hidden, eps)
        self.gate_up = nn.Linear(hidden, 2 * inner, bias=False)
        self.down = nn.Linear(inner, hidden, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up(self.norm(x)).chunk(2, dim=-1)
        out: Tensor = x + self.down(F.silu(gate) * up)
        return out


class FFNStack(nn.Sequential):
    """``n`` residual SwiGLU layers applied to the last dimension."""

    def __init__(self, n: int, hidden: int, inner: int, eps: float) -> None:
        super().__init__(*(FFNLayer(hidden, inner, eps) for _ in range(n)))


#: inputs of at least this many ids run the encoder's token stage once per distinct id ...
UNIQUE_MIN_TOKENS = 512
#: ... when the distinct ids are at most this fraction of the positions
UNIQUE_MAX_FRACTION = 0.8


class ChunkAutoencoder(Codec):
    """Robust chunk autoencoder: K tokens <-> one D-dimensional Gaussian latent.

    Args:
        config: an :class:`AutoencoderConfig`.
    """

    config_class: ClassVar[type[ConfigModel]] = AutoencoderConfig
    config: AutoencoderConfig

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__(config)
        c = config
        H, K, D, eps = c.hidden_size, c.chunk_size, c.latent_size, c.rms_norm_eps
        n, inner = c.ffn_layers_per_stage, c.intermediate_size
        self.embed = nn.Embedding(c.vocab_size + (c.mask_token == "dedicated"), H)
        self.enc_token_ffn = FFNStack(n, H, inner, eps)
        self.enc_squeeze = nn.Linear(K * H, H)
        self.enc_chunk_ffn = FFNStack(n, H, inner, eps)
        self.enc_norm = RMSNorm(H, eps)
        self.to_latent = nn.Linear(H, 2 * D if c.variational else D)
        self.from_latent = nn.Linear(D, H)
        self.dec_chunk_ffn = FFNStack(n, H, inner, eps)
        self.dec_expand = nn.Linear(H, K * H)
        self.dec_token_ffn = FFNStack(n, H, inner, eps)
        self.dec_norm = RMSNorm(H, eps)
        # the training loss's logits buffer, reused across steps (not state: never saved)
        self._logits_workspace = LogitsWorkspace()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Small-normal init (std 0.02, zero biases, unit norm gains), like the reference."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)

    # ------------------------------------------------------------------------------------ sizes
    @property
    def chunk_size(self) -> int:
        return self.config.chunk_size

    @property
    def latent_size(self) -> int:
        return self.config.latent_size

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def mask_token_id(self) -> int:
        """The id fed in place of a masked token (``vocab_size`` for a dedicated mask row)."""
        m = self.config.mask_token
        return self.config.vocab_size if m == "dedicated" else int(m)

    # ---------------------------------------------------------------------------------- encoder
    def _check_tokens(self, tokens: Tensor) -> None:
        if tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
            raise TypeError(f"tokens must be integer ids, got dtype {tokens.dtype}")
        if tokens.dim() < 1 or tokens.shape[-1] % self.chunk_size != 0:
            raise ValueError(
                f"token length {tokens.shape[-1] if tokens.dim() else 0} is not a multiple of the "
                f"chunk size K={self.chunk_size}; pad sequences to a multiple of {self.chunk_size}"
            )
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.vocab_size):
            raise ValueError(
                f"token ids must lie in [0, {self.vocab_size}), got range "
                f"[{int(tokens.min())}, {int(tokens.max())}]; is the codec's vocab_size right?"
            )

    def token_features(self, tokens: Tensor) -> Tensor:
        """The encoder's per-token stage ``enc_token_ffn(embed(id))``: ``[..., T] -> [..., T, H]``.

        It sees one token and no context, so it is a function of the id alone: on large inputs it
        runs once per *distinct* id and is gathered back (identical values; the gradients of the
        repeats are summed by the gather's backward, in a fixed order). Text repeats ids heavily,
        so this removes most of the stage's matmuls; below ``UNIQUE_MIN_TOKENS`` ids, or with few
        repeats, it runs per position. CPU only: on an accelerator the data-dependent size of
        ``unique`` forces a host synchronisation every call, for a saving its matmul throughput
        makes small.
        """
        if tokens.device.type == "cpu" and tokens.numel() >= UNIQUE_MIN_TOKENS:
            ids, inverse = torch.unique(tokens, return_inverse=True)
            if ids.numel() <= UNIQUE_MAX_FRACTION * tokens.numel():
                # index_select, not ``[inverse]``: its backward (index_add) sums the repeats in
                # a fixed order, where indexing's (index_put accumulate) is run-to-run random
                feats_u = self.enc_token_ffn(self.embed(ids))
                out: Tensor = feats_u.index_select(0, inverse.flatten())
                return out.reshape(*inverse.shape, out.shape[-1])
        feats: Tensor = self.enc_token_ffn(self.embed(tokens))
        return feats

    def encode_params(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """``tokens[..., L*K]`` -> ``(mean, log_std)``, each ``[..., L, D]`` (no checks)."""
        K, H = self.chunk_size, self.config.hidden_size
        x = self.token_features(tokens)
        x = x.reshape(*tokens.shape[:-1], tokens.shape[-1] // K, K * H)
        x = self.enc_norm(self.enc_chunk_ffn(self.enc_squeeze(x)))
        out = self.to_latent(x)
        if not self.config.variational:
            return out, torch.full_like(out, DETERMINISTIC_STD).log()
        mean, log_std = out.chunk(2, dim=-1)
        return mean, log_std

    def encode(self, tokens: Tensor) -> LatentPosterior:
        """``tokens[B, L*K]`` -> posterior with ``mean``/``std`` ``[B, L, D]``; never samples."""
        self._check_tokens(tokens)
        mean, log_std = self.encode_params(tokens)
        return LatentPosterior(mean, log_std.exp())

    # ---------------------------------------------------------------------------------- decoder
    def decode_states(self, latents: Tensor) -> Tensor:
        """``latents[..., D]`` -> the expanded per-token states ``[..., K, H]`` (before the
        per-token FFN, which with the tied logits is the per-position part of decoding)."""
        if latents.shape[-1] != self.latent_size:
            raise ValueError(
                f"latents have size {latents.shape[-1]} in the last dimension, but this codec's "
                f"latent size D is {self.latent_size}"
            )
        K, H = self.chunk_size, self.config.hidden_size
        x: Tensor = self.dec_expand(self.dec_chunk_ffn(self.from_latent(latents)))
        return x.reshape(*latents.shape[:-1], K, H)

    def _finish_tokens(self, states: Tensor) -> Tensor:
        return self.dec_norm(self.dec_token_ffn(states))  # type: ignore[no-any-return]

    def _argmax_ids(self, hidden: Tensor) -> Tensor:
        """Final token states ``[..., H]`` -> argmax ids ``[...]`` of their tied logits.

        For a few rows (a generation step decodes K per row) the logits are computed as
        ``E @ h^T``, ``[V, rows]``: a GEMM with few output rows packs the whole ``[V, H]`` matrix
        before multiplying, while this layout streams it once, which matters when ``V`` is large.
        """
        weight = self.output_embedding()
        rows = hidden.reshape(-1, hidden.shape[-1])
        if rows.shape[0] > FEW_ROWS:
            return argmax_last(F.linear(hidden, weight))
        return torch.mm(weight, rows.t()).argmax(dim=0).reshape(hidden.shape[:-1])

    def decode_tokens(self, latents: Tensor) -> Tensor:
        """``latents[..., D]`` -> argmax token ids ``[..., K]`` (no ``[..., K, V]`` logits)."""
        return self._argmax_ids(self.decode_hidden(latents))

    def tokens_from_states(self, states: Tensor) -> Tensor:
        """Per-position states ``[..., H]`` -> argmax ids ``[...]``."""
        return self._argmax_ids(self._finish_tokens(states))

    def decode_hidden(self, latents: Tensor) -> Tensor:
        """``latents[..., D]`` -> final normalised token states ``[..., K, H]``."""
        return self._finish_tokens(self.decode_states(latents))

    def output_embedding(self) -> Tensor:
        """The tied output matrix ``[V, H]`` (the input embedding without any mask row)."""
        return self.embed.weight[: self.vocab_size]

    def decode(self, latents: Tensor) -> Tensor:
        """``latents[..., D]`` -> ``logits[..., K, V]`` (tied embedding, no bias)."""
        return F.linear(self.decode_hidden(latents), self.output_embedding())

    # ---------------------------------------------------------------------------------- training
    def draw(
        self,
        num_chunks: int,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> TrainingDraws:
        """Make the random draws of one training step for ``num_chunks`` chunks."""
        c = self.config
        K, D = c.chunk_size, c.latent_size
        kw: dict[str, Any] = {"generator": generator, "device": device}
        token_keep = torch.rand(num_chunks, K, **kw) >= c.token_mask_rate
        eps = torch.randn(num_chunks, D, dtype=dtype, **kw)
        latent_keep = torch.rand(num_chunks, D, **kw) >= c.latent_dropout
        random_ids = None
        if c.random_token_rate > 0:
            replace = torch.rand(num_chunks, K, **kw) < c.random_token_rate
            ids = torch.randint(0, c.vocab_size, (num_chunks, K), **kw)
            random_ids = torch.where(replace, ids, -1)
        return TrainingDraws(token_keep, eps, latent_keep, random_ids)

    def loss(
        self,
        tokens: Tensor,
        *,
        generator: torch.Generator | None = None,
        draws: TrainingDraws | None = None,
    ) -> dict[str, Tensor]:
        """The training objective on ``tokens[B, L*K]`` (or ``[N, K]`` chunks).

        In training mode some tokens are first replaced by uniformly random ids (input and target,
        ``random_token_rate``), the input tokens are masked, the latent is sampled from the
        posterior and dropped out; in eval mode none of that happens (the posterior mean is
        decoded).

        Args:
            tokens: integer ids whose last dimension is a multiple of K.
            generator: source of the training draws.
            draws: explicit draws (overrides ``generator``), e.g. recorded reference draws.

        Returns:
            ``loss`` (CE summed over the K positions + w * clipped KL), ``ce`` (mean per-token
            cross-entropy), ``kl`` (clipped KL summed over dims, mean over chunks), ``kl_raw``
            (the same without the floor) and ``token_accuracy`` (argmax reconstruction of the
            clean tokens).
        """
        self._check_tokens(tokens)
        K = self.chunk_size
        labels = tokens.reshape(-1, K)
        if self.training and draws is None:
            draws = self.draw(
                labels.shape[0],
                generator=generator,
                device=labels.device,
                dtype=self.embed.weight.dtype,
            )
        if draws is not None and draws.random_ids is not None:
            labels = torch.where(draws.random_ids >= 0, draws.random_ids, labels)
        inputs = labels
        if draws is not None:
            inputs = torch.where(draws.token_keep, labels, labels.new_tensor(self.mask_token_id))
        mean, log_std = self.encode_params(inputs)
        return self.objective(mean.squeeze(-2), log_std.squeeze(-2), labels, draws)

    def objective(
        self, mean: Tensor, log_std: Tensor, labels: Tensor, draws: TrainingDraws | None
    ) -> dict[str, Tensor]:
        """The loss from encoder outputs ``[N, D]`` and clean labels ``[N, K]``.

        With ``draws`` the latent is ``mean + eps * std`` with the dropout mask applied (kept
        elements scaled by ``1/(1-p)``); without, it is the mean.
        """
        c = self.config
        z = mean
        if draws is not None and c.variational:
            z = mean + draws.eps * log_std.exp()
            if c.latent_dropout > 0:
                z = z * draws.latent_keep.to(z.dtype) / (1.0 - c.latent_dropout)
        hidden = self.decode_hidden(z).reshape(-1, self.config.hidden_size)
        ce, hits = linear_cross_entropy(
            hidden, self.output_embedding(), labels.reshape(-1), self._logits_workspace
        )
        if c.variational:
            kl_dim = 0.5 * (mean.square() + (2.0 * log_std).exp() - 1.0 - 2.0 * log_std)
            kl_raw = kl_dim.sum(-1).mean()
            kl = kl_dim.clamp_min(c.kl_floor).sum(-1).mean()
            loss = ce * self.chunk_size + c.kl_weight * kl
        else:
            kl = kl_raw = ce.new_zeros(())
            loss = ce * self.chunk_size
        acc = hits.to(ce.dtype) / labels.numel()
        return {
            "loss": loss,
            "ce": ce.detach(),
            "kl": kl.detach(),
            "kl_raw": kl_raw.detach(),
            "token_accuracy": acc,
        }

    # ------------------------------------------------------------------------------- reference
    def cost(self) -> CodecCost:
        """Exact matmul MACs per chunk: the per-token FFN stages and the logits run at each of
        the K positions, the chunk stages once."""
        c = self.config
        K, H, D, V = c.chunk_size, c.hidden_size, c.latent_size, c.vocab_size
        ffn = c.ffn_layers_per_stage * 3 * H * c.intermediate_size  # gate_up + down
        encoder = K * ffn + K * H * H + ffn + H * self.to_latent.out_features
        decoder_weights = D * H + ffn + H * K * H + ffn  # from_latent, chunk, expand, token
        return CodecCost(
            params=weight_count(self),
            encoder_macs=encoder,
            decoder_macs=decoder_weights + (K - 1) * ffn + K * V * H,
            decoder_params=decoder_weights + V * H,
        )

    @classmethod
    def from_reference(
        cls, state_dict: Mapping[str, Tensor], ref_config: Mapping[str, Any], **context: Any
    ) -> ChunkAutoencoder:
        """Build from the reference implementation's AE weights (keys without the fixture prefix).

        See :mod:`calm_codecs.reference` for the key mapping.
        """
        from calm_codecs.reference import autoencoder_from_reference

        if context:
            raise TypeError(f"a codec takes no context, got {sorted(context)}")
        return autoencoder_from_reference(state_dict, ref_config)

    def to_reference(self) -> dict[str, Tensor]:
        """This codec's weights in the reference implementation's key layout."""
        from calm_codecs.reference import autoencoder_to_reference

        return autoencoder_to_reference(self)
