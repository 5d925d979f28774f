"""A KV cache that continues a sequence from every start position at once.

Both BrierLM estimators need, for every start ``i`` of a scored sequence, a short continuation
(at most three steps) along a sampled path, conditioned on the true prefix ``0..i``. Looping over
starts would re-run the model once per position. Instead the ``S`` starts become ``S`` queries of
one backbone call: each query attends to the shared prefix keys (computed once, by the
teacher-forced pass) plus the keys appended for *its own* start at earlier rollout steps.

What is unusual: the cache computes that attention itself (the backbone's attention calls
:meth:`RolloutCache.attend` when a cache has one), because the dense form wastes most of its work.
Written as one masked attention, step ``j`` of ``S`` starts over a ``T``-token prefix would score
``S x (T + j S)`` query-key pairs, of which each query needs only ``i + 1 + j``. Here the two parts
are scored apart and normalised together (one softmax over their union):

* prefix keys: the queries are cut into blocks of consecutive starts, and a block only scores the
  prefix keys up to its last start (a block-causal layout, ~``(1/2 + 1/(2 n))`` of the pairs for
  ``n`` blocks);
* own keys: start ``i``'s keys from steps ``1..j`` are scored by an elementwise product, ``j``
  scores per query instead of ``j S``.

:meth:`RolloutCache.mask` still gives the equivalent dense mask over ``[prefix | step 1 | ... ]``
(the layout :meth:`RolloutCache.update` returns), for backbones that only know ``update``.
Starts whose two samples already disagree in every sequence are dropped between steps
(:meth:`RolloutCache.begin_step`), so cheap cases stay cheap.

``seq_len`` reports 0: rollout calls always pass explicit ``positions``, and the backbone would
otherwise count the ``S`` parallel queries as ``S`` consecutive new positions in its
context-length check.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["RolloutCache"]

#: queries per block of the block-causal prefix attention
QUERY_BLOCK = 64


class RolloutCache:
    """Prefix keys/values shared by all starts, plus per-start appended keys/values.

    Usage: pass it as ``cache`` to the teacher-forced backbone call over the prefix (it records
    the keys), call :meth:`begin_step` with the surviving starts before each rollout step, and pass
    ``starts + step`` as ``positions`` of that step's call (and :meth:`mask` as ``attn_mask``,
    which a backbone using :meth:`attend` may ignore).

    Args:
        num_layers: backbone layers.
        max_steps: most rollout steps that will be appended (sizes the preallocated buffers).
    """

    def __init__(self, num_layers: int, max_steps: int = 3) -> None:
        self.num_layers = int(num_layers)
        self.max_steps = int(max_steps)
        self._prefix: list[tuple[Tensor, Tensor] | None] = [None] * self.num_layers
        # per layer: keys and values of the rollout steps, [B, kv_heads, max_steps, S0, head_dim];
        # step j of the start in column c lives at [:, :, j, c]
        self._own: list[tuple[Tensor, Tensor] | None] = [None] * self.num_layers
        self._steps = 0
        self._width = 0  # S_j: starts in the current step
        self._rolling = False
        self.starts: Tensor | None = None
        self._blocks: list[_QueryBlock] = []  # the step's query blocks, shared by all layers

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

    # ----------------------------------------------------------------------------- storage
    def _store(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor] | None:
        """Record the prefix (teacher-forced call; returns None) or append a rollout step's keys
        (returns the layer's own-key buffers ``[B, kv, steps, S, d]``, this step included)."""
        if not self._rolling:
            if self._prefix[layer] is not None:
                raise RuntimeError("the prefix was already recorded; call begin_step() to roll out")
            # contiguous once, so that per-block key slices fold into bmm batches without copies
            self._prefix[layer] = (k.contiguous(), v.contiguous())
            return None
        own = self._own[layer]
        assert own is not None
        S = self._width
        if k.shape[2] != S:
            raise ValueError(
                f"a rollout step must feed {S} positions (one per start), got {k.shape[2]}"
            )
        own[0][:, :, self._steps, :S] = k
        own[1][:, :, self._steps, :S] = v
        used = (own[0][:, :, : self._steps + 1, :S], own[1][:, :, : self._steps + 1, :S])
        if layer == self.num_layers - 1:
            self._steps += 1
        return used

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """The generic cache contract: store, and return ``[prefix | step 1 | ... | step j]``
        keys/values for a dense attention under :meth:`mask`."""
        own = self._store(layer, k, v)
        if own is None:
            return k, v
        pre = self._prefix[layer]
        assert pre is not None
        keys = torch.cat([pre[0], own[0].flatten(2, 3)], dim=2)
        values = torch.cat([pre[1], own[1].flatten(2, 3)], dim=2)
        return keys, values

    def attend(
        self,
        layer: int,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
    ) -> Tensor:
        """Store ``k, v`` and return the attention output ``[B, heads, T_new, head_dim]``.

        ``q [B, heads, T_new, d]``, ``k, v [B, kv_heads, T_new, d]`` (rotary already applied).
        The teacher-forced call attends as usual (``attn_mask`` / ``is_causal``); a rollout step
        attends exactly as under :meth:`mask`, without materialising the masked-out pairs.
        """
        own = self._store(layer, k, v)
        if own is None:
            return F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=attn_mask,
                is_causal=is_causal,
                enable_gqa=q.shape[1] != k.shape[1],
            )
        pre = self._prefix[layer]
        assert pre is not None
        return _rollout_attention(q, pre[0], pre[1], own[0], own[1], self._blocks)

    # ------------------------------------------------------------------------------- steps
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
        if not self._rolling:
            for layer in range(self.num_layers):
                pre = self._prefix[layer]
                assert pre is not None
                B, H, _, D = pre[0].shape
                shape = (B, H, self.max_steps, S, D)
                self._own[layer] = (pre[0].new_empty(shape), pre[1].new_empty(shape))
            self._rolling = True
        elif keep is None:
            raise ValueError("later rollout steps need `keep` (which previous starts go on)")
        if keep is not None and self._steps and self._width > S:  # all kept: nothing to move
            idx = keep.nonzero().squeeze(1)
            j = self._steps
            for layer in range(self.num_layers):
                own = self._own[layer]
                assert own is not None
                for t in own:  # compact the stored steps to the surviving starts, in place
                    t[:, :, :j, :S] = t[:, :, :j, : self._width].index_select(3, idx)
        self._width = S
        self.starts = starts
        self._blocks = _query_blocks(starts)

    def mask(self) -> Tensor:
        """Boolean ``[1, 1, S, T + (steps + 1) * S]`` for the coming step's call: the dense
        equivalent of :meth:`attend` over the keys :meth:`update` returns."""
        if self.starts is None:
            raise RuntimeError("call begin_step() first")
        starts = self.starts
        T = self.prefix_len
        S = int(starts.shape[0])
        device = starts.device
        prefix = torch.arange(T, device=device)[None, :] <= starts[:, None]
        own = torch.eye(S, dtype=torch.bool, device=device).repeat(1, self._steps + 1)
        return torch.cat([prefix, own], dim=1)[None, None]


