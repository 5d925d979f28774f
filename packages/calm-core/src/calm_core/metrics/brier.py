"""BrierLM: likelihood-free evaluation from model samples (SPEC.md §6), and its aggregation.

``Brier(P, y) = 2 P(y) - sum_x P(x)^2`` is strictly proper and has the unbiased two-sample estimate
``1{x1 = y} + 1{x2 = y} - 1{x1 = x2}``. Brier-n scores the next ``n`` tokens as one outcome;
BrierLM is ``100 * (Brier-1 * Brier-2 * Brier-3 * Brier-4)^(1/4)``.

What is unusual here:

* The geometric mean is only meaningful when every Brier-n is positive. The reference clamps a
  negative *product* to 0, which misses an even number of negative factors (an untrained CALM
  whose two samples always agree but never match the target has Brier-1..4 of about -1 and scores
  98.8). :func:`aggregate_brier` reports BrierLM as 0 whenever any Brier-n is <= 0, and flags it
  as not meaningful whenever any 95% interval includes 0 as well; Brier-1..4 and their standard
  errors are always reported, and carry the signal for small models.
* Standard errors treat each evaluated sequence (block) as one cluster: starts inside a sequence
  overlap and are correlated, so a per-position standard error would be too optimistic. With a
  single sequence the per-position standard error is used instead.

The model-specific estimators live in :mod:`calm_core.metrics.brier_calm` (CALM: two head samples
per position) and :mod:`calm_core.metrics.brier_ar` (the AR baseline: exact accuracy term,
variance-reduced collision term); both return per-position scores that
:class:`BrierAccumulator` aggregates.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "BRIER_ORDERS",
    "BrierAccumulator",
    "BrierResult",
    "BrierScores",
    "aggregate_brier",
    "brier_from_chunk_samples",
    "ngram_valid",
    "prefix_match",
]

#: n = 1..4, as in the paper
BRIER_ORDERS = 4
#: two-sided 95% normal quantile used for the "interval includes 0" flag
Z_95 = 1.959963984540054


def prefix_match(a: Tensor, b: Tensor, max_n: int = BRIER_ORDERS) -> Tensor:
    """``out[..., n-1] = 1`` when the first ``n`` tokens of ``a`` and ``b`` agree (``n <= max_n``).

    Args:
        a: token ids ``[..., M]`` with ``M >= max_n``.
        b: token ids of the same shape.

    Returns:
        Float tensor ``[..., max_n]`` (the running product of token equality).
    """
    if a.shape != b.shape:
        raise ValueError(f"cannot compare token tensors of shapes {tuple(a.shape)} and {b.shape}")
    if a.shape[-1] < max_n:
        raise ValueError(f"need at least {max_n} tokens to score {max_n}-grams, got {a.shape[-1]}")
    eq = (a[..., :max_n] == b[..., :max_n]).to(torch.float32)
    return eq.cumprod(dim=-1)


def brier_from_chunk_samples(
    pred1: Tensor, pred2: Tensor, targets: Tensor, max_n: int = BRIER_ORDERS
) -> Tensor:
    """Per-position Brier-1..max_n from two sampled chunks when ``K >= max_n``.

    The n-gram is the first ``n`` tokens of the chunk (chunk-aligned starts):
    ``1{x1[:n] = y[:n]} + 1{x2[:n] = y[:n]} - 1{x1[:n] = x2[:n]}``.

    Args:
        pred1: first sample's tokens ``[..., K]``.
        pred2: second sample's tokens ``[..., K]``.
        targets: true tokens ``[..., K]``.

    Returns:
        ``[..., max_n]`` float scores (mean over positions gives the estimator).
    """
    return (
        prefix_match(pred1, targets, max_n)
        + prefix_match(pred2, targets, max_n)
        - prefix_match(pred1, pred2, max_n)
    )


def ngram_valid(targets: Tensor, pad_id: int | None, max_n: int = BRIER_ORDERS) -> Tensor:
    """``out[..., n-1]`` is True when the first ``n`` target tokens hold no padding id.

    Args:
        targets: the outcome tokens ``[..., M]`` (``M >= max_n``) of each start.
        pad_id: padding id (None: everything is valid).
    """
    shape = (*targets.shape[:-1], max_n)
    if pad_id is None:
        return torch.ones(shape, dtype=torch.bool, device=targets.device)
    return (targets[..., :max_n] != pad_id).to(torch.int8).cumprod(dim=-1).bool()


@dataclass(frozen=True)
class BrierScores:
    """Per-start scores of one batch: ``scores[B, S, n]`` and which entries count."""

    scores: Tensor
    valid: Tensor

    def means(self) -> list[float]:
        """Mean of each Brier-n over the valid entries of this batch."""
        w = self.valid.to(torch.float64)
        s = (self.scores.to(torch.float64) * w).flatten(0, -2).sum(0)
        c = w.flatten(0, -2).sum(0)
        return [float(x) for x in s / c.clamp(min=1)]


@dataclass(frozen=True)
class BrierResult:
    """Brier-1..4 with standard errors, and BrierLM (x100 and raw).

    Attributes:
        brier: Brier-1..n.
        brier_se: standard error of each (clustered by sequence).
        count: number of scored starts for each n.
        brierlm: ``100 * geometric mean``; 0 when any Brier-n <= 0.
        brierlm_raw: the geometric mean itself (``brierlm / 100``); 0 likewise.
        brierlm_meaningful: False when any Brier-n <= 0 or any 95% interval includes 0.
        warning: why BrierLM is not meaningful (None when it is).
    """

    brier: list[float]
    brier_se: list[float]
    count: list[int]
    brierlm: float
    brierlm_raw: float
    brierlm_meaningful: bool
    warning: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``brier`` is keyed ``"1".."4"``)."""
        d = asdict(self)
        d["brier"] = {str(i + 1): v for i, v in enumerate(self.brier)}
        d["brier_se"] = {str(i + 1): v for i, v in enumerate(self.brier_se)}
        d["count"] = {str(i + 1): v for i, v in enumerate(self.count)}
        extra = d.pop("extra")
        d.update(extra)
        return d


