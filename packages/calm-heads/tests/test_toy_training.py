"""Each head learns a conditional 2-D distribution in a few hundred steps.

The toy problem: 4 conditions (fixed random hidden vectors); given condition k the latent is an
equal mixture of two Gaussians (std 0.12) at +-0.6 (cos(k pi/4), sin(k pi/4)). The heads are
trained on codec-style targets: a posterior N(component centre, 0.12^2) for a random component,
so the distribution they should learn is the mixture.

Quality is the energy distance between head samples and true samples, averaged over conditions,
estimated on several independent replicate sets (fixed seeds) so it comes with a standard error.
A trained head must be (a) far below the untrained head, by many standard errors and by 10x, and
(b) small in absolute terms: under a quarter of the distance of a mode-collapsed predictor (a
head that puts all its mass on one of the two components), itself computed here. Measured with
these seeds: energy 0.010, flow 0.000, diffusion 0.036 (+- 0.011: its samples have a heavier
tail), against 0.50 for the collapsed predictor and 0.26-1500 for untrained heads.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from calm_core.interfaces import GenerativeHead, LatentPosterior
from calm_core.registry import heads
from calm_heads.energy_score import energy_distance

H, D, C, SIGMA, RADIUS = 32, 2, 4, 0.12, 0.6
REPS, PER_REP = 8, 64
Z = 4.0


def _problem() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(C, H, generator=gen)
    angle = torch.arange(C) * math.pi / C
    centres = RADIUS * torch.stack([torch.cos(angle), torch.sin(angle)], dim=-1)
    return hidden, centres


def _signs(n: int, gen: torch.Generator) -> torch.Tensor:
    return (torch.randint(0, 2, (n, 1), generator=gen) * 2 - 1).float()


def _batch(
    n: int, hidden: torch.Tensor, centres: torch.Tensor, gen: torch.Generator
) -> tuple[torch.Tensor, LatentPosterior]:
    k = torch.randint(0, C, (n,), generator=gen)
    mean = _signs(n, gen) * centres[k]
    return hidden[k], LatentPosterior(mean, torch.full((n, D), SIGMA))


def _true_samples(k: int, n: int, centres: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return _signs(n, gen) * centres[k] + SIGMA * torch.randn(n, D, generator=gen)


def _mean_se(per_rep: torch.Tensor) -> tuple[float, float]:
    return float(per_rep.mean()), float(per_rep.std() / math.sqrt(per_rep.numel()))


def _distance_to_truth(head: GenerativeHead) -> tuple[float, float]:
    hidden, centres = _problem()
    gen = torch.Generator().manual_seed(123)
    per_rep = torch.zeros(REPS)
    for k in range(C):
        cond = hidden[k : k + 1].expand(REPS * PER_REP, H).contiguous()
        with torch.no_grad():
            x = head.sample(cond, 1, generator=gen)[0]
        y = _true_samples(k, REPS * PER_REP, centres, gen)
        per_rep += energy_distance(x.view(REPS, PER_REP, D), y.view(REPS, PER_REP, D)) / C
    return _mean_se(per_rep)


def _mode_collapse_distance() -> float:
    _, centres = _problem()
    gen = torch.Generator().manual_seed(5)
    total = 0.0
    for k in range(C):
        x = centres[k] + SIGMA * torch.randn(REPS * PER_REP, D, generator=gen)
        y = _true_samples(k, REPS * PER_REP, centres, gen)
        total += float(energy_distance(x.view(REPS, PER_REP, D), y.view(REPS, PER_REP, D)).mean())
    return total / C


# (head, config, optimiser steps, learning rate, positions per batch)
CASES: list[tuple[str, dict[str, Any], int, float, int]] = [
    ("energy", {"num_blocks": 2, "noise_size": 8, "num_target_samples": 32}, 200, 3e-3, 128),
    ("flow", {"num_blocks": 2, "steps": 5, "num_target_samples": 4}, 200, 3e-3, 128),
    # 100 training steps sampled without respacing: with a few hundred updates the tiny denoiser
    # is not yet accurate at the last, near-pure-noise timesteps, and coarse respaced steps
    # amplify that error (the respaced sampler itself is checked with an exact denoiser).
    (
        "diffusion",
        {"num_blocks": 2, "train_steps": 100, "sampling_steps": 100, "num_target_samples": 8},
        400,
        3e-3,
        128,
    ),
]


@pytest.mark.parametrize(
    ("name", "config", "steps", "lr", "batch"), CASES, ids=[c[0] for c in CASES]
)
def test_head_learns_conditional_mixture(
    name: str, config: dict[str, Any], steps: int, lr: float, batch: int
) -> None:
    torch.manual_seed(0)
    head = heads.build({"name": name, "config": config}, hidden_size=H, latent_size=D)
    untrained, se_untrained = _distance_to_truth(head)
    hidden, centres = _problem()
    gen = torch.Generator().manual_seed(1)
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    for _ in range(steps):
        h, target = _batch(batch, hidden, centres, gen)
        loss = head.loss(h, target).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    trained, se_trained = _distance_to_truth(head)
    collapse = _mode_collapse_distance()
    margin = Z * math.hypot(se_trained, se_untrained)
    assert trained < untrained - margin, (trained, untrained, margin)
    assert trained < 0.1 * untrained, (trained, untrained)
    assert trained + Z * se_trained < 0.25 * collapse, (trained, se_trained, collapse)


def test_respaced_diffusion_sampler_recovers_gaussian_with_exact_denoiser() -> None:
    """With the analytic epsilon of N(0, s^2 I) data the sampler reproduces N(0, s^2 I)."""
    head = heads.build(
        {"name": "diffusion", "config": {"num_blocks": 1, "sampling_steps": 250}},
        hidden_size=4,
        latent_size=D,
    ).double()
    s, n = 0.5, 4000
    abar = head.train_schedule.alphas_cumprod  # type: ignore[union-attr]

    class ExactDenoiser(torch.nn.Module):
        def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
            a = abar[t.long()].to(x.dtype).unsqueeze(-1)
            eps = torch.sqrt(1 - a) * x / (a * s * s + 1 - a)
            return torch.cat([eps, torch.ones_like(eps)], dim=-1)  # variance value v = +1

    head.net = ExactDenoiser()
    gen = torch.Generator().manual_seed(0)
    x = head.sample(torch.zeros(n, 4, dtype=torch.float64), 1, generator=gen)[0]
    se_mean, se_std = s / math.sqrt(n), s / math.sqrt(2 * n)
    assert x.mean(0).abs().max() < Z * se_mean
    assert (x.std(0) - s).abs().max() < Z * se_std + 0.01  # 0.01: respacing discretisation
