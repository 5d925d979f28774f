"""The Monte-Carlo energy loss (SPEC.md §5) and the energy distance between two sample sets.

Per position, with N model samples ``x_n`` and M target draws ``y_m = mean + std * eps_m``::

    loss = (2 / (N M)) sum_{n,m} ||x_n - y_m||^a  -  (1 / (N (N-1))) sum_{n != k} ||x_n - x_k||^a

an unbiased estimate of ``-S(P, y)`` (the negated energy score), strictly proper for
``0 < a < 2``.

What is unusual here, all for speed and memory:

* Distances come from batched matmuls (``||u||^2 + ||v||^2 - 2 u.v``) over positions, so the
  largest temporary is the ``[positions, N, M]`` distance matrix, never ``(N, M, positions, D)``.
* The matmul form cancels catastrophically when vectors are far from the origin relative to their
  distance. Both terms are therefore computed on *centred* vectors: the cross term relative to the
  posterior mean (so the targets are just ``std * eps``, no subtraction needed) and the model term
  relative to the (detached) mean of the model samples. Distances are translation invariant, so
  this changes nothing mathematically.
* ``sqrt`` at 0 has an infinite derivative; squared distances are clamped from below at a tiny
  dtype-dependent floor, so coincident samples (e.g. a zero-initialised generator, where all
  samples are equal) give finite, zero gradients. The ``n == k`` diagonal is excluded exactly.
* Under autocast the distances are still computed in (at least) float32: a bf16 matmul would
  destroy the cancellation-sensitive ``||u||^2 + ||v||^2 - 2 u.v``. The result has the input dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "energy_distance",
    "energy_loss",
    "energy_loss_naive",
    "pairwise_distance_power",
    "validate_alpha",
]


def validate_alpha(alpha: float) -> float:
    """Check the distance exponent ``a`` of the energy score; returns it unchanged.

    Raises:
        ValueError: ``a`` is outside the open interval (0, 2), with the reason.
    """
    if not 0.0 < alpha < 2.0:
        raise ValueError(
            f"alpha (the energy-score distance exponent a) must lie strictly between 0 and 2, got "
            f"{alpha}: the energy score is strictly proper only for 0 < a < 2 (a = 2 scores only "
            "the mean of the prediction, a <= 0 is not a distance); the default is 1.0"
        )
    return alpha


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # Half precision cannot resolve the cancellation in the matmul form of the distance.
    return torch.promote_types(dtype, torch.float32)


def _floor(dtype: torch.dtype) -> float:
    # Squared-distance floor: far below any distance that matters, but keeps d2**(a/2-1) finite.
    return float(torch.finfo(dtype).eps) ** 2


def pairwise_distance_power(u: Tensor, v: Tensor, alpha: float = 1.0) -> Tensor:
    """``||u_i - v_j||^a`` for every pair, batched over the leading dimension.

    Args:
        u: ``[P, I, D]``.
        v: ``[P, J, D]``.
        alpha: distance exponent ``a`` (> 0).

    Returns:
        ``[P, I, J]``. Computed as ``||u||^2 + ||v||^2 - 2 u.v`` (one batched matmul); centre the
        inputs first when they sit far from the origin.
    """
    if u.dim() != 3 or v.dim() != 3 or u.shape[0] != v.shape[0] or u.shape[2] != v.shape[2]:
        raise ValueError(
            f"expected u [P, I, D] and v [P, J, D] with one P and D, got {tuple(u.shape)} and "
            f"{tuple(v.shape)}"
        )
    uu = u.pow(2).sum(-1)
    vv = v.pow(2).sum(-1)
    d2 = torch.baddbmm(uu.unsqueeze(2) + vv.unsqueeze(1), u, v.transpose(1, 2), alpha=-2.0)
    d2 = d2.clamp_min(_floor(d2.dtype))
    return d2.sqrt() if alpha == 1.0 else d2.pow(alpha / 2.0)


def energy_loss(
    samples: Tensor,
    mean: Tensor,
    std: Tensor,
    *,
    num_target_samples: int = 100,
    alpha: float = 1.0,
    target_eps: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Per-position Monte-Carlo energy loss (the negated energy score, SPEC.md §5).

    Args:
        samples: model samples ``[N, P, D]`` (N >= 2), differentiable.
        mean: target posterior mean ``[P, D]``.
        std: target posterior std ``[P, D]``.
        num_target_samples: M, the number of draws ``y = mean + std * eps`` per position (ignored
            when ``target_eps`` is given).
        alpha: distance exponent ``a`` in (0, 2).
        target_eps: explicit standard-normal draws ``[M, P, D]`` (the reference's layout), for
            parity tests; drawn here when None.
        generator: random generator for the target draws.

    Returns:
        ``[P]`` loss in the dtype of ``samples``; ``-loss`` is the reference's ``energy_score``.
    """
    validate_alpha(alpha)
    if samples.dim() != 3:
        raise ValueError(f"samples must be [N, P, D], got shape {tuple(samples.shape)}")
    n, p, d = samples.shape
    if n < 2:
        raise ValueError(
            f"the energy loss needs at least 2 model samples per position (got {n}): the "
            "model-sample term compares distinct samples"
        )
    if mean.shape != (p, d) or std.shape != (p, d):
        raise ValueError(
            f"target mean/std must be [P, D] = {(p, d)} to match samples {tuple(samples.shape)}, "
            f"got {tuple(mean.shape)} and {tuple(std.shape)}"
        )
    out_dtype = samples.dtype
    dtype = _compute_dtype(out_dtype)
    with torch.autocast(device_type=samples.device.type, enabled=False):
        x = samples.to(dtype).transpose(0, 1)  # [P, N, D]
        mu = mean.to(dtype)
        sd = std.to(dtype)
        if target_eps is None:
            if num_target_samples < 1:
                raise ValueError(f"num_target_samples must be >= 1, got {num_target_samples}")
            eps = torch.randn(
                (p, num_target_samples, d), generator=generator, device=x.device, dtype=dtype
            )
        else:
            if target_eps.dim() != 3 or target_eps.shape[1:] != (p, d):
                raise ValueError(
                    f"target_eps must be [M, P, D] with P, D = {(p, d)}, got "
                    f"{tuple(target_eps.shape)}"
                )
            eps = target_eps.to(dtype).transpose(0, 1)  # [P, M, D]
        m = eps.shape[1]
        # Centre the cross term on the posterior mean: y - mean = std * eps exactly.
        y_c = sd.unsqueeze(1) * eps
        x_c = x - mu.unsqueeze(1)
        cross = pairwise_distance_power(x_c, y_c, alpha).sum(dim=(1, 2)) * (2.0 / (n * m))
        # Centre the model term on the samples' own mean (no gradient needed through a shift).
        x_s = x - x.detach().mean(dim=1, keepdim=True)
        self_d = pairwise_distance_power(x_s, x_s, alpha)
        off_diag = ~torch.eye(n, dtype=torch.bool, device=x.device)
        spread = torch.where(off_diag, self_d, torch.zeros_like(self_d)).sum(dim=(1, 2))
        loss = cross - spread / (n * (n - 1))
    return loss.to(out_dtype)


