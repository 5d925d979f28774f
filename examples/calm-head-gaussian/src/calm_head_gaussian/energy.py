"""The energy score of a Gaussian mixture, estimated without sampling the component identity.

The energy loss of CALM (SPEC §5) scores a predictive distribution P at an observation y by
``2 E||X - Y||^a - E||X - X'||^a`` with X, X' ~ P and Y from the codec posterior. For a mixture
``P = sum_k w_k N(mu_k, diag(s_k^2))`` the component of a draw is a discrete choice, which has no
reparameterisation gradient. Instead this module draws N reparameterised samples from *every*
component and weights the distances by the mixture weights (a Rao-Blackwellised estimate):

    cross = sum_k w_k * mean_{n,m} ||x_kn - y_m||^a
    self  = sum_{k,l} w_k w_l * mean_{(n,k) != (n',l)} ||x_kn - x_ln'||^a
    loss  = 2 * cross - self

which is unbiased for ``2 E||X - Y||^a - E||X - X'||^a`` and differentiable in the means, the
standard deviations *and* the weights. With one component it is exactly the estimator of SPEC §5.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["mixture_energy_loss", "pairwise_distance_power"]


def pairwise_distance_power(x: Tensor, y: Tensor, alpha: float) -> Tensor:
    """``||x_i - y_j||^a`` for every pair.

    Args:
        x: ``[P, I, D]``.
        y: ``[P, J, D]``.
        alpha: the energy-score exponent ``a`` in ``(0, 2)``.

    Returns:
        ``[P, I, J]`` distances raised to ``alpha``.
    """
    dist = centred_cdist(x, y)
    return dist if alpha == 1.0 else dist.pow(alpha)


def centred_cdist(x: Tensor, y: Tensor) -> Tensor:
    """``torch.cdist`` after moving both point sets by the (detached) mean of ``y``.

    Distances do not change under a shared shift, but ``cdist``'s matmul form
    ``||u||^2 + ||v||^2 - 2 u.v`` (used for larger sets) loses float32 precision when the points
    lie far from the origin; centring keeps the result translation-invariant in practice.
    """
    centre = y.detach().mean(dim=-2, keepdim=True)
    return torch.cdist(x - centre, y - centre)


def mixture_energy_loss(
    weights: Tensor,
    means: Tensor,
    stds: Tensor,
    targets: Tensor,
    *,
    num_samples: int,
    alpha: float = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Unbiased energy loss of a diagonal-Gaussian mixture against target draws, per position.

    Args:
        weights: mixture weights ``[P, C]`` (rows sum to one).
        means: component means ``[P, C, D]``.
        stds: component standard deviations ``[P, C, D]``, positive.
        targets: draws from the target distribution ``[M, P, D]``.
        num_samples: N, reparameterised draws per component (at least 2).
        alpha: ``a`` in ``(0, 2)``; 1 is the default of the paper.
        generator: optional random generator for the draws.

    Returns:
        ``[P]``: the estimate of ``2 E||X - Y||^a - E||X - X'||^a`` at each position.

    Raises:
        ValueError: on inconsistent shapes, ``num_samples < 2`` or ``alpha`` outside ``(0, 2)``.
    """
    if num_samples < 2:
        raise ValueError(f"num_samples must be at least 2 for the energy loss, got {num_samples}")
    if not 0.0 < alpha < 2.0:
        raise ValueError(f"alpha must lie in (0, 2) for a strictly proper score, got {alpha}")
    if means.shape != stds.shape or means.dim() != 3:
        raise ValueError(
            "means and stds must both be [P, C, D], got "
            f"{tuple(means.shape)} and {tuple(stds.shape)}"
        )
    P, C, D = means.shape
    if weights.shape != (P, C):
        raise ValueError(f"weights must be [P, C] = [{P}, {C}], got {tuple(weights.shape)}")
    if targets.dim() != 3 or targets.shape[1:] != (P, D):
        raise ValueError(f"targets must be [M, P, D] = [M, {P}, {D}], got {tuple(targets.shape)}")

    N = num_samples
    eps = torch.randn((P, C, N, D), generator=generator, device=means.device, dtype=means.dtype)
    x = (means.unsqueeze(2) + stds.unsqueeze(2) * eps).reshape(P, C * N, D)

    y = targets.transpose(0, 1)  # [P, M, D]
    cross = pairwise_distance_power(x, y, alpha).mean(-1).reshape(P, C, N).mean(-1)  # [P, C]
    cross = (weights * cross).sum(-1)

    # self term: all pairs of draws, excluding a draw with itself; the diagonal is set to 1 before
    # the power so that a < 1 never meets 0^(a-1) = inf in the backward pass
    dist = centred_cdist(x, x)
    eye = torch.eye(C * N, dtype=torch.bool, device=x.device)
    dist = torch.where(eye, torch.ones_like(dist), dist)
    if alpha != 1.0:
        dist = dist.pow(alpha)
    dist = dist.masked_fill(eye, 0.0).reshape(P, C, N, C, N).sum(dim=(2, 4))  # [P, C, C]
    pairs = torch.full((C, C), float(N * N), dtype=means.dtype, device=means.device)
    pairs.fill_diagonal_(float(N * (N - 1)))
    pair_weights = weights.unsqueeze(2) * weights.unsqueeze(1)  # [P, C, C]
    self_term = (pair_weights * dist / pairs).sum(dim=(1, 2))
    return 2.0 * cross - self_term