def aggregate_brier(
    brier: Sequence[float],
    brier_se: Sequence[float] | None = None,
    count: Sequence[int] | None = None,
) -> BrierResult:
    """BrierLM from Brier-1..n, with the non-positive / interval-includes-0 flag.

    Args:
        brier: Brier-1..n point estimates.
        brier_se: their standard errors (None: unknown, only the sign is checked).
        count: number of scored starts for each n (reported only).
    """
    b = [float(x) for x in brier]
    if not b:
        raise ValueError("need at least one Brier-n to aggregate")
    if any(math.isnan(x) for x in b):
        raise ValueError(f"Brier-n must be numbers, got {b}; were any starts scored?")
    se = [float(x) for x in brier_se] if brier_se is not None else [math.nan] * len(b)
    if len(se) != len(b):
        raise ValueError(f"brier_se has {len(se)} entries for {len(b)} Brier-n")
    cnt = [int(x) for x in count] if count is not None else [0] * len(b)
    nonpos = [i + 1 for i, x in enumerate(b) if x <= 0.0]
    warning: str | None = None
    if nonpos:
        names = ", ".join(f"Brier-{n} = {b[n - 1]:.4g}" for n in nonpos)
        warning = (
            f"{names} <= 0: the geometric mean BrierLM is undefined and is reported as 0 (the "
            "reference's clamp of a negative product misses an even number of negative "
            "factors); compare Brier-1..4 with their standard errors instead"
        )
        return BrierResult(b, se, cnt, 0.0, 0.0, False, warning)
    raw = math.exp(sum(math.log(x) for x in b) / len(b))
    unsure = [i + 1 for i, (x, s) in enumerate(zip(b, se, strict=True)) if not x - Z_95 * s > 0.0]
    if unsure and brier_se is not None:
        names = ", ".join(f"Brier-{n} = {b[n - 1]:.4g} ± {se[n - 1]:.2g}" for n in unsure)
        warning = (
            f"the 95% interval of {names} includes 0, so BrierLM is dominated by noise; "
            "evaluate more blocks or compare Brier-1..4 with their standard errors"
        )
    return BrierResult(b, se, cnt, 100.0 * raw, raw, warning is None, warning)


class BrierAccumulator:
    """Streams per-start scores and produces a :class:`BrierResult`.

    Every row of every batch passed to :meth:`update` is one cluster (an evaluated sequence);
    the standard error of each Brier-n is the cluster-robust one over those sequences.
    """

    def __init__(self, max_n: int = BRIER_ORDERS) -> None:
        self.max_n = int(max_n)
        self._sums: list[Tensor] = []  # [rows, n] per update
        self._counts: list[Tensor] = []
        self._sumsq = torch.zeros(self.max_n, dtype=torch.float64)

    def update(self, scores: BrierScores | Tensor, valid: Tensor | None = None) -> None:
        """Add ``scores[B, S, n]`` (B sequences, S starts each); ``valid`` masks entries."""
        if isinstance(scores, BrierScores):
            valid = scores.valid
            scores = scores.scores
        if scores.dim() != 3 or scores.shape[-1] != self.max_n:
            raise ValueError(
                f"scores must be [B, S, {self.max_n}] (sequences, starts, n), got "
                f"{tuple(scores.shape)}"
            )
        s = scores.detach().to(device="cpu", dtype=torch.float64)
        if valid is None:
            w = torch.ones_like(s)
        else:
            w = valid.detach().to(device="cpu", dtype=torch.float64)
        self._sums.append((s * w).sum(1))
        self._counts.append(w.sum(1))
        self._sumsq += (s * s * w).sum((0, 1))

    @property
    def num_sequences(self) -> int:
        return sum(int(x.shape[0]) for x in self._sums)

    def result(self) -> BrierResult:
        """Brier-n means, clustered standard errors and BrierLM."""
        if not self._sums:
            raise ValueError("no scores were added; evaluate at least one block")
        sums = torch.cat(self._sums)  # [G, n]
        counts = torch.cat(self._counts)
        total = counts.sum(0)
        if bool((total == 0).any()):
            raise ValueError(
                "some Brier-n has no scored start (all n-grams were padding or blocks were too "
                "short); use longer blocks"
            )
        mean = sums.sum(0) / total
        G = sums.shape[0]
        if G > 1:
            resid = sums - mean * counts
            var = resid.pow(2).sum(0) * (G / (G - 1)) / total.pow(2)
        else:
            var = (self._sumsq - total * mean.pow(2)).clamp(min=0) / (total - 1).clamp(min=1)
            var = var / total
        return aggregate_brier(mean.tolist(), var.sqrt().tolist(), total.long().tolist())
