"""A faster exact argmax over the last dimension, for the large ``[rows, vocab]`` decodes.

PyTorch's CPU ``argmax`` (like ``max(dim)``) is an index reduction, slower than the value
reduction ``amax``. Over a vocabulary this matters when many rows are decoded at once (the batch
temperature sampler decodes ``[candidates * batch, V]`` logits per step; ``benchmarks/`` measures
the difference). The trick: ``amax`` over blocks of 64 entries, ``argmax`` over the (64x fewer)
block maxima, then ``argmax`` inside the winning block. Both argmaxes return the first maximum,
so the result is the first maximum overall, exactly ``torch.argmax`` (NaN included: a NaN block
maximum wins like a NaN entry does). Small inputs take the plain ``argmax``, which is faster
there.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["argmax_last"]

_BLOCK = 64
#: below this many elements the plain argmax is faster than the blocked one
_MIN_ELEMENTS = 65536


def argmax_last(x: Tensor) -> Tensor:
    """``torch.argmax(x, dim=-1)``, computed through block maxima for large inputs."""
    V = x.shape[-1] if x.dim() else 0
    if x.numel() < _MIN_ELEMENTS or V < 4 * _BLOCK or x.is_complex():
        return x.argmax(dim=-1)
    num_blocks = -(-V // _BLOCK)
    pad = num_blocks * _BLOCK - V
    if pad:
        low = -math.inf if x.is_floating_point() else torch.iinfo(x.dtype).min
        x = F.pad(x, (0, pad), value=low)
    blocks = x.reshape(*x.shape[:-1], num_blocks, _BLOCK)
    best = blocks.amax(dim=-1).argmax(dim=-1, keepdim=True)  # [..., 1]
    winner = blocks.gather(-2, best.unsqueeze(-1).expand(*best.shape, _BLOCK)).squeeze(-2)
    return best.squeeze(-1) * _BLOCK + winner.argmax(dim=-1)
