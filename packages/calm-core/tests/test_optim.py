"""Optimizer lookup by name (torch.optim and the torch-optimizer extra), weight-decay groups, and
the learning-rate schedule (warm-up applies to the constant schedule too)."""

from __future__ import annotations

import builtins
import itertools
import math
from typing import Any

import pytest
import torch
from calm_core.training import (
    LRSchedule,
    OptimizerNotFoundError,
    TrainConfig,
    available_optimizers,
    build_optimizer,
    get_optimizer_class,
)
from torch import nn


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.lin = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)


def test_torch_optim_names_are_case_insensitive():
    assert get_optimizer_class("adamw") is torch.optim.AdamW
    assert get_optimizer_class("AdamW") is torch.optim.AdamW
    assert get_optimizer_class("sgd") is torch.optim.SGD
    assert available_optimizers()["adamw"] == "torch.optim"


def test_torch_optimizer_extra_provides_lamb():
    torch_optimizer = pytest.importorskip("torch_optimizer")
    assert get_optimizer_class("lamb") is torch_optimizer.Lamb
    assert available_optimizers()["lamb"] == "torch_optimizer"
    opt = build_optimizer(Net(), TrainConfig(optimizer="lamb"))
    assert isinstance(opt, torch_optimizer.Lamb)
    assert opt.defaults["betas"] == (0.9, 0.95)


def test_unknown_name_lists_available_and_suggests(monkeypatch: pytest.MonkeyPatch):
    with pytest.raises(OptimizerNotFoundError) as info:
        get_optimizer_class("adamww")
    msg = str(info.value)
    assert "unknown optimizer 'adamww'" in msg and "Did you mean: adamw" in msg
    assert "sgd" in msg and "rmsprop" in msg

    real_import = builtins.__import__

    def no_extra(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "torch_optimizer":
            raise ImportError("not installed")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_extra)
    with pytest.raises(OptimizerNotFoundError, match=r"pip install 'calm-core\[optim\]'") as info:
        get_optimizer_class("lamb")
    assert "lamb" not in str(info.value).split("Available:")[1].split(".")[0]
    assert isinstance(info.value, KeyError)


def test_weight_decay_only_on_matrices_and_frozen_params_left_out():
    net = Net()
    opt = build_optimizer(net, TrainConfig(weight_decay=0.1, lr=1e-3))
    assert isinstance(opt, torch.optim.AdamW)
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert {id(p) for p in decayed["params"]} == {id(net.embed.weight), id(net.lin.weight)}
    assert {id(p) for p in plain["params"]} == {
        id(net.lin.bias),
        id(net.norm.weight),
        id(net.norm.bias),
    }
    assert opt.defaults["betas"] == (0.9, 0.95) and opt.defaults["eps"] == 1e-8


def test_optimizer_without_weight_decay_or_betas_still_builds():
    opt = build_optimizer(Net(), TrainConfig(optimizer="rprop"))
    assert isinstance(opt, torch.optim.Rprop)


def _lrs(**kw: Any) -> list[float]:
    config = TrainConfig(lr=1.0, **kw)
    sched = LRSchedule(build_optimizer(Net(), config), config)
    return [sched.apply(step) for step in range(config.steps)]


def test_warmup_applies_to_the_constant_schedule():
    lrs = _lrs(steps=6, warmup_steps=4, schedule="constant")
    assert lrs == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])


def test_cosine_and_linear_decay_to_min_lr_ratio():
    cos = _lrs(steps=12, warmup_steps=2, schedule="cosine", min_lr_ratio=0.1)
    assert cos[:3] == pytest.approx([0.5, 1.0, 1.0])
    assert cos[-1] == pytest.approx(0.1)
    # step 6 is 4 of the 9 decay intervals in
    assert cos[6] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 4 / 9)))
    lin = _lrs(steps=11, schedule="linear", min_lr_ratio=0.0)
    assert lin == pytest.approx([1 - i / 10 for i in range(11)])
    assert all(a >= b for a, b in itertools.pairwise(cos[1:]))
