"""Parity with the reference implementation's heads, driven by the shared fixtures.

Every test is parametrised over the fixtures present (``energy_*``, ``diffusion_head*``,
``flow_head*``), takes shapes and configs from each fixture's JSON, and has a negative twin that
perturbs one weight and checks the comparison then fails. Tolerances follow the fixture README:
``atol = rtol = 1e-5`` for network outputs, ``1e-4`` absolute for scores of magnitude 10-100.
"""

from __future__ import annotations

import pytest
import torch
from calm_core.testing.fixtures import Fixture, fixture_names, require_fixture
from calm_heads.diffusion import DiffusionHead
from calm_heads.energy import EnergyHead
from calm_heads.energy_score import energy_loss
from calm_heads.flow import FlowHead

ENERGY = fixture_names("energy_") or ["energy_k4"]
DIFFUSION = fixture_names("diffusion_head") or ["diffusion_head"]
FLOW = fixture_names("flow_head") or ["flow_head"]

RTOL = ATOL = 1e-5
SCORE_ATOL = 1e-4


def _close(a: torch.Tensor, b: torch.Tensor, atol: float = ATOL, rtol: float = RTOL) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a, b, atol=atol, rtol=rtol))


def _perturb_first(module: torch.nn.Module, name_part: str) -> None:
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name_part in name:
                p.view(-1)[0] += 0.05
                return
    raise AssertionError(f"no parameter matching {name_part!r}")


# ---------------------------------------------------------------------------------------- energy
def _energy_head(fx: Fixture) -> EnergyHead:
    return EnergyHead.from_reference(fx.params("calm."), fx.meta["calm_config"]).eval()


def _energy_generate(head: EnergyHead, fx: Fixture) -> torch.Tensor:
    with torch.no_grad():
        return head.generate(fx.tensors["gen_hidden_in"], fx.tensors["gen_noise"])


@pytest.mark.parametrize("name", ENERGY)
def test_energy_generator_parity(name: str) -> None:
    fx = require_fixture(name)
    out = _energy_generate(_energy_head(fx), fx)
    assert _close(out, fx.tensors["gen_out"]), (out - fx.tensors["gen_out"]).abs().max()


@pytest.mark.parametrize("name", ENERGY)
@pytest.mark.parametrize("part", ["noise_proj", "blocks.0.mlp.0", "hidden_norm", "out_mlp.2"])
def test_energy_generator_parity_fails_when_weight_perturbed(name: str, part: str) -> None:
    fx = require_fixture(name)
    head = _energy_head(fx)
    _perturb_first(head, part)
    assert not _close(_energy_generate(head, fx), fx.tensors["gen_out"])


def _score(fx: Fixture, samples: torch.Tensor) -> torch.Tensor:
    mean, log_std = fx.tensors["target_mean"], fx.tensors["target_log_std"]
    alpha = float(fx.meta["calm_config"].get("beta", 1.0))
    loss = energy_loss(
        samples, mean, log_std.exp(), alpha=alpha, target_eps=fx.tensors["energy_eps"]
    )
    return -loss


@pytest.mark.parametrize("name", ENERGY)
def test_energy_score_parity(name: str) -> None:
    fx = require_fixture(name)
    score = _score(fx, fx.tensors["gen_out"])
    ref = fx.tensors["energy_score"]
    assert _close(score, ref, atol=SCORE_ATOL), (score - ref).abs().max()
    # eval_loss is the mean over positions of the negated score
    if "eval_loss" in fx.tensors:
        assert abs(float(-score.mean()) - float(fx.tensors["eval_loss"])) < SCORE_ATOL


@pytest.mark.parametrize("name", ENERGY)
def test_energy_score_parity_fails_when_sample_perturbed(name: str) -> None:
    fx = require_fixture(name)
    samples = fx.tensors["gen_out"].clone()
    samples[0, 0, 0] += 0.05
    assert not _close(_score(fx, samples), fx.tensors["energy_score"], atol=SCORE_ATOL)


@pytest.mark.parametrize("name", ENERGY)
def test_energy_head_end_to_end_parity(name: str) -> None:
    """Generator and score chained, from the stored noise and target draws."""
    fx = require_fixture(name)
    out = _energy_generate(_energy_head(fx), fx)
    assert _close(_score(fx, out), fx.tensors["energy_score"], atol=SCORE_ATOL)


# ------------------------------------------------------------------------------------- diffusion
def _diffusion_head(fx: Fixture) -> DiffusionHead:
    steps = int(fx.meta.get("diffusion", {}).get("steps", 1000))
    return DiffusionHead.from_reference(
        fx.params("net."), fx.meta["net_args"], train_steps=steps
    ).eval()