@dataclass(frozen=True)
class _QueryBlock:
    """Queries ``lo:hi`` of a rollout step: they score prefix keys ``0:keys``; keys from
    ``first`` on are hidden from some of them (``hidden [n, keys - first]``, None if none are)."""

    lo: int
    hi: int
    keys: int
    first: int
    hidden: Tensor | None


def _query_blocks(starts: Tensor) -> list[_QueryBlock]:
    """Cut ascending ``starts [S]`` into query blocks (once per step, shared by all layers)."""
    values = starts.tolist()
    blocks = []
    for lo in range(0, len(values), QUERY_BLOCK):
        hi = min(lo + QUERY_BLOCK, len(values))
        keys = values[hi - 1] + 1  # starts ascend: the block's last start sees the most keys
        first = values[lo] + 1  # keys before this are visible to the whole block
        hidden = None
        if first < keys:
            cols = torch.arange(first, keys, device=starts.device)
            hidden = cols[None, :] > starts[lo:hi, None]
        blocks.append(_QueryBlock(lo, hi, keys, first, hidden))
    return blocks


def _rollout_attention(
    q: Tensor,
    pre_k: Tensor,
    pre_v: Tensor,
    own_k: Tensor,
    own_v: Tensor,
    blocks: list[_QueryBlock],
) -> Tensor:
    """Softmax attention of query ``c`` (start ``starts[c]``) over prefix keys ``0..starts[c]``
    and its own step keys ``own_k[:, :, :, c]``, block by block (:func:`_query_blocks`).

    Shapes: ``q [B, H, S, d]``; ``pre_k, pre_v [B, Hkv, T, d]``; ``own_k, own_v [B, Hkv, J, S, d]``
    with ``H`` a multiple of ``Hkv`` (grouped queries share a key head). Returns ``[B, H, S, d]``.
    """
    B, H, S, d = q.shape
    Hkv, J = pre_k.shape[1], own_k.shape[2]
    G = H // Hkv
    qg = (q * (1.0 / math.sqrt(d))).view(B, Hkv, G, S, d)  # scaled once; contiguous
    # own keys, one score per step: [B, Hkv, G, S, J] (elementwise: J is tiny, a bmm per query
    # row would be mostly overhead)
    own_s = torch.stack([(qg * own_k[:, :, j, None]).sum(-1) for j in range(J)], dim=-1)
    own_p = torch.empty_like(own_s)
    out = q.new_empty(B, Hkv, G, S, d)  # unnormalised prefix part first
    denom = q.new_empty(B, Hkv, G, S, 1)
    for blk in blocks:
        lo, hi, L, n = blk.lo, blk.hi, blk.keys, blk.hi - blk.lo
        blk_q = qg[:, :, :, lo:hi].reshape(B, Hkv, G * n, d)
        pre_s = (blk_q @ pre_k[:, :, :L].transpose(-1, -2)).view(B, Hkv, G, n, L)
        if blk.hidden is not None:
            pre_s[..., blk.first : L].masked_fill_(blk.hidden, float("-inf"))
        blk_own = own_s[:, :, :, lo:hi]
        top = torch.maximum(pre_s.amax(-1, keepdim=True), blk_own.amax(-1, keepdim=True))
        pre_p = pre_s.sub_(top).exp_()
        torch.exp(blk_own - top, out=own_p[:, :, :, lo:hi])
        torch.add(
            pre_p.sum(-1, keepdim=True),
            own_p[:, :, :, lo:hi].sum(-1, keepdim=True),
            out=denom[:, :, :, lo:hi],
        )
        out[:, :, :, lo:hi] = (pre_p.view(B, Hkv, G * n, L) @ pre_v[:, :, :L]).view(B, Hkv, G, n, d)
    for j in range(J):
        out.addcmul_(own_p[..., j, None], own_v[:, :, j, None])
    return out.div_(denom).view(B, H, S, d)
