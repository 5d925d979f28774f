"""How well a codec reconstructs token chunks, for any codec through the :class:`Codec` interface.

The report decodes the posterior mean of every chunk and counts argmax hits per token and per whole
chunk; then it adds Gaussian noise of a few standard deviations to the mean latent and counts again
(robustness: CALM's head never predicts the latent exactly); finally it counts latent dimensions
whose mean KL to N(0, 1) is below the floor ("collapsed": they carry almost no information).

Unusual: the noise comes from a CPU generator seeded per report and is moved to the codec's device,
so a report is reproducible and identical across devices. Padding tokens can be excluded; a chunk
made only of padding is skipped entirely.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from calm_core.interfaces import Codec

__all__ = ["DEFAULT_NOISE_STDS", "ReconstructionReport", "reconstruction_report"]

#: latent noise levels of the report (std of the Gaussian added to the mean latent)
DEFAULT_NOISE_STDS: tuple[float, ...] = (0.1, 0.3, 0.5)


@dataclass(frozen=True)
class ReconstructionReport:
    """Reconstruction quality of a codec on a token stream.

    Attributes:
        token_accuracy: fraction of (non-padding) tokens decoded correctly from the mean latent.
        chunk_accuracy: fraction of chunks whose K tokens are all decoded correctly.
        noisy_token_accuracy: noise std -> token accuracy with that noise added to the latent.
        noisy_chunk_accuracy: noise std -> chunk accuracy under that noise.
        collapsed_dims: latent dimensions whose mean KL(q || N(0, 1)) is below ``kl_floor``.
        latent_size: D.
        kl_floor: the floor used for ``collapsed_dims``.
        mean_kl: mean over chunks of the KL summed over dimensions (nats).
        num_tokens: tokens scored.
        num_chunks: chunks scored.
    """

    token_accuracy: float
    chunk_accuracy: float
    noisy_token_accuracy: dict[float, float]
    noisy_chunk_accuracy: dict[float, float]
    collapsed_dims: int
    latent_size: int
    kl_floor: float
    mean_kl: float
    num_tokens: int
    num_chunks: int
    kl_per_dim: list[float] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (noise stds become string keys such as ``"0.3"``)."""
        return {
            "token_accuracy": self.token_accuracy,
            "chunk_accuracy": self.chunk_accuracy,
            "noisy_token_accuracy": {str(k): v for k, v in self.noisy_token_accuracy.items()},
            "noisy_chunk_accuracy": {str(k): v for k, v in self.noisy_chunk_accuracy.items()},
            "collapsed_dims": self.collapsed_dims,
            "latent_size": self.latent_size,
            "kl_floor": self.kl_floor,
            "mean_kl": self.mean_kl,
            "num_tokens": self.num_tokens,
            "num_chunks": self.num_chunks,
        }

    def flat_metrics(self) -> dict[str, float]:
        """Flat scalar metrics for logs (``noisy_token_accuracy@0.3`` and so on)."""
        out: dict[str, float] = {
            "token_accuracy": self.token_accuracy,
            "chunk_accuracy": self.chunk_accuracy,
            "collapsed_dims": float(self.collapsed_dims),
            "mean_kl": self.mean_kl,
        }
        for s, v in self.noisy_token_accuracy.items():
            out[f"noisy_token_accuracy@{s}"] = v
        for s, v in self.noisy_chunk_accuracy.items():
            out[f"noisy_chunk_accuracy@{s}"] = v
        return out

    def format(self) -> str:
        """A short human-readable report (percentages)."""
        lines = [
            f"token accuracy        {100 * self.token_accuracy:8.3f}%  ({self.num_tokens} tokens)",
            f"chunk accuracy        {100 * self.chunk_accuracy:8.3f}%  ({self.num_chunks} chunks)",
        ]
        for s in sorted(self.noisy_token_accuracy):
            lines.append(
                f"noise std {s:<4g}: token {100 * self.noisy_token_accuracy[s]:8.3f}%, "
                f"chunk {100 * self.noisy_chunk_accuracy[s]:8.3f}%"
            )
        lines.append(
            f"collapsed latent dims {self.collapsed_dims} of {self.latent_size} "
            f"(mean KL < {self.kl_floor:g}); mean KL per chunk {self.mean_kl:.2f} nats"
        )
        return "\n".join(lines)


