"""Context-free baselines for the quality sweep: what a model scores without using its context.

A trained model is only learning language where it beats these. Each baseline predicts from the
*training* split alone and is scored on the same held-out blocks, starts and padding rules as the
models (``calm_core.metrics``):

* ``unigram`` (the AR baseline's floor): every next token drawn independently from the training
  unigram distribution ``p``. Its Brier-n is exact, no sampling: accuracy ``2 prod_k p(y_k)``,
  collision ``(sum_v p(v)^2)^n``.
* ``chunk_sampler`` (CALM's floor): the next chunk is a uniformly drawn training chunk. Brier-n
  (on the first n tokens of the chunk, as CALM's K >= 4 estimator scores it) is exact from prefix
  counts. Its energy loss (a Monte-Carlo estimate with the library's ``energy_loss``, N model
  samples = posterior draws of random training chunks, M draws of the target's posterior) is the
  loss a head reaches by learning the distribution of chunks but nothing about the context.
* ``first_token_oracle`` (energy loss only): the same sampler restricted to training chunks that
  start with the target's true first token (all chunks when none does): how much a perfect
  prediction of one token of the four is worth in energy loss under this codec.

What is unusual: these are measurements of the *data and codec*, not of a model, so they are
computed once per quality run (phase ``baselines``) and printed beside every snapshot.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from calm_core.metrics.brier import ngram_valid
from calm_heads.energy_score import energy_loss
from torch import Tensor

__all__ = ["chunk_sampler_brier", "chunk_sampler_energy", "unigram_brier"]

MAX_N = 4


def _mean_valid(scores: Tensor, valid: Tensor) -> list[float]:
    """Per-order mean over the valid entries of ``scores [..., n]``."""
    s = (scores.double() * valid).sum(dim=tuple(range(scores.dim() - 1)))
    c = valid.sum(dim=tuple(range(valid.dim() - 1))).clamp_min(1)
    return [float(x) for x in s / c]


def unigram_brier(train_tokens: np.ndarray, blocks: Tensor, pad_id: int | None) -> list[float]:
    """Exact Brier-1..4 of the training-unigram predictor on ``blocks [n, T]`` (the AR start set:
    every ``i = 0 .. T-1-4``, targets ``i+1 .. i+4``)."""
    counts = np.bincount(train_tokens.astype(np.int64), minlength=int(blocks.max()) + 1)
    p = torch.from_numpy(counts / counts.sum())
    collision = float((p * p).sum())
    S = blocks.shape[1] - MAX_N
    targets = blocks.unfold(1, MAX_N, 1)[:, 1 : S + 1]  # [n, S, 4]
    accuracy = 2.0 * p[targets].cumprod(dim=-1)
    scores = accuracy - collision ** torch.arange(1, MAX_N + 1, dtype=torch.float64)
    return _mean_valid(scores, ngram_valid(targets, pad_id, MAX_N))


def _prefix_codes(chunks: np.ndarray, n: int, base: int) -> np.ndarray:
    code = np.zeros(len(chunks), dtype=np.int64)
    for k in range(n):
        code = code * base + chunks[:, k]
    return code


def chunk_sampler_brier(
    train_chunks: np.ndarray, targets: np.ndarray, pad_id: int | None, vocab: int
) -> list[float]:
    """Exact Brier-1..4 of "the next chunk is a uniform training chunk" on target chunks
    ``[P, K]`` (K >= 4): prefix probabilities from counts of the training chunks."""
    out_scores = np.zeros((len(targets), MAX_N))
    for n in range(1, MAX_N + 1):
        codes, counts = np.unique(_prefix_codes(train_chunks, n, vocab), return_counts=True)
        q = counts / counts.sum()
        tcode = _prefix_codes(targets, n, vocab)
        pos = np.clip(np.searchsorted(codes, tcode), 0, len(codes) - 1)
        p_target = np.where(codes[pos] == tcode, q[pos], 0.0)
        out_scores[:, n - 1] = 2.0 * p_target - float((q * q).sum())
    valid = ngram_valid(torch.from_numpy(targets), pad_id, MAX_N)
    return _mean_valid(torch.from_numpy(out_scores), valid)


@torch.no_grad()
def chunk_sampler_energy(
    codec: Any,
    train_chunks: np.ndarray,
    targets: np.ndarray,
    *,
    first_token_oracle: bool = False,
    num_samples: int = 8,
    num_target_samples: int = 100,
    seed: int = 0,
) -> float:
    """Mean energy loss of the chunk sampler (or the first-token oracle) on target chunks
    ``[P, K]``, with the codec's posteriors on both sides."""
    rng = np.random.default_rng(seed)
    P = len(targets)
    if first_token_oracle:
        order = np.argsort(train_chunks[:, 0], kind="stable")
        firsts = train_chunks[order, 0]
        lo = np.searchsorted(firsts, targets[:, 0], side="left")
        hi = np.searchsorted(firsts, targets[:, 0], side="right")
        unseen = hi == lo  # a first token never seen in training: fall back to all chunks
        lo[unseen], hi[unseen] = 0, len(order)
        pick = lo[None, :] + (rng.random((num_samples, P)) * (hi - lo)[None, :]).astype(np.int64)
        idx = order[pick]
    else:
        idx = rng.integers(0, len(train_chunks), size=(num_samples, P))
    gen = torch.Generator().manual_seed(seed)
    post = codec.encode(torch.from_numpy(train_chunks[idx.reshape(-1)]).reshape(1, -1))
    mean, std = post.mean.reshape(num_samples, P, -1), post.std.reshape(num_samples, P, -1)
    samples = mean + std * torch.randn(mean.shape, generator=gen)
    target = codec.encode(torch.from_numpy(targets).reshape(1, -1))
    loss = energy_loss(
        samples,
        target.mean.reshape(P, -1),
        target.std.reshape(P, -1),
        num_target_samples=num_target_samples,
        generator=gen,
    )
    return float(loss.mean())
