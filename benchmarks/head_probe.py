"""The energy head alone on the bigram task (quality phase ``head_bigram``).

The question it answers: CALM at K=1 stays at its context-free floor in the 15-minute budget while
the AR baseline trained on the Brier score (``ar_brier``) learns the context at ~3/4 of the pace
of cross-entropy. Is the generator itself slow to learn a context-dependent 4,096-way mixture, or
does something around it (the backbone, the budget) hold it back?

Both probes here see the same thing: the *previous token* through a learned 256-dim embedding
(no backbone), and predict the next token of the K=1 training data, with the same batches,
optimizer and steps:

* ``energy``: the bench energy head (2 blocks, noise 32, N=8, M=100) predicting the next token's
  latent under the K=1 codec, trained on the energy loss; scored by the library's two-sample
  Brier-1 of the decoded samples;
* ``softmax``: a linear softmax layer trained on the Brier score ``||p - onehot(y)||^2``, the
  energy loss's explicit-categorical counterpart (:mod:`benchmarks.objectives`); scored by its
  exact Brier-1 ``2 p_y - sum p^2``.

The held-out pairs are the first ``EVAL_PAIRS`` consecutive tokens of the held-out split; the
floors printed beside them are the training unigram's and the training bigram's (add-0.01
smoothing) exact Brier-1, the best a predictor from the previous token alone can roughly do.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from benchmarks import models as M
from benchmarks.objectives import brier_score_loss

__all__ = ["EVAL_STEPS", "bigram_floors", "run_head_probe"]

EVAL_STEPS = (50, 100, 200, 400, 800, 1600)
EVAL_PAIRS = 8192
PAIR_BATCH = 1024
WIDTH = 256


def bigram_floors(train: np.ndarray, val: np.ndarray, vocab: int) -> dict[str, float]:
    """Exact held-out Brier-1 of the training unigram and of the smoothed training bigram on the
    pairs ``val[i] -> val[i+1]``."""
    uni = np.bincount(train, minlength=vocab) / len(train)
    prev, nxt = val[:-1], val[1:]
    counts = np.full((vocab, vocab), 0.01, dtype=np.float32)
    np.add.at(counts, (train[:-1], train[1:]), 1.0)
    rows = counts[prev] / counts[prev].sum(axis=1, keepdims=True)
    return {
        "unigram": float((2 * uni[nxt]).mean() - (uni**2).sum()),
        "bigram": float((2 * rows[np.arange(len(nxt)), nxt]).mean() - (rows**2).sum(1).mean()),
    }


def _energy_probe(codec: Any) -> tuple[nn.Module, Callable[..., Tensor], Callable[..., float]]:
    head = M.build_calm("energy", codec=codec, chunk=1).head

    def loss(h: Tensor, y: Tensor) -> Tensor:
        return head.loss(h, codec.encode(y[:, None]).reshape(-1)).mean()

    def score(h: Tensor, y: Tensor) -> float:
        two = head.sample(h, 2, torch.Generator().manual_seed(2))  # [2, n, D]
        tok = codec.decode_tokens(two.float()).reshape(2, -1)
        return float((2.0 * (tok[0] == y).double() - (tok[0] == tok[1]).double()).mean())

    return head, loss, score


def _softmax_probe(vocab: int) -> tuple[nn.Module, Callable[..., Tensor], Callable[..., float]]:
    out = nn.Linear(WIDTH, vocab)

    def loss(h: Tensor, y: Tensor) -> Tensor:
        return brier_score_loss(out(h), y)

    def score(h: Tensor, y: Tensor) -> float:  # exact Brier-1 = 2 p_y - sum p^2 = 1 - the loss
        return 1.0 - float(brier_score_loss(out(h), y))

    return out, loss, score


def _train_probe(
    kind: str, codec: Any, train: np.ndarray, val: np.ndarray, steps: int, lr: float
) -> dict[str, Any]:
    torch.manual_seed(0)
    vocab = M.VOCAB
    embed = nn.Embedding(vocab, WIDTH)
    model, loss_fn, score_fn = _energy_probe(codec) if kind == "energy" else _softmax_probe(vocab)
    params = [*embed.parameters(), *model.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    x, y = torch.from_numpy(train[:-1]), torch.from_numpy(train[1:])
    vx, vy = torch.from_numpy(val[:-1]), torch.from_numpy(val[1:])
    gen = torch.Generator().manual_seed(1)
    curve, start = [], time.perf_counter()
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(x), (PAIR_BATCH,), generator=gen)
        loss = loss_fn(embed(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step in EVAL_STEPS or step == steps:
            with torch.no_grad():
                b1 = score_fn(embed(vx), vy)
            curve.append({"step": step, "train_loss": float(loss.detach()), "brier1": b1})
    return {"curve": curve, "wall_s": round(time.perf_counter() - start, 1)}


def run_head_probe(
    codec: Any, train: np.ndarray, val: np.ndarray, *, steps: int, lr: float
) -> dict[str, Any]:
    """Both probes for ``steps`` optimizer steps on the pairs of ``train``; scored on the first
    ``EVAL_PAIRS`` held-out pairs. Returns the curves and the floors."""
    train = np.asarray(train, dtype=np.int64)
    val = np.asarray(val, dtype=np.int64)[: EVAL_PAIRS + 1]
    return {
        "steps": steps,
        "pair_batch": PAIR_BATCH,
        "lr": lr,
        "eval_pairs": len(val) - 1,
        "floors": bigram_floors(train, val, M.VOCAB),
        "energy": _train_probe("energy", codec, train, val, steps, lr),
        "softmax": _train_probe("softmax", codec, train, val, steps, lr),
    }
