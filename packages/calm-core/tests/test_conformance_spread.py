"""The head conformance suite catches a loss that never reads the posterior's spread."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from calm_core.interfaces import LatentPosterior
from calm_core.registry import heads
from calm_core.testing import HeadConformance
from tiny_components import TinyHead
from torch import Tensor


class DrawingHead(TinyHead):
    """TinyHead trained on posterior draws: its loss sees ``target.std``."""

    def loss(self, hidden: Tensor, target: LatentPosterior) -> Tensor:
        return (self.net(hidden) - target.sample(4)).pow(2).sum(-1).mean(0)


@pytest.fixture(autouse=True)
def registered() -> Iterator[None]:
    heads.register("test.mean_only", TinyHead)
    heads.register("test.drawing", DrawingHead)
    yield
    heads.unregister("test.mean_only")
    heads.unregister("test.drawing")


class _Suite(HeadConformance):
    allow_in_process = True


def test_a_mean_only_loss_fails_the_spread_check() -> None:
    suite = type("S", (_Suite,), {"head_name": "test.mean_only"})()
    with pytest.raises(AssertionError, match="the loss ignores target.std"):
        suite.test_loss_reads_the_target_spread()


def test_a_mean_only_loss_passes_when_declared() -> None:
    attrs = {"head_name": "test.mean_only", "loss_reads_target_spread": False}
    type("S", (_Suite,), attrs)().test_loss_reads_the_target_spread()


def test_a_loss_on_posterior_draws_passes_and_may_not_opt_out() -> None:
    type("S", (_Suite,), {"head_name": "test.drawing"})().test_loss_reads_the_target_spread()
    attrs = {"head_name": "test.drawing", "loss_reads_target_spread": False}
    with pytest.raises(AssertionError, match="loss_reads_target_spread is False"):
        type("S", (_Suite,), attrs)().test_loss_reads_the_target_spread()
