"""Gaussian diffusion arithmetic for the diffusion head: schedules, respacing, losses, sampling.

Improved-DDPM conventions: the cosine schedule ``abar(s) = cos((s + 0.008) / 1.008 * pi/2)^2``
with ``beta_i = min(1 - abar((i+1)/T) / abar(i/T), 0.999)``; epsilon prediction with a learned
variance interpolated in log space between ``beta_t`` and the clipped posterior variance
(``log var = f log beta_t + (1 - f) log beta~_t``, ``f = (v + 1) / 2``); and the variational-bound
term in bits with the predicted mean held fixed (a KL for t > 0, a discretised Gaussian decoder
likelihood at t = 0).

Respacing keeps a subset of the training timesteps and recomputes betas from the kept
``abar`` values, so a 1000-step model samples in e.g. 100 steps; the network is still called with
the original timestep index (``timestep_map``).

What is unusual: every table is computed in float64 once and cached per device (never as module
buffers, so ``.half()`` or ``.to(dtype)`` on the head cannot degrade them); coefficients are
gathered at the timesteps and only then cast to the dtype of the data. No device is hard-coded:
tables follow the device of the timesteps they are indexed with.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "DiffusionSchedule",
    "ScheduleName",
    "discretized_gaussian_log_likelihood",
    "named_betas",
    "normal_kl",
    "space_timesteps",
]

ScheduleName = Literal["cosine", "linear"]


#: fewest steps of the linear schedule: its end point 0.02 * 1000 / T must stay below 1
LINEAR_MIN_STEPS = 21


def named_betas(name: ScheduleName, num_steps: int) -> Tensor:
    """Betas (float64 ``[num_steps]``) of the ``"cosine"`` or ``"linear"`` schedule."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if name == "cosine":

        def abar(s: float) -> float:
            return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = [
            min(1 - abar((i + 1) / num_steps) / abar(i / num_steps), 0.999)
            for i in range(num_steps)
        ]
        return torch.tensor(betas, dtype=torch.float64)
    if name == "linear":
        if num_steps < LINEAR_MIN_STEPS:
            raise ValueError(
                f"the linear schedule needs at least {LINEAR_MIN_STEPS} steps (its last beta, "
                f"0.02 * 1000 / steps, reaches 1 and leaves no signal), got {num_steps}; use "
                "more steps or the cosine schedule"
            )
        scale = 1000.0 / num_steps  # keeps the schedule's end points comparable across lengths
        return torch.linspace(scale * 1e-4, scale * 0.02, num_steps, dtype=torch.float64)
    raise ValueError(f"unknown noise schedule {name!r}; choose 'cosine' or 'linear'")


def space_timesteps(num_steps: int, num_kept: int) -> list[int]:
    """``num_kept`` timesteps out of ``range(num_steps)``, evenly strided, first and last kept."""
    if not 1 <= num_kept <= num_steps:
        raise ValueError(
            f"sampling steps must be between 1 and the training steps ({num_steps}), got {num_kept}"
        )
    if num_kept == 1:
        return [num_steps - 1]
    stride = (num_steps - 1) / (num_kept - 1)
    return sorted({round(i * stride) for i in range(num_kept)})


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (
        -1.0
        + logvar2
        - logvar1
        + torch.exp(logvar1 - logvar2)
        + (mean1 - mean2).pow(2) * torch.exp(-logvar2)
    )


def _approx_standard_normal_cdf(x: Tensor) -> Tensor:
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def discretized_gaussian_log_likelihood(x: Tensor, means: Tensor, log_scales: Tensor) -> Tensor:
    """Log-likelihood (nats) of ``x`` under a Gaussian discretised into bins of width 2/255 on
    [-1, 1], elementwise (the t = 0 decoder term of the variational bound)."""
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = _approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = _approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = cdf_plus.clamp_min(1e-12).log()
    log_one_minus_cdf_min = (1.0 - cdf_min).clamp_min(1e-12).log()
    log_delta = (cdf_plus - cdf_min).clamp_min(1e-12).log()
    return torch.where(
        x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta)
    )


