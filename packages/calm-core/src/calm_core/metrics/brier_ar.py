"""BrierLM of the autoregressive baseline: exact accuracy term, variance-reduced collision term.

For a start ``i`` (true prefix ``0..i``) and the n-gram ``y = tokens[i+1 .. i+n]``:

* accuracy, exact: ``2 P(y) = 2 * prod_k p(y_k | prefix, y_<k)`` from one teacher-forced pass;
* collision ``sum_x P(x)^2`` (``x`` an n-gram), estimated without bias by rolling out two sampled
  tokens ``(a_j, b_j)`` per step along the first sample's path and taking
  ``1{a_0 = b_0, ..., a_{n-2} = b_{n-2}} * sum_v q_{n-1}(v)^2`` where ``q_j`` is the next-token
  distribution after feeding ``a_0..a_{j-1}`` (SPEC.md §6). Conditioning the last step on its exact
  collision probability instead of a third sample removes most of the variance.

Every start ``i = 0 .. T-1-max_n`` is scored (the reference's start set). The rollouts of all
starts run together through :class:`~calm_core.metrics.brier_rollout.RolloutCache`: one backbone
call per step (at most three), with no Python loop over positions. The draws are injectable
(``draw=``), so tests and parity checks can control them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from calm_core.metrics.brier import BRIER_ORDERS, BrierScores, ngram_valid
from calm_core.metrics.brier_rollout import RolloutCache

__all__ = [
    "ARRolloutModel",
    "CachedLMRollout",
    "DrawFn",
    "ar_brier_scores",
    "multinomial_draw",
]

#: ``draw(probs[B, S, V], step, starts[S]) -> LongTensor[B, S, 2]``: two tokens per start.
DrawFn = Callable[[Tensor, int, Tensor], Tensor]


@runtime_checkable
class ARRolloutModel(Protocol):
    """Next-token distributions of an AR model, teacher-forced and rolled out from every start."""

    def begin(self, tokens: Tensor) -> Tensor:
        """``tokens [B, T]`` -> next-token probabilities ``[B, T, V]`` (position t predicts t+1)."""
        ...

    def extend(self, fed: Tensor, starts: Tensor, keep: Tensor | None, step: int) -> Tensor:
        """Feed ``fed [B, S]`` at positions ``starts + step`` -> probabilities ``[B, S, V]``.

        Start ``i`` conditions on the true prefix ``0..i`` and the tokens fed for it at earlier
        steps. ``keep`` (None at step 1) selects which of the previous step's starts go on.
        """
        ...


class CachedLMRollout:
    """:class:`ARRolloutModel` for any LM with ``backbone`` and ``logits(tokens, positions,
    cache, attn_mask)`` (e.g. :class:`calm_core.ar.ARModel`).

    For an LM with ``hidden_states`` and a bias-free ``lm_head`` Linear, the logits and the
    probabilities of every call are written into two buffers allocated at :meth:`begin` and reused
    (a fresh ``[B, T, V]`` tensor per call costs page faults and cold writes), so **each call's
    result is overwritten by the next call**: use it before calling again.
    """

    def __init__(self, model: Any, max_steps: int = BRIER_ORDERS - 1) -> None:
        self.model = model
        self.max_steps = max_steps
        self.cache: RolloutCache | None = None
        head = getattr(model, "lm_head", None)
        self._head: nn.Linear | None = (
            head
            if isinstance(head, nn.Linear)
            and head.bias is None
            and callable(getattr(model, "hidden_states", None))
            else None
        )
        self._buffers: tuple[Tensor, Tensor] | None = None  # logits, probabilities

    def _probs(self, tokens: Tensor, positions: Tensor | None, attn_mask: Tensor | None) -> Tensor:
        if self._head is None:
            logits = self.model.logits(
                tokens, positions=positions, cache=self.cache, attn_mask=attn_mask
            )
            return torch.softmax(logits.float(), dim=-1)
        hidden = self.model.hidden_states(tokens, positions, self.cache, attn_mask)
        B, T, H = hidden.shape
        weight = self._head.weight
        V = weight.shape[0]
        n = B * T * V
        if self._buffers is None or self._buffers[0].numel() < n:
            self._buffers = (
                hidden.new_empty(n, dtype=torch.float32),
                hidden.new_empty(n, dtype=torch.float32),
            )
        logits = self._buffers[0][:n].view(B * T, V)
        probs = self._buffers[1][:n].view(B, T, V)
        if hidden.dtype == torch.float32 and weight.dtype == torch.float32:
            torch.mm(hidden.reshape(B * T, H), weight.t(), out=logits)
        else:
            logits.copy_(F.linear(hidden.reshape(B * T, H), weight))
        torch.softmax(logits.view(B, T, V), dim=-1, out=probs)
        return probs

    def begin(self, tokens: Tensor) -> Tensor:
        self.cache = RolloutCache(len(self.model.backbone.layers), self.max_steps)
        return self._probs(tokens, None, None)

    def extend(self, fed: Tensor, starts: Tensor, keep: Tensor | None, step: int) -> Tensor:
        if self.cache is None:
            raise RuntimeError("call begin() first")
        self.cache.begin_step(starts, keep)
        return self._probs(fed, starts + step, self.cache.mask())


#: block size of the two-level inverse-CDF draw
DRAW_BLOCK = 64


def multinomial_draw(generator: torch.Generator | None = None) -> DrawFn:
    """The default draw: two tokens with replacement from each distribution.

    Inverse-CDF sampling in two levels: cumulative sums of the per-block masses of ``DRAW_BLOCK``
    consecutive tokens locate each draw's block, and a cumulative sum over that block alone
    locates the token. One read of the distributions and no ``[rows, V]`` temporary, instead of a
    full cumulative sum (``torch.multinomial`` is slower still on many rows of a large vocabulary).
    """

    def draw(probs: Tensor, step: int, starts: Tensor) -> Tensor:
        B, S, V = probs.shape
        blk = DRAW_BLOCK if V % DRAW_BLOCK == 0 and V > DRAW_BLOCK else V
        nb = V // blk
        blocks = probs.unflatten(-1, (nb, blk))  # a view, also of a sliced [B, S, V]
        mass = blocks.sum(dim=-1).cumsum(dim=-1)  # [B, S, nb]
        u = torch.rand(B, S, 2, generator=generator, device=probs.device, dtype=probs.dtype)
        target = u * mass[..., -1:]
        block = torch.searchsorted(mass, target, right=True).clamp_(max=nb - 1)  # [B, S, 2]
        before = torch.where(
            block > 0, mass.gather(-1, (block - 1).clamp_min(0)), torch.zeros_like(target)
        )
        b = torch.arange(B, device=probs.device)[:, None, None]
        s = torch.arange(S, device=probs.device)[None, :, None]
        inner = blocks[b, s, block].cumsum(dim=-1)  # [B, S, 2, blk]: the two chosen blocks
        pos = torch.searchsorted(inner, (target - before).unsqueeze(-1), right=True)
        out: Tensor = block * blk + pos.squeeze(-1).clamp_(max=blk - 1)
        return out

    return draw


@torch.no_grad()
def ar_brier_scores(
    model: Any,
    tokens: Tensor,
    *,
    generator: torch.Generator | None = None,
    draw: DrawFn | None = None,
    max_n: int = BRIER_ORDERS,
    pad_id: int | None = None,
) -> BrierScores:
    """Per-start Brier-1..max_n of an AR model on ``tokens [B, T]``.

    Args:
        model: an :class:`ARRolloutModel`, or an LM accepted by :class:`CachedLMRollout`.
        tokens: ``[B, T]`` with ``T > max_n``.
        generator: randomness of the default draws.
        draw: replaces the default two-token draws (see :data:`DrawFn`).
        max_n: largest n-gram.
        pad_id: n-grams whose targets contain it are not counted.

    Returns:
        :class:`BrierScores` with ``scores[B, T - max_n, max_n]`` (start ``i`` in row ``i``).
    """
    if tokens.dim() != 2 or tokens.shape[1] <= max_n:
        raise ValueError(
            f"tokens must be [B, T] with T > {max_n} (a start needs {max_n} target tokens), got "
            f"{tuple(tokens.shape)}"
        )
    roll: ARRolloutModel = (
        model if isinstance(model, ARRolloutModel) else CachedLMRollout(model, max_n - 1)
    )
    draw_fn = draw if draw is not None else multinomial_draw(generator)
    B, T = tokens.shape
    S = T - max_n
    probs = roll.begin(tokens)  # [B, T, V]
    golden = probs[:, :-1].gather(-1, tokens[:, 1:, None]).squeeze(-1).double()  # [B, T-1]
    # ngram[b, i, n-1] = prod_{k<n} p(y_{i+1+k})
    ngram = golden.unfold(1, max_n, 1)[:, :S].cumprod(dim=-1)  # [B, S, max_n]
    accuracy = 2.0 * ngram

    collision = torch.zeros(B, S, max_n, dtype=torch.float64, device=tokens.device)
    same = torch.ones(B, S, dtype=torch.bool, device=tokens.device)  # all earlier draws agree
    starts = torch.arange(S, device=tokens.device)
    q = probs[:, :S]
    keep: Tensor | None = None
    for j in range(max_n):
        active_same = same[:, starts]
        # sum_v q(v)^2 as a squared norm: one reduction pass, no [B, S, V] temporary (vecdot
        # multiplies into a temporary first, ~13x slower here)
        sum_sq = torch.linalg.vector_norm(q, dim=-1).double().square()
        collision[:, starts, j] = active_same.double() * sum_sq
        if j == max_n - 1:
            break
        pair = draw_fn(q, j, starts)  # [B, S_j, 2]
        agree = active_same & (pair[..., 0] == pair[..., 1])
        same[:, starts] = agree
        keep = agree.any(dim=0)
        if not bool(keep.any()):
            break
        starts = starts[keep]
        q = roll.extend(pair[:, keep, 0], starts, keep, j + 1)

    targets = tokens.unfold(1, max_n, 1)[:, 1 : S + 1]  # [B, S, max_n]: tokens i+1..i+max_n
    scores = (accuracy - collision).float()
    return BrierScores(scores, ngram_valid(targets, pad_id, max_n))
