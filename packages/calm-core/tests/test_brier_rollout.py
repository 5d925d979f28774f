"""RolloutCache: its split (block-causal prefix + own keys) attention equals the dense mask."""

from __future__ import annotations

import pytest
import torch
from calm_core.backbone import Backbone, BackboneConfig
from calm_core.metrics import brier_rollout
from calm_core.metrics.brier_rollout import RolloutCache
from torch import Tensor


class DenseRolloutCache(RolloutCache):
    """The same cache seen through the generic contract only: ``update`` + ``mask``."""

    attend = None  # type: ignore[assignment]


def _roll(
    cache_cls: type[RolloutCache], backbone: Backbone, x: Tensor, plan: list[Tensor]
) -> list[Tensor]:
    """Teacher-forced prefix, then one rollout step per entry of ``plan`` (bool keep masks over
    the previous step's starts; the first entry selects starts from the prefix)."""
    gen = torch.Generator().manual_seed(5)
    B, T, H = x.shape
    cache = cache_cls(len(backbone.layers), max_steps=len(plan))
    outs = [backbone(x, cache=cache)]
    starts = torch.arange(T)
    for step, keep in enumerate(plan, start=1):
        starts = starts[keep]
        cache.begin_step(starts, None if step == 1 else keep)
        fed = torch.randn(B, len(starts), H, generator=gen)
        outs.append(backbone(fed, starts + step, cache, cache.mask()))
    return outs


@pytest.mark.parametrize("block", [4, 7, 64])
def test_split_attention_matches_dense_mask(block: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(brier_rollout, "QUERY_BLOCK", block)
    torch.manual_seed(0)
    cfg = BackboneConfig(
        hidden_size=32,
        intermediate_size=48,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        max_positions=64,
    )
    backbone = Backbone(cfg).eval()
    with torch.no_grad():  # sharper attention than the 0.02 init, so masking errors show
        for layer in backbone.layers:
            layer.self_attn.q_proj.weight.mul_(20.0)
    x = torch.randn(2, 30, 32)
    first = torch.ones(30, dtype=torch.bool)
    first[[3, 4, 17]] = False  # non-consecutive starts: blocks span gaps
    second = torch.rand(27, generator=torch.Generator().manual_seed(1)) > 0.3
    plan = [first, second, torch.ones(int(second.sum()), dtype=torch.bool)]
    with torch.no_grad():
        split = _roll(RolloutCache, backbone, x, plan)
        dense = _roll(DenseRolloutCache, backbone, x, plan)
    assert [o.shape[1] for o in split] == [30, 27, int(second.sum()), int(second.sum())]
    for a, b in zip(split, dense, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_split_attention_sees_exactly_its_prefix() -> None:
    """A query must not see prefix keys after its start: changing them leaves it unchanged."""
    torch.manual_seed(1)
    cfg = BackboneConfig(
        hidden_size=16, intermediate_size=24, num_layers=1, num_heads=2, max_positions=32
    )
    backbone = Backbone(cfg).eval()
    x = torch.randn(1, 12, 16)
    y = x.clone()
    y[:, 6:] += 3.0  # only keys after start 5 differ
    plan = [torch.ones(12, dtype=torch.bool)]
    with torch.no_grad():
        a = _roll(RolloutCache, backbone, x, plan)[1]
        b = _roll(RolloutCache, backbone, y, plan)[1]
    torch.testing.assert_close(a[:, :6], b[:, :6])
    assert not torch.allclose(a[:, 6:], b[:, 6:])


def test_rollout_cache_rejects_a_wrong_width() -> None:
    cfg = BackboneConfig(
        hidden_size=16, intermediate_size=24, num_layers=1, num_heads=2, max_positions=32
    )
    backbone = Backbone(cfg).eval()
    cache = RolloutCache(1, max_steps=1)
    with torch.no_grad():
        backbone(torch.randn(1, 8, 16), cache=cache)
        cache.begin_step(torch.arange(8))
        with pytest.raises(ValueError, match="must feed 8 positions"):
            backbone(torch.randn(1, 5, 16), torch.arange(5) + 1, cache, None)