def energy_loss_naive(
    samples: Tensor, mean: Tensor, std: Tensor, target_eps: Tensor, alpha: float = 1.0
) -> Tensor:
    """The same loss written directly from the formula, materialising every difference.

    Memory is ``O(N * M * P * D)``; kept as the readable definition that tests and the benchmark
    compare :func:`energy_loss` against.
    """
    n = samples.shape[0]
    y = mean.unsqueeze(0) + std.unsqueeze(0) * target_eps  # [M, P, D]
    cross = (samples.unsqueeze(1) - y.unsqueeze(0)).norm(dim=-1).pow(alpha).mean(dim=(0, 1))
    i, k = torch.where(~torch.eye(n, dtype=torch.bool, device=samples.device))  # pairs n != k
    pair = (samples[i] - samples[k]).norm(dim=-1).pow(alpha)  # [N (N-1), P]
    spread = pair.sum(dim=0) / (n * (n - 1))
    out: Tensor = 2.0 * cross - spread
    return out


def energy_distance(x: Tensor, y: Tensor, alpha: float = 1.0) -> Tensor:
    """Unbiased estimate of the energy distance between two distributions from samples.

    ``2 E||X - Y||^a - E||X - X'||^a - E||Y - Y'||^a`` (zero iff the distributions agree, for
    ``0 < a < 2``), with U-statistics for the within-set terms.

    Args:
        x: ``[..., n, D]`` samples of the first distribution (n >= 2).
        y: ``[..., m, D]`` samples of the second (m >= 2); leading dimensions are batched.

    Returns:
        ``[...]`` estimates.
    """
    validate_alpha(alpha)
    n, m = x.shape[-2], y.shape[-2]
    if n < 2 or m < 2:
        raise ValueError(f"energy_distance needs >= 2 samples on each side, got {n} and {m}")
    batch = torch.broadcast_shapes(x.shape[:-2], y.shape[:-2])  # type: ignore[no-untyped-call]
    xb = x.expand(*batch, n, x.shape[-1]).reshape(-1, n, x.shape[-1])
    yb = y.expand(*batch, m, y.shape[-1]).reshape(-1, m, y.shape[-1])
    centre = yb.mean(dim=1, keepdim=True)
    xb, yb = xb - centre, yb - centre
    xy = pairwise_distance_power(xb, yb, alpha).mean(dim=(1, 2))
    eye_n = torch.eye(n, dtype=torch.bool, device=x.device)
    eye_m = torch.eye(m, dtype=torch.bool, device=x.device)
    xx = pairwise_distance_power(xb, xb, alpha).masked_fill(eye_n, 0).sum(dim=(1, 2))
    yy = pairwise_distance_power(yb, yb, alpha).masked_fill(eye_m, 0).sum(dim=(1, 2))
    out = 2 * xy - xx / (n * (n - 1)) - yy / (m * (m - 1))
    return out.reshape(batch)