def _as_chunks(tokens: Tensor | np.ndarray[Any, Any], k: int) -> Tensor:
    t = (
        torch.from_numpy(np.asarray(tokens, dtype=np.int64))
        if isinstance(tokens, np.ndarray)
        else tokens
    )
    if t.dtype.is_floating_point or t.dtype == torch.bool:
        raise TypeError(f"tokens must be integer ids, got dtype {t.dtype}")
    if t.numel() % k != 0 or (t.dim() > 1 and t.shape[-1] % k != 0):
        raise ValueError(
            f"token count {tuple(t.shape)} is not a multiple of the codec's chunk size K={k}; "
            "use a packed split (documents padded to a multiple of K)"
        )
    return t.reshape(-1, k).long()


@torch.no_grad()
def reconstruction_report(
    codec: Codec,
    tokens: Tensor | np.ndarray[Any, Any],
    *,
    noise_stds: Sequence[float] = DEFAULT_NOISE_STDS,
    ignore_id: int | None = None,
    kl_floor: float | None = None,
    batch_chunks: int = 4096,
    max_chunks: int | None = None,
    seed: int = 0,
) -> ReconstructionReport:
    """Score a codec's reconstruction of ``tokens`` (any shape whose size is a multiple of K).

    Args:
        codec: any registered codec; it is put in eval mode for the report and restored after.
        tokens: token ids, e.g. a packed split's 1-D token stream.
        noise_stds: noise levels for the noisy accuracies.
        ignore_id: a token id (padding) not to score; all-padding chunks are skipped.
        kl_floor: threshold for collapsed dims; default the codec's ``config.kl_floor``, else 0.5.
        batch_chunks: chunks per forward pass.
        max_chunks: score only the first ``max_chunks`` chunks.
        seed: seed of the latent noise.

    Raises:
        ValueError: no chunk to score, a length that is not a multiple of K, or a noise level
            that is negative or not finite.
    """
    bad = [s for s in noise_stds if not (math.isfinite(float(s)) and float(s) >= 0)]
    if bad:
        raise ValueError(f"noise stds must be finite and >= 0, got {bad}")
    K = codec.chunk_size
    chunks = _as_chunks(tokens, K)
    if max_chunks is not None:
        chunks = chunks[:max_chunks]
    if ignore_id is not None:
        chunks = chunks[(chunks != ignore_id).any(-1)]
    if chunks.shape[0] == 0:
        raise ValueError("no chunks to score: the token stream is empty (or only padding)")
    if kl_floor is None:
        kl_floor = float(getattr(getattr(codec, "config", None), "kl_floor", 0.5))
    param = next(iter(codec.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    noise_gen = torch.Generator().manual_seed(seed)
    stds = [float(s) for s in noise_stds]
    hits = {s: 0 for s in [0.0, *stds]}
    chunk_hits = dict(hits)
    n_tokens = 0
    kl_sum: Tensor | None = None
    was_training = codec.training
    codec.eval()
    try:
        for start in range(0, chunks.shape[0], batch_chunks):
            batch = chunks[start : start + batch_chunks].to(device)
            scored = (
                (batch != ignore_id)
                if ignore_id is not None
                else torch.ones_like(batch, dtype=torch.bool)
            )
            n_tokens += int(scored.sum())
            post = codec.encode(batch.reshape(1, -1))
            mean = post.mean.reshape(-1, post.latent_size)
            kl = post.kl_per_dim().reshape(-1, post.latent_size).double().sum(0)
            kl_sum = kl if kl_sum is None else kl_sum + kl
            for s in hits:
                z = mean
                if s > 0:
                    noise = torch.randn(mean.shape, generator=noise_gen, dtype=mean.dtype)
                    z = mean + s * noise.to(device)
                ok = (codec.decode_tokens(z) == batch) | ~scored
                hits[s] += int((ok & scored).sum())
                chunk_hits[s] += int(ok.all(-1).sum())
    finally:
        codec.train(was_training)
    assert kl_sum is not None
    n_chunks = int(chunks.shape[0])
    kl_mean = (kl_sum / n_chunks).float()
    return ReconstructionReport(
        token_accuracy=hits[0.0] / max(n_tokens, 1),
        chunk_accuracy=chunk_hits[0.0] / n_chunks,
        noisy_token_accuracy={s: hits[s] / max(n_tokens, 1) for s in stds},
        noisy_chunk_accuracy={s: chunk_hits[s] / n_chunks for s in stds},
        collapsed_dims=int((kl_mean < kl_floor).sum()),
        latent_size=int(kl_mean.numel()),
        kl_floor=kl_floor,
        mean_kl=float(kl_mean.sum()),
        num_tokens=n_tokens,
        num_chunks=n_chunks,
        kl_per_dim=[float(v) for v in kl_mean],
    )
