"""The mixture energy estimator and the head's behaviour, checked against the formulas of SPEC §5.

Statistical checks use fixed seeds and tolerances of a few standard errors: many independent
estimates are computed at once by repeating one distribution over the position axis.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch
from calm_core.config import ConfigError
from calm_core.interfaces import LatentPosterior
from calm_core.registry import heads
from calm_head_gaussian import GaussianEnergyHead, mixture_energy_loss


def _spec_energy_loss(x: torch.Tensor, y: torch.Tensor, a: float) -> torch.Tensor:
    """SPEC §5 verbatim: x [N, P, D] head samples, y [M, P, D] targets -> [P]."""
    N, M = x.shape[0], y.shape[0]
    cross = (x.unsqueeze(1) - y.unsqueeze(0)).norm(dim=-1).pow(a).sum(dim=(0, 1))
    pair = (x.unsqueeze(1) - x.unsqueeze(0)).norm(dim=-1).pow(a).sum(dim=(0, 1))
    return 2.0 * cross / (N * M) - pair / (N * (N - 1))


def _mixture(P: int, C: int, D: int, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    weights = torch.rand(C, generator=g).add(0.2).softmax(0).expand(P, C)
    means = (2.0 * torch.randn(C, D, generator=g)).expand(P, C, D)
    stds = (0.3 + torch.rand(C, D, generator=g)).expand(P, C, D)
    targets = torch.randn(40, 1, D, generator=g).expand(40, P, D)
    return weights, means, stds, targets


def test_one_component_is_exactly_the_spec_estimator() -> None:
    P, N, D, a = 5, 6, 3, 1.0
    g = torch.Generator().manual_seed(0)
    mean, std = torch.randn(P, 1, D, generator=g), 0.5 + torch.rand(P, 1, D, generator=g)
    targets = torch.randn(7, P, D, generator=g)
    got = mixture_energy_loss(
        torch.ones(P, 1),
        mean,
        std,
        targets,
        num_samples=N,
        alpha=a,
        generator=torch.Generator().manual_seed(3),
    )
    eps = torch.randn((P, 1, N, D), generator=torch.Generator().manual_seed(3))
    x = (mean.unsqueeze(2) + std.unsqueeze(2) * eps)[:, 0].transpose(0, 1)  # [N, P, D]
    torch.testing.assert_close(got, _spec_energy_loss(x, targets, a), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_mixture_estimator_is_unbiased(alpha: float) -> None:
    """Rao-Blackwellised estimate vs. the plain estimator on draws with sampled components."""
    P, C, D, N = 4000, 3, 2, 4
    weights, means, stds, targets = _mixture(P, C, D, seed=1)
    ours = mixture_energy_loss(
        weights,
        means,
        stds,
        targets,
        num_samples=N,
        alpha=alpha,
        generator=torch.Generator().manual_seed(2),
    )
    g = torch.Generator().manual_seed(3)
    comp = torch.multinomial(weights, N, replacement=True, generator=g).t()  # [N, P]
    idx = comp[..., None, None].expand(N, P, 1, D)
    mu = means.expand(N, P, C, D).gather(2, idx).squeeze(2)
    sd = stds.expand(N, P, C, D).gather(2, idx).squeeze(2)
    x = mu + sd * torch.randn(N, P, D, generator=g)
    plain = _spec_energy_loss(x, targets, alpha)
    se = math.sqrt(ours.var().item() / P + plain.var().item() / P)
    assert abs(ours.mean().item() - plain.mean().item()) < 4.0 * se, (ours.mean(), plain.mean(), se)


def test_gradients_finite_for_small_alpha() -> None:
    weights, means, stds, targets = _mixture(3, 2, 4, seed=4)
    logits = weights.log().clone().requires_grad_(True)
    means = means.clone().requires_grad_(True)
    stds = stds.clone().requires_grad_(True)
    loss = mixture_energy_loss(logits.softmax(-1), means, stds, targets, num_samples=3, alpha=0.5)
    loss.sum().backward()
    for t in (logits, means, stds):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


def test_estimator_is_translation_invariant_in_float32() -> None:
    # distances do not change under a shared shift; cdist's matmul form (used for > 25 points)
    # would lose ~5% of the loss at an offset of 100 without centring
    P, D, N, M, sd = 200, 16, 8, 100, 0.05
    g = torch.Generator().manual_seed(0)
    mu0 = torch.randn(P, 1, D, generator=g)
    eps = torch.randn(M, P, D, generator=g)
    losses = []
    for offset in (0.0, 100.0):
        mu = mu0 + offset
        std = torch.full((P, 1, D), sd)
        loss = mixture_energy_loss(
            torch.ones(P, 1), mu, std, mu[:, 0] + sd * eps, num_samples=N,
            generator=torch.Generator().manual_seed(1),
        )  # fmt: skip
        losses.append(loss)
    torch.testing.assert_close(losses[1], losses[0], atol=1e-4, rtol=1e-4)


def test_estimator_rejects_bad_arguments() -> None:
    w, m, s, y = _mixture(2, 2, 3, seed=5)
    with pytest.raises(ValueError, match="num_samples must be at least 2"):
        mixture_energy_loss(w, m, s, y, num_samples=1)
    with pytest.raises(ValueError, match=r"alpha must lie in \(0, 2\)"):
        mixture_energy_loss(w, m, s, y, num_samples=2, alpha=2.0)
    with pytest.raises(ValueError, match="targets must be"):
        mixture_energy_loss(w, m, s, y[:, :1], num_samples=2)


def test_config_errors_name_the_field() -> None:
    spec = {"name": "example.gaussian_energy", "config": {"alpha": 2.0}}
    with pytest.raises(ConfigError, match="alpha"):
        heads.build(spec, hidden_size=8, latent_size=2)
    spec = {"name": "example.gaussian_energy", "config": {"num_component": 2}}
    with pytest.raises(ConfigError, match="allowed fields: .*num_components"):
        heads.build(spec, hidden_size=8, latent_size=2)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny ops run faster on one thread than on two contended ones."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_head_learns_a_known_gaussian(one_thread: None) -> None:
    """Trained by the energy score, the head recovers the target's mean and scale (a proper score)."""
    torch.manual_seed(0)
    head = heads.build(
        {"name": "example.gaussian_energy", "config": {"width": 16, "num_target_samples": 32}},
        hidden_size=4,
        latent_size=2,
    )
    assert isinstance(head, GaussianEnergyHead)
    mu, sigma = torch.tensor([1.5, -0.5]), torch.tensor([0.3, 0.8])
    target = LatentPosterior(mu.expand(64, 2), sigma.expand(64, 2))
    hidden = torch.ones(64, 4)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    for step in range(400):
        if step == 300:  # settle: smaller steps average out the gradient noise
            opt.param_groups[0]["lr"] = 2e-3
        opt.zero_grad()
        head.loss(hidden, target).mean().backward()
        opt.step()
    with torch.no_grad():
        draws = head.sample(
            hidden[:1], num_samples=4000, generator=torch.Generator().manual_seed(0)
        )
    mean, std = draws[:, 0].mean(0), draws[:, 0].std(0)
    torch.testing.assert_close(mean, mu, atol=0.1, rtol=0.0)
    torch.testing.assert_close(std, sigma, rtol=0.2, atol=0.0)


def test_sample_uses_the_mixture_weights() -> None:
    """Component frequencies in samples match the predicted weights within standard errors."""
    torch.manual_seed(0)
    head = heads.build(
        {"name": "example.gaussian_energy", "config": {"num_components": 2, "width": 8}},
        hidden_size=4,
        latent_size=1,
    )
    with torch.no_grad():  # two far-apart, narrow components with unequal weights
        head.out.weight.zero_()
        # [logit_0, logit_1, mean_0, raw_0, mean_1, raw_1]
        head.out.bias.copy_(torch.tensor([0.0, 1.0, -10.0, -20.0, 10.0, -20.0]))
        hidden = torch.zeros(1, 4)
        weights, _, _ = head.distribution(hidden)
        draws = head.sample(hidden, num_samples=20000, generator=torch.Generator().manual_seed(1))
    p = weights[0, 1].item()
    freq = (draws > 0).float().mean().item()
    assert abs(freq - p) < 4.0 * math.sqrt(p * (1 - p) / 20000), (freq, p)
