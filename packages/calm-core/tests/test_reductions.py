"""argmax_last is torch.argmax over the last dimension, on the blocked path and the plain one."""

from __future__ import annotations

import math

import pytest
import torch
from calm_core.reductions import argmax_last


@pytest.mark.parametrize(
    "shape", [(1600, 4096), (3, 50, 4000), (20000, 300), (7,), (100, 1000), (2, 4097)]
)
def test_matches_torch_argmax_on_random_inputs(shape: tuple[int, ...]) -> None:
    x = torch.randn(shape, generator=torch.Generator().manual_seed(len(shape)))
    assert torch.equal(argmax_last(x), x.argmax(dim=-1))


def test_ties_nan_inf_and_integers_follow_torch() -> None:
    ties = torch.zeros(200, 4096)
    ties[:, 700] = 1.0
    ties[:, 5] = 1.0  # two maxima in different blocks: the first wins
    ties[:, 6] = 1.0  # and in the same block
    assert torch.equal(argmax_last(ties), torch.full((200,), 5))
    nan = torch.randn(200, 4096, generator=torch.Generator().manual_seed(1))
    nan[3, 100] = nan[3, 50] = math.nan
    assert int(argmax_last(nan)[3]) == int(nan.argmax(-1)[3]) == 50
    low = torch.full((100, 4000), -math.inf)
    assert torch.equal(argmax_last(low), low.argmax(-1))  # all -inf (and -inf padding)
    low[:, 3999] = -1e30
    assert torch.equal(argmax_last(low), torch.full((100,), 3999))
    ints = torch.randint(-5, 5, (300, 4096), generator=torch.Generator().manual_seed(2))
    assert torch.equal(argmax_last(ints), ints.argmax(-1))
