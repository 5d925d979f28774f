"""The codec reconstruction report, on an analytic codec whose error rates are known exactly.

The "rounding codec" maps token v at position k to latent coordinate k with mean ``v * S``; it
decodes by rounding ``z / S``. Clean decoding is exact; with Gaussian noise of std s a token is
wrong iff ``|noise| > S/2`` (for interior ids), probability ``2 (1 - Phi(S / (2 s)))``.
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
import pytest
import torch
from calm_core.config import ConfigModel
from calm_core.interfaces import Codec, LatentPosterior
from calm_core.metrics.reconstruction import reconstruction_report
from torch import Tensor

S = 1.0
V = 300  # ids far from the edges, so rounding errors never get clipped back into range


class RoundingConfig(ConfigModel):
    kl_floor: float = 0.5


class RoundingCodec(Codec):
    config_class: ClassVar[type[ConfigModel]] = RoundingConfig

    def __init__(self, std: Tensor) -> None:
        super().__init__(RoundingConfig())
        self.register_buffer("post_std", std)
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    @property
    def chunk_size(self) -> int:
        return 2

    @property
    def latent_size(self) -> int:
        return 2

    @property
    def vocab_size(self) -> int:
        return V

    def encode(self, tokens: Tensor) -> LatentPosterior:
        mean = tokens.reshape(*tokens.shape[:-1], -1, 2).float() * S
        return LatentPosterior(mean, self.post_std.expand_as(mean))

    def decode(self, latents: Tensor) -> Tensor:
        ids = (latents / S).round().clamp(0, V - 1).long()
        return torch.nn.functional.one_hot(ids, V).float()

    def loss(self, tokens: Tensor) -> dict[str, Tensor]:
        return {"loss": self.dummy * 0}


def _tokens(n_chunks: int, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(100, 200, (n_chunks * 2,), generator=g)


def test_clean_reconstruction_is_exact_and_noise_matches_theory() -> None:
    codec = RoundingCodec(torch.tensor([1.0, 1.0]))
    n_chunks = 10000
    report = reconstruction_report(
        codec, _tokens(n_chunks), noise_stds=[0.25, 0.5], batch_chunks=3000
    )
    assert report.token_accuracy == 1.0 and report.chunk_accuracy == 1.0
    assert report.num_tokens == 2 * n_chunks and report.num_chunks == n_chunks
    for s in (0.25, 0.5):
        p_err = 2 * (1 - 0.5 * (1 + math.erf(S / (2 * s) / math.sqrt(2))))
        se = math.sqrt(p_err * (1 - p_err) / (2 * n_chunks))
        assert abs((1 - report.noisy_token_accuracy[s]) - p_err) < 5 * se
        p_chunk = (1 - p_err) ** 2  # the two tokens' noises are independent
        se_c = math.sqrt(p_chunk * (1 - p_chunk) / n_chunks)
        assert abs(report.noisy_chunk_accuracy[s] - p_chunk) < 5 * se_c


def test_report_is_reproducible_and_seeded() -> None:
    codec = RoundingCodec(torch.tensor([1.0, 1.0]))
    x = _tokens(500)
    a = reconstruction_report(codec, x, noise_stds=[0.5])
    b = reconstruction_report(codec, x.numpy(), noise_stds=[0.5])
    c = reconstruction_report(codec, x, noise_stds=[0.5], seed=1)
    assert a.noisy_token_accuracy == b.noisy_token_accuracy
    assert a.noisy_token_accuracy != c.noisy_token_accuracy


def test_collapsed_dims_use_the_mean_kl_per_dimension() -> None:
    # dim 0: mean ~ 500, KL huge; dim 1: forced to mean 0 and std 1 -> KL 0 (collapsed)
    codec = RoundingCodec(torch.tensor([1.0, 1.0]))
    x = _tokens(300).reshape(-1, 2)
    x[:, 1] = 0
    report = reconstruction_report(codec, x.reshape(-1), noise_stds=[])
    assert report.collapsed_dims == 1 and report.latent_size == 2
    assert report.kl_per_dim[1] == pytest.approx(0.0, abs=1e-6)
    expected = 0.5 * np.mean((x[:, 0].double().numpy() * S) ** 2)
    assert report.kl_per_dim[0] == pytest.approx(expected, rel=1e-5)
    assert report.mean_kl == pytest.approx(sum(report.kl_per_dim))
    assert reconstruction_report(codec, x, noise_stds=[], kl_floor=1e9).collapsed_dims == 2


def test_padding_is_ignored() -> None:
    codec = RoundingCodec(torch.tensor([1.0, 1.0]))
    x = torch.tensor([5, 6, 7, 0, 0, 0])  # the last chunk is all padding
    report = reconstruction_report(codec, x, noise_stds=[], ignore_id=0)
    assert report.num_chunks == 2 and report.num_tokens == 3


def test_training_mode_is_restored_and_errors_are_clear() -> None:
    codec = RoundingCodec(torch.tensor([1.0, 1.0])).train()
    reconstruction_report(codec, _tokens(4), noise_stds=[0.1])
    assert codec.training
    with pytest.raises(ValueError, match="multiple of the codec's chunk size K=2"):
        reconstruction_report(codec, torch.arange(5), noise_stds=[])
    with pytest.raises(ValueError, match="only padding"):
        reconstruction_report(codec, torch.zeros(4, dtype=torch.long), ignore_id=0)
    with pytest.raises(TypeError, match="integer ids"):
        reconstruction_report(codec, torch.zeros(4), noise_stds=[])
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="noise stds must be finite and >= 0"):
            reconstruction_report(codec, _tokens(4), noise_stds=[0.1, bad])
    report = reconstruction_report(codec, _tokens(3), noise_stds=[0.3])
    d = report.to_dict()
    assert d["noisy_token_accuracy"] == {"0.3": report.noisy_token_accuracy[0.3]}
    assert "noise std 0.3" in report.format()
    assert report.flat_metrics()["noisy_token_accuracy@0.3"] == report.noisy_token_accuracy[0.3]
