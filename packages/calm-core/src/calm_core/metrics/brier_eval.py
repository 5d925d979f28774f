"""BrierLM of any CALM or AR model on a token stream: blocks, batching, dispatch, aggregation.

A packed split is cut into non-overlapping blocks of ``block_len`` tokens (from the start, in
order, so an evaluation is reproducible); every block is one scored sequence (one cluster of the
standard error). The model kind is recognised by its surface: a model with a ``head`` and a
``codec`` is scored as a CALM (:func:`calm_brier_scores`), one with ``logits`` as an AR LM
(:func:`ar_brier_scores`). n-grams whose target holds the padding id are not scored.

:func:`brier_evaluator` wraps this as the ``evaluate(model) -> dict[str, float]`` callback the
trainer calls every ``eval_every`` steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from calm_core.metrics.brier import BRIER_ORDERS, BrierAccumulator, BrierResult
from calm_core.metrics.brier_ar import ar_brier_scores
from calm_core.metrics.brier_calm import calm_brier_scores

__all__ = ["brier_evaluator", "evaluate_brier", "is_calm", "iter_blocks", "model_kind"]


def is_calm(model: Any) -> bool:
    """True for a CALM-like model (generative head + codec + chunk size)."""
    return all(hasattr(model, a) for a in ("head", "codec", "chunk_size", "embed_chunks"))


def model_kind(model: Any) -> str:
    """``"calm"`` or ``"ar"``; TypeError for anything else."""
    if is_calm(model):
        return "calm"
    if hasattr(model, "logits") and hasattr(model, "backbone"):
        return "ar"
    raise TypeError(
        f"cannot compute BrierLM for a {type(model).__name__}: expected a CALM (head + codec) or "
        "an AR language model (logits); a codec directory only has reconstruction metrics"
    )


def iter_blocks(
    tokens: np.ndarray[Any, Any] | Tensor,
    block_len: int,
    batch_size: int,
    num_blocks: int | None = None,
) -> Iterator[Tensor]:
    """Consecutive non-overlapping blocks ``LongTensor[b, block_len]``, ``b <= batch_size``."""
    total = int(tokens.shape[0]) // block_len
    if total == 0:
        raise ValueError(
            f"the split has {int(tokens.shape[0])} tokens, fewer than one block of {block_len}; "
            "use a shorter --block-len"
        )
    n = total if num_blocks is None else min(num_blocks, total)
    for first in range(0, n, batch_size):
        rows = min(batch_size, n - first)
        chunk = tokens[first * block_len : (first + rows) * block_len]
        if isinstance(chunk, Tensor):
            yield chunk.long().reshape(rows, block_len)
        else:
            yield torch.from_numpy(np.asarray(chunk, dtype=np.int64)).view(rows, block_len)


@torch.no_grad()
def evaluate_brier(
    model: Any,
    tokens: np.ndarray[Any, Any] | Tensor,
    *,
    block_len: int = 512,
    num_blocks: int | None = None,
    batch_size: int = 8,
    seed: int = 0,
    pad_id: int | None = None,
    max_n: int = BRIER_ORDERS,
    progress: bool = False,
) -> BrierResult:
    """Brier-1..max_n (with clustered standard errors) and BrierLM of a CALM or AR model.

    Args:
        model: a CALM or an AR LM (e.g. :class:`calm_core.ar.ARModel`).
        tokens: 1-D token stream (e.g. ``PackedDataset.tokens``).
        block_len: tokens per scored sequence (a multiple of K for a CALM).
        num_blocks: score only the first ``num_blocks`` blocks (default: all).
        batch_size: blocks per forward pass.
        seed: seed of the estimator's sampling (a generator on the model's device, so the
            global random state is untouched).
        pad_id: n-grams whose targets contain it are not scored.
        progress: show a progress bar on stderr.
    """
    kind = model_kind(model)
    if kind == "calm" and block_len % int(model.chunk_size):
        raise ValueError(
            f"block_len {block_len} is not a multiple of the CALM's chunk size K={model.chunk_size}"
        )
    was_training = bool(getattr(model, "training", False))
    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    acc = BrierAccumulator(max_n)
    total = int(tokens.shape[0]) // block_len
    n = total if num_blocks is None else min(num_blocks, total)
    bar: Any = None
    if progress:
        bar = tqdm(total=n, desc=f"BrierLM ({kind})", unit="block", leave=False)
    try:
        for batch in iter_blocks(tokens, block_len, batch_size, num_blocks):
            batch = batch.to(device)
            if kind == "calm":
                scores = calm_brier_scores(
                    model, batch, generator=generator, max_n=max_n, pad_id=pad_id
                )
            else:
                scores = ar_brier_scores(
                    model, batch, generator=generator, max_n=max_n, pad_id=pad_id
                )
            acc.update(scores)
            if bar is not None:
                bar.update(batch.shape[0])
    finally:
        if bar is not None:
            bar.close()
        model.train(was_training)
    return acc.result()


def brier_evaluator(
    tokens: np.ndarray[Any, Any] | Tensor,
    *,
    block_len: int = 512,
    num_blocks: int | None = 16,
    batch_size: int = 8,
    seed: int = 0,
    pad_id: int | None = None,
) -> Callable[[Any], dict[str, float]]:
    """An ``evaluate(model) -> dict[str, float]`` callback for the trainer.

    Keys: ``brier1..brier4``, ``brier1_se..brier4_se``, ``brierlm`` (x100; 0 when some Brier-n
    is <= 0, still reported when only an interval includes 0) and ``brierlm_meaningful`` (1.0 when
    every Brier-n is positive with its interval above 0, else 0.0). The same blocks and seed every
    call, so successive evaluations differ only through the model.
    """

    def evaluate(model: Any) -> dict[str, float]:
        r = evaluate_brier(
            model,
            tokens,
            block_len=block_len,
            num_blocks=num_blocks,
            batch_size=batch_size,
            seed=seed,
            pad_id=pad_id,
        )
        out: dict[str, float] = {}
        for i, (b, se) in enumerate(zip(r.brier, r.brier_se, strict=True)):
            out[f"brier{i + 1}"] = b
            out[f"brier{i + 1}_se"] = se if math.isfinite(se) else 0.0
        out["brierlm"] = r.brierlm
        out["brierlm_meaningful"] = float(r.brierlm_meaningful)
        return out

    return evaluate
