"""The Monte-Carlo energy loss: the formula, unbiasedness, strict propriety, gradients, config.

Statistical checks use fixed seeds, many independent positions, and tolerances of a few standard
errors of the mean over positions (the per-position losses are i.i.d.).
"""

from __future__ import annotations

import math

import pytest
import torch
from calm_core.config import ConfigError
from calm_core.registry import heads
from calm_heads.energy_score import (
    energy_distance,
    energy_loss,
    energy_loss_naive,
    pairwise_distance_power,
)
from torch.utils._python_dispatch import TorchDispatchMode

Z_TOL = 4.0  # standard errors


def _abs_moment_isotropic(sigma: float, dim: int, a: float) -> float:
    """E||Z||^a for Z ~ N(0, sigma^2 I_dim)."""
    return sigma**a * 2 ** (a / 2) * math.exp(math.lgamma((dim + a) / 2) - math.lgamma(dim / 2))


def _folded_normal_mean(mu: float, sigma: float) -> float:
    """E|Z| for Z ~ N(mu, sigma^2) (one dimension)."""
    phi = 0.5 * (1 + math.erf(-mu / (sigma * math.sqrt(2))))
    return sigma * math.sqrt(2 / math.pi) * math.exp(-(mu**2) / (2 * sigma**2)) + mu * (1 - 2 * phi)


def _mean_and_se(x: torch.Tensor) -> tuple[float, float]:
    x = x.double()
    return float(x.mean()), float(x.std() / math.sqrt(x.numel()))


@pytest.mark.parametrize("alpha", [0.5, 1.0, 1.5])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_naive_formula_values_and_gradients(alpha: float, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    n, m, p, d = 5, 7, 6, 3
    samples = torch.randn(n, p, d, generator=gen, dtype=dtype).requires_grad_(True)
    mean = torch.randn(p, d, generator=gen, dtype=dtype)
    std = 0.2 + torch.rand(p, d, generator=gen, dtype=dtype)
    eps = torch.randn(m, p, d, generator=gen, dtype=dtype)
    fast = energy_loss(samples, mean, std, alpha=alpha, target_eps=eps)
    (g_fast,) = torch.autograd.grad(fast.sum(), samples)
    naive = energy_loss_naive(samples, mean, std, eps, alpha=alpha)
    (g_naive,) = torch.autograd.grad(naive.sum(), samples)
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    assert fast.dtype == dtype and fast.shape == (p,)
    torch.testing.assert_close(fast, naive, atol=tol, rtol=tol)
    torch.testing.assert_close(g_fast, g_naive, atol=10 * tol, rtol=10 * tol)


def test_far_from_origin_keeps_float32_precision() -> None:
    """Centring: latents at distance 1e3 from the origin still give float64-accurate losses."""
    gen = torch.Generator().manual_seed(1)
    n, m, p, d = 8, 50, 10, 16
    offset = 1000.0
    samples = offset + 0.3 * torch.randn(n, p, d, generator=gen, dtype=torch.float64)
    mean = offset + 0.1 * torch.randn(p, d, generator=gen, dtype=torch.float64)
    std = torch.full((p, d), 0.2, dtype=torch.float64)
    eps = torch.randn(m, p, d, generator=gen, dtype=torch.float64)
    exact = energy_loss_naive(samples, mean, std, eps)
    got = energy_loss(samples.float(), mean.float(), std.float(), target_eps=eps.float())
    # float32 rounding of the inputs themselves (offset 1e3 -> ulp 6e-5) bounds what is possible
    assert (got.double() - exact).abs().max() < 2e-3


def test_coincident_samples_have_finite_gradients() -> None:
    """A zero-initialised generator emits identical samples: no NaN from sqrt at 0."""
    p, d = 4, 5
    samples = torch.zeros(8, p, d, requires_grad=True)
    mean, std = torch.randn(p, d), torch.ones(p, d)
    loss = energy_loss(samples, mean, std, num_target_samples=20)
    loss.sum().backward()
    assert samples.grad is not None and torch.isfinite(samples.grad).all()
    assert samples.grad.abs().sum() > 0  # the target term still pulls the samples


@pytest.mark.parametrize(("alpha", "dim"), [(1.0, 4), (0.5, 2), (1.5, 8)])
def test_unbiased_for_isotropic_gaussians(alpha: float, dim: int) -> None:
    """E[loss] = 2 E||X - Y||^a - E||X - X'||^a in closed form (X ~ P, Y ~ Q, zero-mean offset)."""
    gen = torch.Generator().manual_seed(2)
    p, n, m = 4000, 8, 100
    s_model, s_target = 0.7, 1.3
    centre = 20.0 * torch.randn(p, dim, generator=gen)  # per-position means, far from the origin
    samples = centre + s_model * torch.randn(n, p, dim, generator=gen)
    std = torch.full((p, dim), s_target)
    loss = energy_loss(samples, centre, std, num_target_samples=m, alpha=alpha, generator=gen)
    expected = 2 * _abs_moment_isotropic(
        math.hypot(s_model, s_target), dim, alpha
    ) - _abs_moment_isotropic(math.sqrt(2) * s_model, dim, alpha)
    mean, se = _mean_and_se(loss)
    assert abs(mean - expected) < Z_TOL * se, (mean, expected, se)


def test_unbiased_for_shifted_gaussians_in_one_dimension() -> None:
    gen = torch.Generator().manual_seed(3)
    p, n, m = 6000, 8, 100
    mu_model, s_model, mu_target, s_target = 0.8, 0.5, -0.3, 1.1
    samples = mu_model + s_model * torch.randn(n, p, 1, generator=gen)
    mean = torch.full((p, 1), mu_target)
    std = torch.full((p, 1), s_target)
    loss = energy_loss(samples, mean, std, num_target_samples=m, generator=gen)
    expected = 2 * _folded_normal_mean(
        mu_model - mu_target, math.hypot(s_model, s_target)
    ) - _folded_normal_mean(0.0, math.sqrt(2) * s_model)
    got, se = _mean_and_se(loss)
    assert abs(got - expected) < Z_TOL * se, (got, expected, se)


@pytest.mark.parametrize(
    ("shift", "scale"), [(0.3, 1.0), (0.0, 1.5), (0.0, 0.6), (0.15, 0.8)], ids=str
)
def test_strictly_proper_truth_has_lowest_expected_loss(shift: float, scale: float) -> None:
    """Samples from the target Q beat a shifted / over- / under-dispersed Q, significantly."""
    gen = torch.Generator().manual_seed(4)
    p, n, m, d, s = 4000, 8, 100, 4, 0.5
    centre = torch.randn(p, d, generator=gen)
    std = torch.full((p, d), s)
    base = torch.randn(n, p, d, generator=gen)  # common random numbers for both predictions
    eps = torch.randn(m, p, d, generator=gen)
    truth = energy_loss(centre + s * base, centre, std, target_eps=eps)
    other = energy_loss(centre + shift + scale * s * base, centre, std, target_eps=eps)
    diff, se = _mean_and_se(other - truth)
    assert diff > Z_TOL * se, (diff, se)
    # ... and the gap matches the closed form for the dispersion-only alternatives
    if shift == 0.0:
        c = _abs_moment_isotropic(1.0, d, 1.0)
        gap = c * s * (2 * math.hypot(scale, 1) - math.sqrt(2) * scale - math.sqrt(2))
        assert abs(diff - gap) < Z_TOL * se + 1e-3, (diff, gap, se)


def test_energy_distance_zero_for_equal_and_positive_for_different() -> None:
    gen = torch.Generator().manual_seed(5)
    reps, k, d = 400, 64, 2
    a = torch.randn(reps, k, d, generator=gen)
    b = torch.randn(reps, k, d, generator=gen)
    same, se_same = _mean_and_se(energy_distance(a, b))
    assert abs(same) < Z_TOL * se_same
    c = 0.5 + torch.randn(reps, k, d, generator=gen)
    # closed form: 2 E||N(0.5 1, 2I)|| - 2 E||N(0, 2I)|| (equal spreads), estimated in 2-D
    shifted, se_shift = _mean_and_se(energy_distance(a, c))
    assert shifted > Z_TOL * se_shift


def test_pairwise_distance_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match=r"\[P, I, D\]"):
        pairwise_distance_power(torch.zeros(2, 3, 4), torch.zeros(3, 3, 4))


