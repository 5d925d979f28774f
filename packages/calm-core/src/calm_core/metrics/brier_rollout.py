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

    Args:
        num_layers: backbone layers.
        max_steps: most rollout steps that will be appended (sizes the preallocated buffers).
    """

    def __init__(self, num_layers: int, max_steps: int = 3) -> None:
        self.num_layers = int(num_layers)
        self.max_steps = int(max_steps)
        self._prefix: list[tuple[Tensor, Tensor] | None] = [None] * self.num_layers
        # per layer: one buffer [B, kv_heads, T + max_steps * S0, head_dim] for keys and values;
        # the prefix is copied in once, step blocks of width S_j follow it
        self._buf: list[tuple[Tensor, Tensor] | None] = [None] * self.num_layers
        self._steps = 0
        self._width = 0  # S_j: starts in the current step blocks
        self._rolling = False
        self.starts: Tensor | None = None

    @property
    def seq_len(self) -> int:
        return 0

    @property
    def prefix_len(self) -> int:
        first = self._prefix[0]
        return 0 if first is None else int(first[0].shape[2])

    @property
    def steps(self) -> int:
        """Rollout steps already appended."""
        return self._steps

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        if not self._rolling:
            if self._prefix[layer] is not None:
                raise RuntimeError("the prefix was already recorded; call begin_step() to roll out")
            self._prefix[layer] = (k, v)
            return k, v
        buf = self._buf[layer]
        assert buf is not None
        T, S = self.prefix_len, self._width
        lo = T + self._steps * S
        if k.shape[2] != S:
            raise ValueError(
                f"a rollout step must feed {S} positions (one per start), got {k.shape[2]}"
            )
        buf[0][:, :, lo : lo + S] = k
        buf[1][:, :, lo : lo + S] = v
        if layer == self.num_layers - 1:
            self._steps += 1
        return buf[0][:, :, : lo + S], buf[1][:, :, : lo + S]

    def begin_step(self, starts: Tensor, keep: Tensor | None = None) -> None:
        """Prepare a rollout step for ``starts [S]`` (prefix indices of the last true position).

        Args:
            starts: start positions, ascending; at the first step any subset of the prefix.
            keep: at later steps, bool ``[S_prev]`` selecting which previous starts go on
                (``starts`` must equal ``previous_starts[keep]``).
        """
        first = self._prefix[0]
        if first is None:
            raise RuntimeError("record the prefix (a teacher-forced call with this cache) first")
        if self._steps >= self.max_steps:
            raise RuntimeError(f"this cache holds at most max_steps={self.max_steps} steps")
        S = int(starts.shape[0])
        T = self.prefix_len
        if not self._rolling:
            for layer in range(self.num_layers):
                pre = self._prefix[layer]
                assert pre is not None
                B, H, _, D = pre[0].shape
                shape = (B, H, T + self.max_steps * S, D)
                kb = pre[0].new_empty(shape)
                vb = pre[1].new_empty(shape)
                kb[:, :, :T] = pre[0]
                vb[:, :, :T] = pre[1]
                self._buf[layer] = (kb, vb)
                self._prefix[layer] = (kb[:, :, :T], vb[:, :, :T])
            self._rolling = True
        elif keep is None:
            raise ValueError("later rollout steps need `keep` (which previous starts go on)")
        if keep is not None and self._steps:
            idx = keep.nonzero().squeeze(1)
            old = self._width
            for layer in range(self.num_layers):
                buf = self._buf[layer]
                assert buf is not None
                for t in buf:  # compact every step block to the surviving starts, in place
                    blocks = t[:, :, T : T + self._steps * old].unflatten(2, (self._steps, old))
                    kept = blocks.index_select(3, idx)
                    t[:, :, T : T + self._steps * S] = kept.flatten(2, 3)
        self._width = S
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
        own = torch.eye(S, dtype=torch.bool, device=device).repeat(1, self._steps + 1)
        return torch.cat([prefix, own], dim=1)[None, None]
