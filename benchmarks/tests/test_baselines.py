"""Context-free baselines of the quality sweep (benchmarks/baselines.py): exact Brier-n values on
hand-computed cases, and the energy-loss ordering sampler > first-token oracle."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from calm_core.interfaces import LatentPosterior

from benchmarks.baselines import (
    chunk_sampler_brier,
    chunk_sampler_energy,
    unigram_brier,
)


def test_unigram_brier_is_exact() -> None:
    # p = (1/2, 1/2): every n-gram has probability 2^-n and the collision is 2^-n, so
    # Brier-n = 2 * 2^-n - 2^-n = 2^-n
    train = np.array([0, 0, 1, 1])
    blocks = torch.tensor([[0, 1, 0, 1, 0, 1]])
    assert unigram_brier(train, blocks, pad_id=None) == pytest.approx([0.5, 0.25, 0.125, 0.0625])


def test_unigram_brier_skips_padded_ngrams() -> None:
    # token 2 never appears in training: a 1-gram target 2 scores 0 - collision = -1/2, unless it
    # is padding, in which case it does not count. Starts 0 and 1 have targets 1 and 2.
    train = np.array([0, 1, 0, 1])
    blocks = torch.tensor([[0, 1, 2, 1, 0, 1]])
    assert unigram_brier(train, blocks, pad_id=2)[0] == pytest.approx(0.5)
    assert unigram_brier(train, blocks, pad_id=None)[0] == pytest.approx((0.5 - 0.5) / 2)


def test_chunk_sampler_brier_uses_prefix_frequencies() -> None:
    train = np.array([[1, 2, 3, 4], [1, 2, 3, 5]])
    target = np.array([[1, 2, 3, 4]])
    # n <= 3: the prefix always matches (2*1 - 1); n = 4: 2 * 1/2 - (1/4 + 1/4)
    assert chunk_sampler_brier(train, target, pad_id=None, vocab=8) == pytest.approx(
        [1.0, 1.0, 1.0, 0.5]
    )


class _OneHotCodec:
    """Posterior mean = 10 * one-hot of the chunk's first token (sharp std), for the loss test."""

    def encode(self, tokens: torch.Tensor) -> LatentPosterior:
        chunks = tokens.reshape(-1, 4)
        mean = 10.0 * torch.nn.functional.one_hot(chunks[:, 0], 8).float()
        return LatentPosterior(mean[None], torch.full_like(mean, 0.01)[None])


def test_first_token_oracle_beats_the_sampler() -> None:
    rng = np.random.default_rng(0)
    train = rng.integers(0, 8, size=(400, 4))
    targets = rng.integers(0, 8, size=(50, 4))
    codec = _OneHotCodec()
    marginal = chunk_sampler_energy(codec, train, targets)
    oracle = chunk_sampler_energy(codec, train, targets, first_token_oracle=True)
    # the latent depends only on the first token, so the oracle is (nearly) a perfect predictor:
    # its loss is E||Y - Y'|| of the target posterior alone (~0.01 * sqrt(2 * 8))
    assert oracle == pytest.approx(0.01 * np.sqrt(2 * 8), rel=0.2)
    # the sampler is wrong 7 times in 8: E||X - Y|| ~ 10 sqrt(2) * 7/8, spread the same
    assert marginal == pytest.approx(10 * np.sqrt(2) * 7 / 8, rel=0.15)
