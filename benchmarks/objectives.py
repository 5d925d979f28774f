"""The AR baseline trained on the Brier score instead of cross-entropy (quality phase ``ar_brier``).

Why this model exists: it separates the two things CALM changes at once. CALM replaces the
softmax with a continuous generator *and* cross-entropy with a strictly proper score that needs
only samples (the energy loss). For a codec whose chunk latents were equidistant points (a
simplex) with no posterior noise, the energy loss of a predictive distribution ``p`` over chunks
would be an affine function of the multi-class Brier score::

    E||X - y|| - 1/2 E||X - X'||  =  (d / 2) * ||p - onehot(y)||^2      (all distances d)

(``E||X - y|| = d (1 - p_y)``, ``E||X - X'|| = d (1 - sum p^2)``). So an AR model trained on the
Brier score is CALM at K=1 with the best conceivable codec and an exact, sample-free energy loss
over an explicit categorical: no generator that must learn a mixture, no Monte-Carlo noise, no
latent geometry. If this model also stays near the unigram in the budget, the objective family is
what is slow at this scale; if it learns the context like the cross-entropy AR, the slowness lives
in CALM's continuous machinery.

The model is the benchmark AR baseline (same shape, same initial weights) with only ``forward``
changed; cross-entropy is still reported (``cross_entropy``, ``perplexity``), not trained on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from calm_core.ar import ARModel
from torch import Tensor

__all__ = ["BrierTrainedLM", "brier_score_loss"]


def brier_score_loss(logits: Tensor, targets: Tensor, ignore_index: int = -100) -> Tensor:
    """Mean multi-class Brier score ``||softmax(logits) - onehot(target)||^2`` over the rows of
    ``logits [N, V]`` whose ``targets [N]`` differ from ``ignore_index`` (0 for a perfect
    prediction, 2 for a confident wrong one; ``1 - `` its value is the per-position Brier-1)."""
    if logits.dim() != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(
            f"logits must be [N, V] and targets [N], got {tuple(logits.shape)} and "
            f"{tuple(targets.shape)}"
        )
    keep = targets != ignore_index
    probs = torch.softmax(logits[keep].float(), dim=-1)
    hit = probs.gather(-1, targets[keep, None]).squeeze(-1)
    return (probs.square().sum(-1) - 2.0 * hit + 1.0).mean()


class BrierTrainedLM(ARModel):
    """:class:`~calm_core.ar.ARModel` whose training loss is the Brier score."""

    def forward(self, tokens: Tensor) -> dict[str, Tensor]:
        if tokens.dim() != 2 or tokens.shape[1] < 2:
            raise ValueError(f"tokens must be [B, T] with T >= 2, got {tuple(tokens.shape)}")
        logits = self.logits(tokens[:, :-1])
        flat = logits.reshape(-1, logits.shape[-1])
        targets = tokens[:, 1:].reshape(-1)
        ignore = self.config.pad_id if self.config.pad_id is not None else -100
        loss = brier_score_loss(flat, targets, ignore)
        with torch.no_grad():
            ce = F.cross_entropy(flat.float(), targets, ignore_index=ignore)
        return {"loss": loss, "cross_entropy": ce, "perplexity": ce.exp()}
