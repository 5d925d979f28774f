"""Fused linear + cross-entropy for the codec's decoder: one ``[M, V]`` buffer, reused.

The autoencoder's training loss is the cross-entropy of ``hidden @ embedding^T`` against the
chunk's tokens, with a vocabulary-wide logits matrix per step. :func:`linear_cross_entropy` computes
the same value and gradients as ``F.cross_entropy(F.linear(hidden, weight), labels)`` in one buffer
(the autograd function turns it into exponentials, then into the logits' gradient, in place), and
:class:`LogitsWorkspace` hands that buffer back from step to step.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["LogitsWorkspace", "linear_cross_entropy"]


class LogitsWorkspace:
    """A reusable ``[M, V]`` buffer for :func:`linear_cross_entropy`.

    The fused cross-entropy writes the logits of a training step into one large buffer and
    consumes it in the backward. A buffer that large is returned to the OS when freed, so
    allocating it afresh each step costs page faults and cold writes; this hands the same buffer
    back step after step. It is checked out for the life of one autograd graph, so a
    second forward before the first backward simply gets a new buffer: reuse never aliases.
    """

    def __init__(self) -> None:
        self._free: Tensor | None = None

    def take(self, rows: int, cols: int, like: Tensor) -> Tensor:
        buf = self._free
        if (
            buf is not None
            and buf.shape == (rows, cols)
            and buf.dtype == like.dtype
            and (buf.device == like.device)
        ):
            self._free = None
            return buf
        return like.new_empty(rows, cols)

    def give(self, buf: Tensor) -> None:
        self._free = buf


class _LinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of ``hidden[M, H] @ weight[V, H]^T`` against ``labels[M]``, and hits.

    Same value and gradients as ``F.cross_entropy(F.linear(hidden, weight), labels)``, with one
    ``[M, V]`` buffer instead of four: the logits are turned into shifted exponentials in place,
    kept for the backward, and turned into the logits' gradient ``(p - onehot) * g / M`` in place
    there (one scaling pass). No log-softmax buffer, no zero-filled NLL gradient; the accuracy
    compares the label's logit with the row maximum that stabilises the exponent (no argmax).
    The buffer comes from a :class:`LogitsWorkspace` when one is given, and goes back to it once
    the backward (or, without gradients, the forward) is done with it.
    """

    @staticmethod
    def forward(
        ctx: Any,
        hidden: Tensor,
        weight: Tensor,
        labels: Tensor,
        workspace: LogitsWorkspace | None,
        will_backward: bool,
    ) -> tuple[Tensor, Tensor]:
        rows, cols = hidden.shape[0], weight.shape[0]
        if workspace is None:
            logits = hidden @ weight.t()
        else:
            logits = torch.mm(hidden, weight.t(), out=workspace.take(rows, cols, hidden))
        # amax, not max(dim): CPU index reductions are ~8x slower than value reductions
        top = logits.amax(dim=-1)
        target = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
        exp = logits.sub_(top.unsqueeze(-1)).exp_()
        total = exp.sum(dim=-1, keepdim=True)
        loss = (top + total.squeeze(-1).log() - target).mean()
        hits = (target >= top).sum()  # the label's logit is the largest (argmax up to exact ties)
        ctx.mark_non_differentiable(hits)
        ctx.workspace = workspace
        if will_backward:
            ctx.save_for_backward(hidden, weight, exp, total, labels)
        elif workspace is not None:  # no backward will come: the buffer is free again
            workspace.give(exp)
        return loss, hits

    @staticmethod
    def backward(
        ctx: Any, grad_loss: Tensor, _grad_hits: Tensor | None
    ) -> tuple[Tensor | None, Tensor | None, None, None, None]:
        hidden, weight, exp, total, labels = ctx.saved_tensors
        scale = grad_loss / exp.shape[0]
        grad = exp.mul_(scale / total)  # the saved exponentials are used once: reuse them
        grad.scatter_add_(-1, labels.unsqueeze(-1), (-scale).expand(labels.shape[0], 1))
        grad_hidden = grad @ weight if ctx.needs_input_grad[0] else None
        grad_weight = grad.t() @ hidden if ctx.needs_input_grad[1] else None
        if ctx.workspace is not None:
            ctx.workspace.give(exp)
        return grad_hidden, grad_weight, None, None, None


def linear_cross_entropy(
    hidden: Tensor, weight: Tensor, labels: Tensor, workspace: LogitsWorkspace | None = None
) -> tuple[Tensor, Tensor]:
    """``(mean CE, argmax hits)`` of the logits ``hidden[M, H] @ weight[V, H]^T`` vs ``labels[M]``.

    The backward consumes its saved buffer in place, so it may run once per forward. Pass a
    :class:`LogitsWorkspace` to reuse one logits buffer across calls (training loops).
    """
    will_backward = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    loss, hits = _LinearCrossEntropy.apply(hidden, weight, labels, workspace, will_backward)
    return loss, hits
