"""BrierLM of a CALM: two head samples per position, decoded to chunks (SPEC.md §6).

For every prediction index ``i`` (the hidden state after input chunks ``0..i``, predicting chunk
``i+1``) the head draws two latents, decoded by the codec to chunks ``x1, x2``; with target chunk
``y``:

* ``K >= max_n``: n-grams are the first ``n`` tokens of the chunk (chunk-aligned starts):
  ``1{x1[:n] = y[:n]} + 1{x2[:n] = y[:n]} - 1{x1[:n] = x2[:n]}``.
* ``K < max_n``: an n-gram spans ``s = ceil(max_n / K)`` chunks. Accuracy uses the teacher-forced
  samples at ``i .. i+s-1`` (sample ``k`` at ``i+1`` is a draw given the true chunk ``i+1``, which
  is all that matters when sample ``k`` at ``i`` equals it). The collision term rolls the model out
  along the first sample's path: step ``j`` feeds ``x1`` of step ``j-1`` and draws two new chunks,
  and token-wise agreement is multiplied along while the two samples agree. All starts roll out
  together through :class:`~calm_core.metrics.brier_rollout.RolloutCache` (one backbone call per
  step); starts whose samples already disagree in every sequence are dropped.

The model side is the :class:`ChunkPairModel` protocol, so any "chunk sampler" (e.g. a synthetic
categorical chunk model whose Brier-n is known exactly) can be scored by the same code;
:class:`CALMRollout` adapts a :class:`calm_core.calm.CALM`. The head draws are injectable
(``head_sample=``) for parity with stored reference noise.

Start set for ``K < max_n``: every start with ``s`` target chunks, ``i = 0 .. P-s``. The reference
scores one start fewer (``i <= P-s-1``); ``reference_starts=True`` reproduces that.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from calm_core.metrics.brier import (
    BRIER_ORDERS,
    BrierScores,
    brier_from_chunk_samples,
    ngram_valid,
    prefix_match,
)
from calm_core.metrics.brier_rollout import RolloutCache

__all__ = ["CALMRollout", "ChunkPairModel", "HeadSampleFn", "calm_brier_scores"]

#: ``head_sample(hidden[N, H], step, starts[S]) -> latents[2, N, D]``: ``N = B * S`` rows,
#: sequence-major (row ``b * S + c`` is sequence ``b`` at ``starts[c]``). At step 0 ``starts`` are
#: all prediction indices ``0..P-1``; at rollout step ``j >= 1`` the surviving starts.
HeadSampleFn = Callable[[Tensor, int, Tensor], Tensor]


@runtime_checkable
class ChunkPairModel(Protocol):
    """Two independent next-chunk samples, teacher-forced and rolled out from every start."""

    @property
    def chunk_size(self) -> int:
        """K."""
        ...

    def begin(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """``tokens [B, L*K]`` -> two samples ``[B, L-1, K]`` of chunk ``i+1`` given ``0..i``."""
        ...

    def extend(
        self, fed: Tensor, starts: Tensor, keep: Tensor | None, step: int
    ) -> tuple[Tensor, Tensor]:
        """Feed chunks ``fed [B, S, K]`` at positions ``starts + step`` -> two samples each.

        Start ``i`` conditions on true chunks ``0..i`` and the chunks fed for it at earlier steps;
        ``keep`` (None at step 1) selects which of the previous step's starts go on.
        """
        ...


class CALMRollout:
    """:class:`ChunkPairModel` for a CALM (``backbone``, ``head``, ``codec``, ``embed_chunks``).

    Args:
        model: the CALM.
        generator: randomness of the default head draws.
        head_sample: replaces the head draws (see :data:`HeadSampleFn`).
        max_steps: most rollout steps (``ceil(max_n / K) - 1``).
    """

    def __init__(
        self,
        model: Any,
        generator: torch.Generator | None = None,
        head_sample: HeadSampleFn | None = None,
        max_steps: int = BRIER_ORDERS - 1,
    ) -> None:
        self.model = model
        self.generator = generator
        self.head_sample = head_sample
        self.max_steps = max_steps
        self.cache: RolloutCache | None = None

    @property
    def chunk_size(self) -> int:
        return int(self.model.chunk_size)

    def _pairs(self, hidden: Tensor, step: int, starts: Tensor) -> tuple[Tensor, Tensor]:
        B, S, H = hidden.shape
        flat = hidden.reshape(B * S, H)
        if self.head_sample is not None:
            latents = self.head_sample(flat, step, starts)
        else:
            latents = self.model.head.sample(flat, 2, self.generator)
        chunks = self.model.codec.decode_tokens(latents[:2].float())  # [2, B*S, K]
        chunks = chunks.view(2, B, S, -1)
        return chunks[0], chunks[1]

    def begin(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        K = self.chunk_size
        self.cache = RolloutCache(len(self.model.backbone.layers), max(1, self.max_steps))
        hidden = self.model.hidden_states(tokens[:, :-K], self.cache)  # [B, P, H]
        return self._pairs(hidden, 0, torch.arange(hidden.shape[1], device=hidden.device))

    def extend(
        self, fed: Tensor, starts: Tensor, keep: Tensor | None, step: int
    ) -> tuple[Tensor, Tensor]:
        if self.cache is None:
            raise RuntimeError("call begin() first")
        self.cache.begin_step(starts, keep)
        x = self.model.embed_chunks(fed)
        hidden = self.model.backbone(x, starts + step, self.cache, self.cache.mask())
        return self._pairs(hidden, step, starts)


def _window(chunks: Tensor, s: int, num: int) -> Tensor:
    """``[B, P, K]`` -> ``[B, num, s*K]``: chunks ``i..i+s-1`` concatenated, for ``i < num``."""
    B, _, K = chunks.shape
    w = chunks.unfold(1, s, 1)[:, :num]  # [B, num, K, s]
    return w.transpose(-1, -2).reshape(B, num, s * K)


@torch.no_grad()
def calm_brier_scores(
    model: Any,
    tokens: Tensor,
    *,
    generator: torch.Generator | None = None,
    head_sample: HeadSampleFn | None = None,
    max_n: int = BRIER_ORDERS,
    pad_id: int | None = None,
    reference_starts: bool = False,
) -> BrierScores:
    """Per-start Brier-1..max_n of a CALM (or any :class:`ChunkPairModel`) on ``tokens``.

    Args:
        model: a :class:`ChunkPairModel`, or a CALM (wrapped in :class:`CALMRollout`).
        tokens: ``[B, L*K]`` with enough chunks for one start (``L >= 1 + ceil(max_n/K)``).
        generator: randomness of the default head draws.
        head_sample: replaces the head draws of a CALM (ignored for a :class:`ChunkPairModel`).
        max_n: largest n-gram.
        pad_id: n-grams whose targets contain it are not counted.
        reference_starts: for ``K < max_n``, drop the last start as the reference does.

    Returns:
        :class:`BrierScores` with ``scores[B, S, max_n]``; ``S = L-1`` when ``K >= max_n``.
    """
    if isinstance(model, ChunkPairModel):
        roll: ChunkPairModel = model
    else:
        steps = math.ceil(max_n / int(model.chunk_size)) - 1
        roll = CALMRollout(model, generator, head_sample, max_steps=steps)
    K = roll.chunk_size
    if tokens.dim() != 2 or tokens.shape[1] % K:
        raise ValueError(f"tokens must be [B, L*K] with K={K}, got shape {tuple(tokens.shape)}")
    B, T = tokens.shape
    L = T // K
    s = max(1, math.ceil(max_n / K))
    P = L - 1
    num = P - s + 1 - (1 if reference_starts and s > 1 else 0)
    if num < 1:
        raise ValueError(
            f"{T} tokens ({L} chunks of K={K}) leave no start with {max_n} target tokens; "
            f"use at least {(s + 1 + int(reference_starts and s > 1)) * K} tokens per block"
        )
    targets = tokens[:, K:].reshape(B, P, K)
    pred1, pred2 = roll.begin(tokens)
    if s == 1:
        scores = brier_from_chunk_samples(pred1, pred2, targets, max_n)
        return BrierScores(scores, ngram_valid(targets, pad_id, max_n))

    y = _window(targets, s, num)  # [B, num, s*K]
    accuracy = prefix_match(_window(pred1, s, num), y, max_n) + prefix_match(
        _window(pred2, s, num), y, max_n
    )
    # token-wise agreement of the two rolled-out paths; False where not rolled out
    agree = torch.zeros(B, num, s * K, dtype=torch.bool, device=tokens.device)
    c1, c2 = pred1[:, :num], pred2[:, :num]
    agree[..., :K] = c1 == c2
    starts = torch.arange(num, device=tokens.device)
    same = (c1 == c2).all(-1)  # [B, S_j]: every chunk so far identical
    for j in range(1, s):
        keep = same.any(dim=0)
        if not bool(keep.any()):
            break
        starts = starts[keep]
        c1, c2 = roll.extend(c1[:, keep], starts, keep if j > 1 else None, j)
        same = same[:, keep] & (c1 == c2).all(-1)
        agree[:, starts, j * K : (j + 1) * K] = (c1 == c2) & agree[:, starts, j * K - 1 : j * K]
    collision = agree[..., :max_n].to(torch.float32).cumprod(dim=-1)
    scores = accuracy - collision
    return BrierScores(scores, ngram_valid(y, pad_id, max_n))
