"""Temperature sampling from a black-box chunk sampler (SPEC.md §7).

A CALM head gives samples, not probabilities, so ``P(x)^(1/T)`` cannot be computed; it has to be
reached by combining samples. Both algorithms here only need a *sampler*: a callable
``sampler(num) -> LongTensor[num, rows, K]`` returning ``num`` i.i.d. decoded chunks for each of
``rows`` independent distributions (one per batch row). Any sampler of that form works: a CALM
head followed by the codec's argmax decoder, or a categorical distribution in tests.

* :func:`exact_temperature_sample` is the paper's exact algorithm (integer stage + Bernoulli
  factory for the fractional part of ``1/T``). Every row runs its own accept/restart state machine;
  the rows are advanced together, one draw at a time, on blocks of draws fetched from the sampler,
  so the sampler is called a few times with many samples instead of once per draw. A cap on draws
  per row turns the unbounded loop (hopeless for flat distributions at low ``T``) into a clear
  error, or a fallback to the batch approximation.
* :func:`batch_temperature_sample` is the batch approximation: among ``N`` candidates per row,
  count identical chunks ``c_x`` and pick ``x`` with probability proportional to ``C(c_x, m)`` at
  the first ``m = n, n-1, ..., 1`` for which some ``c_x >= m``. Counting is a lexicographic sort
  plus run lengths, so there is no Python loop over rows and no ``Counter``. For non-reciprocal
  temperatures the cascade uses real exponents ``a, a-1, ...`` (``a = 1/T``) with the
  generalised binomial ``C(c, e) = Gamma(c+1) / (Gamma(e+1) Gamma(c-e+1))``; since
  ``C(c, a) ~ c^a / Gamma(a+1)`` for large ``c``, it converges to ``P^(1/T)`` as ``N`` grows,
  like the reciprocal case.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "ChunkSampler",
    "TemperatureSamplingError",
    "batch_temperature_sample",
    "count_identical",
    "exact_temperature_sample",
    "exact_temperature_sample_with_draws",
    "expected_exact_draws",
    "lazy_batch_temperature_sample",
    "split_temperature",
]

#: ``sampler(num) -> LongTensor[num, rows, K]``: ``num`` i.i.d. chunks for each row.
ChunkSampler = Callable[[int], Tensor]

_INT_TOL = 1e-9


class TemperatureSamplingError(RuntimeError):
    """The exact sampler used up its draw budget before every row accepted a sample."""


def split_temperature(temperature: float) -> tuple[int, float]:
    """Write ``1/T = n + f`` with integer ``n >= 1`` and ``0 <= f < 1``.

    Reciprocals of integers (``T = 1/3``) are snapped so float error does not create a tiny ``f``.

    Raises:
        ValueError: when ``T`` is not in ``(0, 1]``.
    """
    t = float(temperature)
    if not (0.0 < t <= 1.0) or math.isnan(t):
        raise ValueError(
            f"temperature must be in (0, 1], got {temperature!r}; T=1 is plain sampling and lower "
            "T sharpens (temperatures above 1 cannot be reached from a black-box sampler)"
        )
    inv = 1.0 / t
    nearest = round(inv)
    if abs(inv - nearest) < _INT_TOL * max(1.0, inv):
        return int(nearest), 0.0
    n = math.floor(inv)
    return n, inv - n


def expected_exact_draws(probs: Tensor, temperature: float) -> float:
    """The paper's expected number of sampler draws of the exact algorithm for a categorical ``P``.

    ``(n + 1{f>0} * sum_x P(x)^(1/T - 1)) / sum_x P(x)^(1/T)`` with ``1/T = n + f``.
    """
    n, f = split_temperature(temperature)
    p = probs.double()
    p = p[p > 0]
    z = p.pow(n + f).sum()
    extra = p.pow(n + f - 1.0).sum() if f > 0 else p.new_zeros(())
    return float((n + extra) / z)


def _draw(sampler: ChunkSampler, num: int, rows: int | None) -> Tensor:
    out = sampler(num)
    if out.dim() != 3 or out.shape[0] != num:
        raise ValueError(
            f"sampler({num}) must return a LongTensor [num, rows, K] with num={num}, got shape "
            f"{tuple(out.shape)}"
        )
    if rows is not None and out.shape[1] != rows:
        raise ValueError(
            f"sampler returned {out.shape[1]} rows after returning {rows} before; it must keep "
            "the number of rows fixed"
        )
    if out.dtype.is_floating_point:
        raise ValueError(f"sampler must return integer chunk ids, got dtype {out.dtype}")
    return out


def exact_temperature_sample_with_draws(
    sampler: ChunkSampler,
    temperature: float,
    *,
    max_draws: int = 10_000,
    on_exhausted: Literal["raise", "fallback"] = "raise",
    block_size: int = 64,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """:func:`exact_temperature_sample` that also returns the draws each row consumed.

    Returns:
        ``(samples[rows, K], draws[rows])``. ``draws`` counts the sampler draws the algorithm used
        for that row up to acceptance (the quantity the paper's cost formula describes); a row
        that fell back reports ``max_draws``.
    """
    n, f = split_temperature(temperature)
    if max_draws < n:
        raise ValueError(f"max_draws must be at least n = floor(1/T) = {n}, got {max_draws}")
    if on_exhausted not in ("raise", "fallback"):
        raise ValueError(f"on_exhausted must be 'raise' or 'fallback', got {on_exhausted!r}")
    if block_size < 1:
        raise ValueError(f"block_size must be positive, got {block_size}")

    first = _draw(sampler, min(n + (1 if f > 0 else 0), max_draws), None)
    rows, K = int(first.shape[1]), int(first.shape[2])
    device = first.device
    if n == 1 and f == 0.0:  # T = 1: the first draw is already exact
        return first[0].clone(), torch.ones(rows, dtype=torch.long, device=device)

    # Per-row state. phase 0: stage 1 (k identical draws so far); 1: stage 2 (index i); 2: done.
    phase = torch.zeros(rows, dtype=torch.long, device=device)
    k = torch.zeros(rows, dtype=torch.long, device=device)
    same = torch.ones(rows, dtype=torch.bool, device=device)
    i = torch.ones(rows, dtype=torch.long, device=device)
    cand = torch.zeros(rows, K, dtype=first.dtype, device=device)
    result = torch.zeros_like(cand)
    used = torch.zeros(rows, dtype=torch.long, device=device)
    block = first
    size = int(first.shape[0])
    while True:
        for d in range(int(block.shape[0])):
            active = (phase < 2) & (used < max_draws)
            if not bool(active.any()):
                break
            x = block[d]
            used += active.long()
            hit = (x == cand).all(-1)
            # stage 1: collect n draws and check they are identical
            s1 = active & (phase == 0)
            starting = s1 & (k == 0)
            cand = torch.where(starting[:, None], x, cand)
            same = torch.where(starting, True, same & hit)
            k = torch.where(s1, k + 1, k)
            full = s1 & (k == n)
            ok = full & same
            k = torch.where(full, 0, k)  # finished attempt: success moves on, failure restarts
            if f == 0.0:
                result = torch.where(ok[:, None], cand, result)
                phase = torch.where(ok, 2, phase)
            else:
                phase = torch.where(ok, 1, phase)
                i = torch.where(ok, 1, i)
            # stage 2 (rows that were already in it before this draw): Bernoulli factory for P^f
            if f > 0.0:
                s2 = active & (phase == 1) & ~ok
                match = s2 & hit
                u = torch.rand(rows, generator=generator, device=device, dtype=torch.float32)
                reject = s2 & ~match & (u < f / i.float())
                result = torch.where(match[:, None], cand, result)
                phase = torch.where(match, 2, torch.where(reject, 0, phase))
                i = torch.where(s2 & ~match & ~reject, i + 1, i)
        done = phase == 2
        exhausted = ~done & (used >= max_draws)
        if bool((done | exhausted).all()):
            break
        size = min(block_size, max(size * 2, n + 1))
        block = _draw(sampler, size, rows)
    if bool(exhausted.any()):
        bad = int(exhausted.sum())
        if on_exhausted == "raise":
            raise TemperatureSamplingError(
                f"exact temperature sampling at T={temperature:g} did not accept a sample for "
                f"{bad} of {rows} rows within max_draws={max_draws} draws; the distribution is too "
                "flat for this temperature (expected draws grow like 1/sum P^(1/T)). Raise "
                "max_draws, use a higher temperature, sampling='batch', or "
                "on_exhausted='fallback' to fall back to the batch approximation for such rows"
            )
        fresh = _draw(sampler, block_size, rows)
        fallback = batch_temperature_sample(fresh, temperature, generator=generator)
        result = torch.where(exhausted[:, None], fallback, result)
    return result, used


def exact_temperature_sample(
    sampler: ChunkSampler,
    temperature: float,
    *,
    max_draws: int = 10_000,
    on_exhausted: Literal["raise", "fallback"] = "raise",
    block_size: int = 64,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw one chunk per row exactly from ``P_T(x) ∝ P(x)^(1/T)`` using only samples of ``P``.

    With ``1/T = n + f``: stage 1 draws ``n`` samples and restarts unless all are identical
    (candidate ``x*``); stage 2 (when ``f > 0``) draws ``x`` for ``i = 1, 2, ...``, accepts ``x*``
    when ``x == x*``, restarts with probability ``f/i`` otherwise, and continues else. Stage 2
    accepts with probability ``P(x*)^f``, so the output is exactly ``P_T``. Rows are independent.

    Args:
        sampler: ``sampler(num) -> LongTensor[num, rows, K]``, i.i.d. chunks per row.
        temperature: ``T`` in ``(0, 1]``.
        max_draws: cap on draws per row.
        on_exhausted: ``"raise"`` (default) raises :class:`TemperatureSamplingError` when a row
            exceeds ``max_draws``; ``"fallback"`` gives such rows a sample of the batch
            approximation over ``block_size`` fresh candidates instead.
        block_size: most draws fetched from the sampler per call (blocks grow from ``n + 1``).
        generator: source of the stage-2 uniforms (the sampler brings its own randomness).

    Returns:
        ``LongTensor[rows, K]``.
    """
    out, _ = exact_temperature_sample_with_draws(
        sampler,
        temperature,
        max_draws=max_draws,
        on_exhausted=on_exhausted,
        block_size=block_size,
        generator=generator,
    )
    return out


def count_identical(candidates: Tensor) -> Tensor:
    """For ``candidates[N, rows, K]``, how many of the row's ``N`` candidates equal each one.

    Returns:
        ``LongTensor[N, rows]``: ``c[j, r]`` = number of ``j'`` with ``candidates[j', r] ==
        candidates[j, r]`` (all ``K`` tokens), ``j`` itself included.
    """
    if candidates.dim() != 3:
        raise ValueError(
            f"candidates must be [N, rows, K] chunk ids, got shape {tuple(candidates.shape)}"
        )
    N, rows, K = candidates.shape
    c = candidates.permute(1, 0, 2)  # [rows, N, K]
    # lexicographic order by repeated stable sorts, least significant token first
    perm = torch.arange(N, device=c.device).expand(rows, N)
    for t in reversed(range(K)):
        key = c[..., t].gather(1, perm)
        perm = perm.gather(1, torch.sort(key, dim=1, stable=True).indices)
    s = c.gather(1, perm[..., None].expand(rows, N, K))
    new_run = torch.ones(rows, N, dtype=torch.bool, device=c.device)
    new_run[:, 1:] = (s[:, 1:] != s[:, :-1]).any(-1)
    run = new_run.long().cumsum(1) - 1  # run id of each sorted candidate
    run_len = torch.zeros(rows, N, dtype=torch.long, device=c.device)
    run_len.scatter_add_(1, run, torch.ones_like(run))
    counts_sorted = run_len.gather(1, run)
    counts = torch.empty_like(counts_sorted).scatter_(1, perm, counts_sorted)
    return counts.t()


def batch_temperature_sample(
    candidates: Tensor, temperature: float, *, generator: torch.Generator | None = None
) -> Tensor:
    """Approximate ``P^(1/T)`` sampling from ``N`` candidates per row (the batch approximation).

    For ``T = 1/n``: with ``c_x`` the number of candidates equal to ``x``, at the first
    ``m = n, n-1, ..., 1`` such that some ``c_x >= m``, pick ``x`` with probability proportional
    to ``C(c_x, m)`` (``C(c_x, m) / C(N, m)`` is an unbiased estimate of ``P(x)^m``). Biased for
    finite ``N``; it converges to ``P_T`` as ``N`` grows, and larger ``N`` sharpens.

    Other temperatures (documented extension): with ``a = 1/T``, the exponents are
    ``a, a-1, ...`` (real), the first ``e`` with some ``c_x >= e`` is used, and the weight is the
    generalised binomial ``C(c_x, e)``; it reduces to the rule above when ``a`` is an integer and
    to picking a uniform candidate at ``T = 1``.

    Args:
        candidates: ``LongTensor[N, rows, K]``, ``N`` i.i.d. chunks per row.
        temperature: ``T`` in ``(0, 1]``.
        generator: source of the final categorical draw.

    Returns:
        ``LongTensor[rows, K]``.
    """
    n, f = split_temperature(temperature)
    if candidates.dim() != 3 or candidates.shape[0] < 1:
        raise ValueError(
            "candidates must be a non-empty LongTensor [N, rows, K], got shape "
            f"{tuple(candidates.shape)}"
        )
    if candidates.dtype.is_floating_point:
        raise ValueError(f"candidates must be integer chunk ids, got dtype {candidates.dtype}")
    counts = count_identical(candidates).t().double()  # [rows, N]
    w = _cascade_weights(counts, n, f)
    pick = torch.multinomial(w, 1, generator=generator).squeeze(1)  # [rows]
    rows = candidates.shape[1]
    return candidates[pick, torch.arange(rows, device=candidates.device)]


#: the integer cascade multiplies out C(c, n) / c directly up to this n: C(c, 32) stays finite in
#: float64 for any c < 10**10 candidates; beyond it the weights are formed in log space
_PRODUCT_MAX_N = 32


def _cascade_weights(counts: Tensor, n: int, f: float) -> Tensor:
    """Per-candidate weights ``[rows, N]`` of the batch approximation from counts ``[rows, N]``.

    A value with ``c`` copies gets ``C(c, e)`` in total, i.e. ``C(c, e) / c`` per candidate, at the
    cascade level ``e`` fixed by the row's largest count.
    """
    max_c = counts.max(dim=1, keepdim=True).values
    if f == 0.0 and n <= _PRODUCT_MAX_N:
        # integer cascade: m = min(n, max count); a candidate's weight C(c, m) / c =
        # (c-1)(c-2)...(c-m+1) / (m-1)!, which is 0 exactly when c < m (few small ops; for
        # larger n the product could overflow float64, and the log-space form below is used)
        m = torch.clamp(max_c, max=float(n))
        w = torch.ones_like(counts)
        for t in range(1, n):
            w = torch.where(m > t, w * ((counts - t) / t), w)
        return w.clamp(min=0.0)
    a = n + f
    # first exponent e in a, a-1, ... with e <= max count; e > 0 because max count >= 1
    steps = torch.clamp(torch.ceil(a - max_c - _INT_TOL), min=0.0)
    e = a - steps
    eligible = counts >= e - _INT_TOL
    # log C(c, e) - log c: the weight of one candidate so that a value gets C(c, e) in total
    log_w = (
        torch.lgamma(counts + 1.0)
        - torch.lgamma(e + 1.0)
        - torch.lgamma(torch.clamp(counts - e + 1.0, min=1e-12))
        - counts.log()
    )
    log_w = torch.where(eligible, log_w, torch.full_like(log_w, -math.inf))
    return (log_w - log_w.max(dim=1, keepdim=True).values).exp()


#: ``decode_position(states[M, *S]) -> LongTensor[M]``: token ids of M per-position states.
PositionDecoder = Callable[[Tensor], Tensor]

# group keys are ``group * _KEY_BASE + token``; groups < rows * N <= 2**31 keeps them in int64
_KEY_BASE = 2**32


def lazy_batch_temperature_sample(
    states: Tensor,
    decode_position: PositionDecoder,
    temperature: float,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """:func:`batch_temperature_sample`, decoding only the tokens the cascade needs.

    The batch approximation only picks among chunks that occur at least ``m`` times, so a
    candidate whose first ``t`` tokens are shared by fewer than ``m`` candidates of its row can
    never be picked at level ``m``. Positions are decoded one at a time and such candidates are
    dropped before their next position is decoded; rows where no chunk reaches ``m`` retry at the
    next level (re-using every token already decoded), and rows that fall to the last level of an
    integer cascade (a uniform pick) decode just the picked candidate. With a sharp head most
    candidates agree and little is saved; with a flat one almost all are dropped after their
    first token, so the per-position decoding costs about ``1/K`` of decoding every candidate.

    The result is exactly the batch approximation of the fully decoded candidates: the per-row
    weights are the same numbers, and with the same ``generator`` state the same chunks come out.

    Args:
        states: ``[N, rows, K, *S]`` per-position decoder states of ``N`` candidates per row
            (:meth:`calm_core.interfaces.Codec.decode_states`).
        decode_position: ``states[M, *S] -> LongTensor[M]`` token ids
            (:meth:`calm_core.interfaces.Codec.tokens_from_states`).
        temperature: ``T`` in ``(0, 1]``.
        generator: source of the final categorical draw.

    Returns:
        ``LongTensor[rows, K]``.
    """
    n, f = split_temperature(temperature)
    if states.dim() < 3 or states.shape[0] < 1:
        raise ValueError(
            f"states must be [N, rows, K, ...] decoder states, got shape {tuple(states.shape)}"
        )
    N, rows, K = states.shape[:3]
    device = states.device
    by_row = states.transpose(0, 1)  # [rows, N, K, *S] (a view)
    tokens = torch.full((rows, N, K), -1, dtype=torch.long, device=device)
    decoded = torch.zeros((rows, N, K), dtype=torch.bool, device=device)

    def decode(where: Tensor, t: int, through: int | None = None) -> None:
        """Decode positions ``t..through-1`` (default just ``t``) of the candidates in ``where``."""
        end = t + 1 if through is None else through
        r, j = where.nonzero(as_tuple=True)
        if r.numel():
            states_rj = by_row[r, j, t:end]  # [M, end - t, *S]: one call for all positions
            ids = decode_position(states_rj.reshape(-1, *states_rj.shape[2:])).long()
            tokens[r, j, t:end] = ids.reshape(r.numel(), end - t)
            decoded[r, j, t:end] = True

    counts = torch.ones((rows, N), dtype=torch.float64, device=device)
    unresolved = torch.ones(rows, dtype=torch.bool, device=device)
    uniform = torch.zeros(rows, dtype=torch.bool, device=device)
    for level in range(math.ceil(n + f - _INT_TOL), 0, -1):
        if not bool(unresolved.any()):
            break
        if level == 1 and f == 0.0:
            uniform = unresolved  # every weight is 1: no counts needed
            break
        active = unresolved[:, None].expand(rows, N).clone()
        group = torch.arange(rows, device=device)[:, None].expand(rows, N).clone()
        size = torch.zeros((rows, N), dtype=torch.long, device=device)
        for t in range(K):
            if t > 0 and 2 * int(active.sum()) > rows * N:
                # most candidates still share prefixes (a sharp head): decode the rest of their
                # positions in one call rather than one position at a time
                decode(active & ~decoded[:, :, t:].all(dim=2), t, K)
            decode(active & ~decoded[:, :, t], t)
            key = group[active] * _KEY_BASE + tokens[:, :, t][active]
            _, inverse, group_size = torch.unique(key, return_inverse=True, return_counts=True)
            group[active] = inverse
            size[active] = group_size[inverse]
            active &= size >= level
        found = active.any(dim=1)
        counts = torch.where(found[:, None] & active, size.double(), counts)
        unresolved &= ~found
    w = _cascade_weights(counts, n, f)
    pick = torch.multinomial(w, 1, generator=generator).squeeze(1)  # [rows]
    row_ids = torch.arange(rows, device=device)
    for t in range(K):  # the picked candidate of a uniform row may still lack positions
        missing = torch.zeros((rows, N), dtype=torch.bool, device=device)
        missing[row_ids, pick] = uniform & ~decoded[row_ids, pick, t]
        decode(missing, t)
    return tokens[row_ids, pick]
