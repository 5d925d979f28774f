"""Parity of our CALM (backbone, compressor, energy head, codec targets) with the reference.

Parametrised over every ``energy_*`` fixture present; shapes and configs come from each fixture's
JSON. The reference weights are loaded through ``calm_core.reference.calm_from_reference`` (the
one place the key mapping lives), the codec through the registry's ``autoencoder``. Tolerances follow the fixture
README: rtol = atol = 1e-5 for hidden states and generator outputs, atol 1e-4 for scalar losses.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from calm_core.calm import CALM
from calm_core.reference import calm_from_reference
from calm_core.testing.fixtures import Fixture, fixture_names, load_fixture, require_fixture

pytest.importorskip("calm_heads")
pytest.importorskip("calm_codecs")

from calm_heads.energy_score import energy_loss

NAMES = fixture_names("energy_") or ["energy_k4"]


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-5, atol: float = 1e-5) -> bool:
    return bool(torch.allclose(a, b, rtol=rtol, atol=atol))


def _load(fx: Fixture, perturb: str | None = None) -> CALM:
    ae = require_fixture(fx.meta["ae_fixture"])
    state: dict[str, Any] = fx.params("calm.")
    state.update({f"ae_model.{k}": v for k, v in ae.params("ae.").items()})
    if perturb is not None:
        state = dict(state)
        state[perturb] = state[perturb] + 1e-2 * torch.randn_like(state[perturb])
    model = calm_from_reference(state, fx.meta["calm_config"], codec_config=ae.meta["ae_config"])
    return model.eval()


def _outputs(model: CALM, fx: Fixture) -> dict[str, torch.Tensor]:
    ids = fx.tensors["input_ids"]
    B, T = ids.shape
    K = model.chunk_size
    with torch.no_grad():
        chunks = ids.reshape(B, T // K, K)
        x = model.embed_chunks(chunks[:, :-1])
        hidden = model.backbone(x)
        target = model.encode_targets(ids[:, K:]).reshape(-1)
        flat = hidden.reshape(-1, hidden.shape[-1])
        gen = model.head.generate(flat, fx.tensors["gen_noise"])  # type: ignore[operator]
        score = -energy_loss(gen, target.mean, target.std, target_eps=fx.tensors["energy_eps"])
    return {
        "embed_proj_out": x,
        "backbone_last_hidden": hidden,
        "target_mean": target.mean,
        "target_log_std": target.std.log(),
        "gen_out": gen,
        "energy_score": score,
        "eval_loss": -score.mean(),
    }


@pytest.mark.parametrize("name", NAMES)
def test_calm_parity_with_reference(name: str) -> None:
    fx = require_fixture(name)
    model = _load(fx)
    cfg = fx.meta["calm_config"]
    assert model.chunk_size == cfg["patch_size"]
    assert model.config.backbone.num_layers == cfg["num_hidden_layers"]
    out = _outputs(model, fx)
    ref = fx.tensors
    for key in ("embed_proj_out", "backbone_last_hidden", "target_mean", "target_log_std"):
        assert out[key].shape == ref[key].shape, key
        err = (out[key] - ref[key]).abs().max().item()
        assert _close(out[key], ref[key]), f"{name}: {key} differs by {err:.3g}"
    assert _close(out["gen_out"], ref["gen_out"]), "generator output differs"
    assert _close(out["energy_score"], ref["energy_score"], atol=1e-4), "energy score differs"
    assert _close(out["eval_loss"], ref["eval_loss"], atol=1e-4), "eval loss differs"


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    "weight",
    [
        "transformer.layers.0.self_attn.k_proj.weight",
        "embed_proj.0.weight",
    ],
)
def test_calm_parity_fails_when_a_weight_is_perturbed(name: str, weight: str) -> None:
    fx = require_fixture(name)
    torch.manual_seed(0)
    out = _outputs(_load(fx, perturb=weight), fx)
    assert not _close(out["backbone_last_hidden"], fx.tensors["backbone_last_hidden"])


@pytest.mark.parametrize("name", NAMES)
def test_calm_parity_generator_fails_when_head_weight_is_perturbed(name: str) -> None:
    fx = require_fixture(name)
    torch.manual_seed(0)
    out = _outputs(_load(fx, perturb="mlp_generator.noise_embd.weight"), fx)
    assert _close(out["backbone_last_hidden"], fx.tensors["backbone_last_hidden"])
    assert not _close(out["gen_out"], fx.tensors["gen_out"])


@pytest.mark.parametrize("name", NAMES)
def test_calm_parity_training_forward_loss_is_finite_and_grads_skip_the_codec(name: str) -> None:
    fx = require_fixture(name)
    model = _load(fx)
    model.train()
    assert not model.codec.training
    out = model(fx.tensors["input_ids"])
    out["loss"].backward()
    assert torch.isfinite(out["loss"])
    assert all(p.grad is None for p in model.codec.parameters())
    assert model.backbone.layers[0].self_attn.q_proj.weight.grad is not None
    # the training loss estimates the reference's (different random draws): same ballpark
    ref = float(fx.tensors["eval_loss"])
    assert abs(float(out["loss"].detach()) - ref) < 0.5 * abs(ref) + 1.0


def test_calm_parity_fixture_round_trip_through_model_dir(tmp_path: Any) -> None:
    name = NAMES[0]
    fx = require_fixture(name)
    model = _load(fx)
    model.save_pretrained(tmp_path / "m")
    again = CALM.from_pretrained(tmp_path / "m")
    out = _outputs(again, load_fixture(name))
    assert _close(out["backbone_last_hidden"], fx.tensors["backbone_last_hidden"])
    assert _close(out["gen_out"], fx.tensors["gen_out"])