def _diffusion_out(head: DiffusionHead, fx: Fixture) -> torch.Tensor:
    t = fx.tensors["t"]
    with torch.no_grad():
        return head.net(fx.tensors["x"], t.to(torch.float32), fx.tensors["c"])


@pytest.mark.parametrize("name", DIFFUSION)
def test_diffusion_net_parity(name: str) -> None:
    fx = require_fixture(name)
    out = _diffusion_out(_diffusion_head(fx), fx)
    assert _close(out, fx.tensors["out"]), (out - fx.tensors["out"]).abs().max()


@pytest.mark.parametrize("name", DIFFUSION)
def test_diffusion_loss_parity(name: str) -> None:
    fx = require_fixture(name)
    head = _diffusion_head(fx)
    with torch.no_grad():
        terms = head.loss_terms(
            fx.tensors["loss_target"],
            fx.tensors["loss_z"],
            fx.tensors["loss_t"],
            fx.tensors["loss_noise"],
        )
    for key, ref in (("mse", "loss_mse"), ("vb", "loss_vb"), ("loss", "loss")):
        got = terms[key]
        assert _close(got, fx.tensors[ref], atol=SCORE_ATOL), (key, (got - fx.tensors[ref]))


@pytest.mark.parametrize("name", DIFFUSION)
@pytest.mark.parametrize(
    "part", ["time_embed.mlp.0", "res_blocks.0.adaLN_modulation", "final_layer.linear"]
)
def test_diffusion_parity_fails_when_weight_perturbed(name: str, part: str) -> None:
    fx = require_fixture(name)
    head = _diffusion_head(fx)
    _perturb_first(head.net, part)
    assert not _close(_diffusion_out(head, fx), fx.tensors["out"])


# ------------------------------------------------------------------------------------------ flow
def _flow_head(fx: Fixture) -> FlowHead:
    sampler = fx.meta.get("sampler", {})
    return FlowHead.from_reference(
        fx.params("net."),
        fx.meta["net_args"],
        steps=int(sampler.get("num_steps", 10)),
        solver=sampler.get("solver", "midpoint"),
    ).eval()


def _flow_out(head: FlowHead, fx: Fixture) -> torch.Tensor:
    with torch.no_grad():
        return head.velocity(fx.tensors["x"], fx.tensors["t"], fx.tensors["c"])


@pytest.mark.parametrize("name", FLOW)
def test_flow_net_parity(name: str) -> None:
    fx = require_fixture(name)
    out = _flow_out(_flow_head(fx), fx)
    assert _close(out, fx.tensors["out"]), (out - fx.tensors["out"]).abs().max()


@pytest.mark.parametrize("name", FLOW)
def test_flow_loss_parity(name: str) -> None:
    fx = require_fixture(name)
    head = _flow_head(fx)
    with torch.no_grad():
        loss = head.loss_terms(
            fx.tensors["loss_target"],
            fx.tensors["loss_z"],
            fx.tensors["loss_t"],
            fx.tensors["loss_x0"],
        )
    assert _close(loss, fx.tensors["loss"]), (loss - fx.tensors["loss"]).abs().max()
    bins = torch.floor(fx.tensors["loss_t"] * head.config.time_bins).long()
    assert torch.equal(bins, fx.tensors["loss_t_int"])


@pytest.mark.parametrize("name", FLOW)
def test_flow_sampler_parity(name: str) -> None:
    fx = require_fixture(name)
    head = _flow_head(fx)
    seen: list[torch.Tensor] = []
    hook = head.net.register_forward_pre_hook(lambda _m, args: seen.append(args[1].long()))
    with torch.no_grad():
        out = head.integrate(fx.tensors["sample_x_init"], fx.tensors["sample_z"])
    hook.remove()
    assert torch.equal(torch.stack([s[0] for s in seen]), fx.tensors["sample_t_int"])
    assert _close(out, fx.tensors["sample_out"]), (out - fx.tensors["sample_out"]).abs().max()


@pytest.mark.parametrize("name", FLOW)
@pytest.mark.parametrize("part", ["cond_embed", "res_blocks.1.mlp.2", "final_layer.adaLN"])
def test_flow_parity_fails_when_weight_perturbed(name: str, part: str) -> None:
    fx = require_fixture(name)
    head = _flow_head(fx)
    _perturb_first(head.net, part)
    assert not _close(_flow_out(head, fx), fx.tensors["out"])
    with torch.no_grad():
        out = head.integrate(fx.tensors["sample_x_init"], fx.tensors["sample_z"])
    assert not _close(out, fx.tensors["sample_out"])