def test_energy_loss_rejects_single_sample_and_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="at least 2 model samples"):
        energy_loss(torch.zeros(1, 3, 2), torch.zeros(3, 2), torch.ones(3, 2))
    with pytest.raises(ValueError, match="target mean/std"):
        energy_loss(torch.zeros(2, 3, 2), torch.zeros(4, 2), torch.ones(4, 2))


@pytest.mark.parametrize("alpha", [0.0, 2.0, -1.0, 2.5])
def test_alpha_outside_open_interval_is_refused_with_reason(alpha: float) -> None:
    with pytest.raises(ConfigError) as info:
        heads.build({"name": "energy", "config": {"alpha": alpha}}, hidden_size=8, latent_size=4)
    text = str(info.value)
    assert "alpha" in text and "strictly between 0 and 2" in text
    assert "a = 2 scores only the mean" in text


def test_energy_config_rejects_one_model_sample() -> None:
    with pytest.raises(ConfigError, match="num_samples"):
        heads.build({"name": "energy", "config": {"num_samples": 1}}, hidden_size=8, latent_size=4)


class _OpRecorder(TorchDispatchMode):
    """Records every aten op run (forward and backward) and the largest tensor it produced."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        self.ops += 1
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def _record(fn, n: int, p: int, m: int = 100, d: int = 16) -> _OpRecorder:  # type: ignore[no-untyped-def]
    gen = torch.Generator().manual_seed(0)
    samples = torch.randn(n, p, d, generator=gen).requires_grad_(True)
    mean, std = torch.randn(p, d, generator=gen), 0.5 + torch.rand(p, d, generator=gen)
    eps = torch.randn(m, p, d, generator=gen)
    rec = _OpRecorder()
    with rec:
        fn(samples, mean, std, eps).sum().backward()
    return rec


def _fast(samples, mean, std, eps):  # type: ignore[no-untyped-def]
    return energy_loss(samples, mean, std, target_eps=eps)


def test_no_temporary_of_samples_by_targets_by_positions_by_latent() -> None:
    """Forward and backward never hold an (N, M, positions, D) tensor; the naive form does."""
    n, p, m, d = 8, 12, 100, 16
    full = n * m * p * d
    fast = _record(_fast, n, p, m, d)
    # the largest tensors are the M target draws [P, M, D] and the distances [P, N, M]
    assert fast.largest <= max(p * m * d, p * n * m), fast.largest
    assert _record(energy_loss_naive, n, p, m, d).largest >= full


def test_no_python_loops_over_samples_or_positions() -> None:
    """The number of tensor operations does not grow with N or with the number of positions."""
    base = _record(_fast, n=4, p=5).ops
    assert _record(_fast, n=8, p=5).ops == base
    assert _record(_fast, n=4, p=40).ops == base
