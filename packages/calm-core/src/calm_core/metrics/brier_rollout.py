"""A KV cache that continues a sequence from every start position at once.

Both BrierLM estimators need, for every start ``i`` of a scored sequence, a short continuation
(at most three steps) along a sampled path, conditioned on the true prefix ``0..i``. Looping over
starts would re-run the model once per position. Instead the ``S`` starts become ``S`` queries of
one backbone call: each query attends to the shared prefix keys (computed once, by the
teacher-forced pass) plus the keys appended for *its own* start at earlier rollout steps.

Key layout after ``j`` rollout steps (per layer): ``[prefix (T) | step 1 (S) | ... | step j (S)]``.
The boolean mask lets start ``i`` see prefix keys ``<= i`` and column ``i`` of every step block
(the diagonal), so one call computes all continuations without a Python loop over positions.
Starts whose two samples already disagree in every sequence are dropped between steps
(:meth:`RolloutCache.keep`), so cheap cases stay cheap.

``seq_len`` reports 0: rollout calls always pass explicit ``positions`` and ``attn_mask``, and the
backbone would otherwise count the ``S`` parallel queries as ``S`` consecutive new positions in
its context-length check.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["RolloutCache"]


class RolloutCache:
    """Prefix keys/values shared by all starts, plus per-start appended keys/values.

    Usage: pass it as ``cache`` to the teacher-forced backbone call over the prefix (it records
    the keys), call :meth:`begin_step` with the surviving starts before each rollout step, and pass
    :meth:`mask` and ``starts + step`` as ``attn_mask`` / ``positions`` of that step's call.
    """

    def __init__(self, num_layers: int) -> None:
        self.num_layers = int(num_layers)
        self._prefix_k: list[Tensor | None] = [None] * self.num_layers
        self._prefix_v: list[Tensor | None] = [None] * self.num_layers
        self._steps_k: list[list[Tensor]] = [[] for _ in range(self.num_layers)]
        self._steps_v: list[list[Tensor]] = [[] for _ in range(self.num_layers)]
        self._rolling = False
        self.starts: Tensor | None = None

    @property
    def seq_len(self) -> int:
        return 0

    @property
    def prefix_len(self) -> int:
        k = self._prefix_k[0]
        return 0 if k is None else int(k.shape[2])

    @property
    def steps(self) -> int:
        """Rollout steps already appended."""
        return len(self._steps_k[0])

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        if not self._rolling:
            if self._prefix_k[layer] is not None:
                raise RuntimeError("the prefix was already recorded; call begin_step() to roll out")
            self._prefix_k[layer], self._prefix_v[layer] = k, v
            return k, v
        pk, pv = self._prefix_k[layer], self._prefix_v[layer]
        assert pk is not None and pv is not None
        self._steps_k[layer].append(k)
        self._steps_v[layer].append(v)
        return torch.cat([pk, *self._steps_k[layer]], dim=2), torch.cat(
            [pv, *self._steps_v[layer]], dim=2
        )

    def begin_step(self, starts: Tensor, keep: Tensor | None = None) -> None:
        """Prepare a rollout step for ``starts [S]`` (prefix indices of the last true position).

        Args:
            starts: start positions, ascending; at the first step any subset of the prefix.
            keep: at later steps, bool ``[S_prev]`` selecting which previous starts go on
                (``starts`` must equal ``previous_starts[keep]``).
        """
        if self._prefix_k[0] is None:
            raise RuntimeError("record the prefix (a teacher-forced call with this cache) first")
        if keep is not None:
            idx = keep.nonzero().squeeze(1)
            for layer in range(self.num_layers):
                self._steps_k[layer] = [t.index_select(2, idx) for t in self._steps_k[layer]]
                self._steps_v[layer] = [t.index_select(2, idx) for t in self._steps_v[layer]]
        elif self.steps:
            raise ValueError("later rollout steps need `keep` (which previous starts go on)")
        self._rolling = True
        self.starts = starts

    def mask(self) -> Tensor:
        """Boolean ``[1, 1, S, T + (steps + 1) * S]`` for the coming step's call."""
        if self.starts is None:
            raise RuntimeError("call begin_step() first")
        starts = self.starts
        T = self.prefix_len
        S = int(starts.shape[0])
        device = starts.device
        prefix = torch.arange(T, device=device)[None, :] <= starts[:, None]
        own = torch.eye(S, dtype=torch.bool, device=device).repeat(1, self.steps + 1)
        return torch.cat([prefix, own], dim=1)[None, None]