class DiffusionSchedule:
    """Coefficient tables of one (possibly respaced) diffusion process.

    Args:
        betas: float64 ``[T]`` noise levels.
        timestep_map: for each step, the training timestep the network is called with
            (identity for an un-respaced schedule).
    """

    def __init__(self, betas: Tensor, timestep_map: list[int] | None = None) -> None:
        betas = betas.detach().to(device="cpu", dtype=torch.float64)
        if betas.dim() != 1 or not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError(
                "betas must be a 1-D tensor with values in (0, 1); a beta of 1 leaves no signal "
                "(alpha-bar 0) and makes every sample NaN"
            )
        self.num_steps = int(betas.shape[0])
        self.timestep_map = list(range(self.num_steps)) if timestep_map is None else timestep_map
        if len(self.timestep_map) != self.num_steps:
            raise ValueError("timestep_map needs one entry per step")
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
        posterior_variance = betas * (1.0 - prev) / (1.0 - alphas_cumprod)
        # The first posterior variance is 0; borrow the next one so its log stays finite (a
        # single-step process has none: its beta stands in, as the step adds no noise anyway).
        first = posterior_variance[1:2] if self.num_steps > 1 else betas[:1]
        clipped = torch.cat([first, posterior_variance[1:]])
        self._cpu: dict[str, Tensor] = {
            "betas": betas,
            "log_betas": betas.log(),
            "alphas_cumprod": alphas_cumprod,
            "sqrt_alphas_cumprod": alphas_cumprod.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1.0 - alphas_cumprod).sqrt(),
            "sqrt_recip_alphas_cumprod": (1.0 / alphas_cumprod).sqrt(),
            "sqrt_recipm1_alphas_cumprod": (1.0 / alphas_cumprod - 1.0).sqrt(),
            "posterior_log_variance_clipped": clipped.log(),
            "posterior_mean_coef1": betas * prev.sqrt() / (1.0 - alphas_cumprod),
            "posterior_mean_coef2": (1.0 - prev) * (1.0 - betas).sqrt() / (1.0 - alphas_cumprod),
            "timestep_map": torch.tensor(self.timestep_map, dtype=torch.float64),
        }
        self._by_device: dict[torch.device, dict[str, Tensor]] = {}

    @classmethod
    def named(cls, name: ScheduleName, num_steps: int) -> DiffusionSchedule:
        """The schedule ``name`` over ``num_steps`` training steps."""
        return cls(named_betas(name, num_steps))

    def respaced(self, num_kept: int) -> DiffusionSchedule:
        """A shorter process on ``num_kept`` of these timesteps with the same ``abar`` values."""
        kept = space_timesteps(self.num_steps, num_kept)
        abar = self._cpu["alphas_cumprod"]
        new_betas, last = [], 1.0
        for i in kept:
            new_betas.append(1.0 - float(abar[i]) / last)
            last = float(abar[i])
        return DiffusionSchedule(
            torch.tensor(new_betas, dtype=torch.float64), [self.timestep_map[i] for i in kept]
        )

    @property
    def alphas_cumprod(self) -> Tensor:
        """``abar`` per step (float64, CPU)."""
        return self._cpu["alphas_cumprod"].clone()

    def table(self, name: str, device: torch.device) -> Tensor:
        """A float64 table on ``device`` (cached)."""
        tables = self._by_device.get(device)
        if tables is None:
            tables = {k: v.to(device) for k, v in self._cpu.items()}
            self._by_device[device] = tables
        return tables[name]

    def _at(self, name: str, t: Tensor, like: Tensor) -> Tensor:
        # Gather in float64, then cast: [N] -> [N, 1, ...] broadcastable against ``like``.
        values = self.table(name, t.device)[t].to(like.dtype)
        return values.reshape(*values.shape, *([1] * (like.dim() - t.dim())))

    def model_timesteps(self, t: Tensor, dtype: torch.dtype) -> Tensor:
        """The timestep values the network is called with, for step indices ``t``.

        In at least float32: half precision cannot represent timesteps up to 1000 exactly.
        """
        return self.table("timestep_map", t.device)[t].to(torch.promote_types(dtype, torch.float32))

    # ------------------------------------------------------------------------------- forward
    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise``."""
        return (
            self._at("sqrt_alphas_cumprod", t, x0) * x0
            + self._at("sqrt_one_minus_alphas_cumprod", t, x0) * noise
        )

    def q_posterior(self, x0: Tensor, xt: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and clipped log variance of ``q(x_{t-1} | x_t, x0)``."""
        mean = (
            self._at("posterior_mean_coef1", t, xt) * x0
            + self._at("posterior_mean_coef2", t, xt) * xt
        )
        return mean, self._at("posterior_log_variance_clipped", t, xt)

    # ------------------------------------------------------------------------------- reverse
    def p_mean_variance(
        self,
        eps: Tensor,
        var_values: Tensor,
        xt: Tensor,
        t: Tensor,
        clip_x0: float | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Mean and log variance of ``p(x_{t-1} | x_t)`` from predicted noise and variance value.

        Args:
            eps: predicted noise ``[N, D]``.
            var_values: the variance output ``v`` in [-1, 1] (nominally), ``[N, D]``.
            xt: ``[N, D]``.
            t: step indices ``[N]`` into this schedule.
            clip_x0: clamp the predicted clean latent to ``[-clip_x0, clip_x0]`` (None: no clip).
                At a high noise level ``x0 = (xt - sqrt(1 - abar) eps) / sqrt(abar)`` multiplies
                any error of ``eps`` by ``sqrt(1/abar - 1)`` (hundreds at the cosine schedule's
                last step); the clamp keeps an imperfect denoiser's samples in range.
        """
        min_log = self._at("posterior_log_variance_clipped", t, xt)
        max_log = self._at("log_betas", t, xt)
        frac = (var_values + 1.0) / 2.0
        log_var = frac * max_log + (1.0 - frac) * min_log
        x0_pred = (
            self._at("sqrt_recip_alphas_cumprod", t, xt) * xt
            - self._at("sqrt_recipm1_alphas_cumprod", t, xt) * eps
        )
        if clip_x0 is not None:
            x0_pred = x0_pred.clamp(-clip_x0, clip_x0)
        mean, _ = self.q_posterior(x0_pred, xt, t)
        return mean, log_var

    def vb_bits(self, eps: Tensor, var_values: Tensor, x0: Tensor, xt: Tensor, t: Tensor) -> Tensor:
        """The variational-bound term per row ``[N]`` in bits (mean over channels)."""
        true_mean, true_log_var = self.q_posterior(x0, xt, t)
        mean, log_var = self.p_mean_variance(eps, var_values, xt, t)
        kl = normal_kl(true_mean, true_log_var, mean, log_var).mean(dim=-1) / math.log(2.0)
        nll = -discretized_gaussian_log_likelihood(x0, mean, 0.5 * log_var)
        nll = nll.mean(dim=-1) / math.log(2.0)
        return torch.where(t == 0, nll, kl)

    def p_sample_step(
        self,
        eps: Tensor,
        var_values: Tensor,
        xt: Tensor,
        t: Tensor,
        noise: Tensor,
        clip_x0: float | None = None,
    ) -> Tensor:
        """One reverse step ``x_{t-1} = mean + [t > 0] sigma noise`` (``clip_x0``: see
        :meth:`p_mean_variance`)."""
        mean, log_var = self.p_mean_variance(eps, var_values, xt, t, clip_x0)
        nonzero = (t != 0).to(xt.dtype).reshape(-1, *([1] * (xt.dim() - 1)))
        return mean + nonzero * torch.exp(0.5 * log_var) * noise
