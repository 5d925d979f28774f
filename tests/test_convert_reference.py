"""``calm convert-reference`` on reference-style checkpoint directories built from the fixtures.

Each test builds what the reference implementation writes: its ``config.json`` (the fixture's
``ae_config`` / ``calm_config``) next to ``pytorch_model.bin`` (``torch.save`` of a plain state
dict, written here in the test only) or ``model.safetensors``, with the reference's duplicate
keys (``decoder.lm_head_weight``, ``generative_head.*``) put back. The converted directory is
loaded with :func:`calm_core.model_dir.load_pretrained` and its outputs compared with the
fixture's recorded tensors; perturbing one weight must make the comparison fail.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from calm_core.cli import main
from calm_core.model_dir import load_pretrained
from calm_core.testing.fixtures import fixture_names, require_fixture
from safetensors.torch import save_file

AE_FIXTURES = fixture_names("ae_")
ENERGY_FIXTURES = fixture_names("energy_")
TOL = {"rtol": 1e-5, "atol": 1e-5}


def _write_ref_dir(
    path: Path, config: dict, state: dict[str, torch.Tensor], fmt: str = "bin"
) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config))
    if fmt == "bin":
        torch.save(state, path / "pytorch_model.bin")
    else:
        # like Hugging Face's safetensors save, keep one name per shared tensor (the tied
        # decoder.lm_head_weight is dropped), which the converter must accept
        kept: dict[str, torch.Tensor] = {}
        seen: set[int] = set()
        for k, v in state.items():
            if v.data_ptr() not in seen:
                seen.add(v.data_ptr())
                kept[k] = v.contiguous()
        save_file(kept, str(path / "model.safetensors"))
    return path


def _ae_state(fx) -> dict[str, torch.Tensor]:
    state = dict(fx.params("ae."))
    state["decoder.lm_head_weight"] = state["encoder.embed_tokens.weight"]  # the reference's tie
    return state


def _ae_dir(tmp_path: Path, name: str, fmt: str = "bin") -> tuple[Path, object]:
    fx = require_fixture(name)
    return _write_ref_dir(tmp_path / f"ref_{name}", fx.meta["ae_config"], _ae_state(fx), fmt), fx


def _check_ae_parity(codec, fx) -> None:
    post = codec.encode(fx.tensors["input_ids"])
    torch.testing.assert_close(post.mean, fx.tensors["enc_mean"], **TOL)
    torch.testing.assert_close(post.std.log(), fx.tensors["enc_log_std"], **TOL)
    logits = codec.decode(post.mean)  # [B, L, K, V]
    B, T = fx.tensors["input_ids"].shape
    torch.testing.assert_close(
        logits.reshape(B, T, -1), fx.tensors["dec_logits_of_mean"], rtol=1e-5, atol=1e-4
    )


@pytest.mark.parametrize("name", AE_FIXTURES or ["ae_k4"])
@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
def test_convert_autoencoder_parity(tmp_path: Path, name: str, fmt: str) -> None:
    src, fx = _ae_dir(tmp_path, name, fmt)
    dst = tmp_path / "ours"
    assert main(["convert-reference", str(src), str(dst)]) == 0
    assert (dst / "config.json").is_file() and (dst / "model.safetensors").is_file()
    record = json.loads((dst / "config.json").read_text())
    assert record["type"] == "codec" and record["component"]["name"] == "autoencoder"
    summary = json.loads((dst / "converted_from.json").read_text())
    assert summary["kind"] == "autoencoder"
    codec = load_pretrained(dst)
    with torch.no_grad():
        _check_ae_parity(codec, fx)


@pytest.mark.parametrize("name", AE_FIXTURES or ["ae_k4"])
def test_convert_autoencoder_parity_detects_perturbed_weight(tmp_path: Path, name: str) -> None:
    fx = require_fixture(name)
    state = _ae_state(fx)
    key = "encoder.hidden_to_latent.weight"
    state[key] = state[key] + 1e-3 * torch.randn_like(state[key])
    src = _write_ref_dir(tmp_path / "ref", fx.meta["ae_config"], state)
    assert main(["convert-reference", str(src), str(tmp_path / "ours")]) == 0
    with torch.no_grad(), pytest.raises(AssertionError):
        _check_ae_parity(load_pretrained(tmp_path / "ours"), fx)


def _energy_state(fx, ae_fx, *, with_ae: bool, with_alias: bool) -> dict[str, torch.Tensor]:
    state = dict(fx.params("calm."))
    if with_alias:  # the reference registers its generator twice
        for k in list(state):
            if k.startswith("mlp_generator."):
                state["generative_head." + k[len("mlp_generator.") :]] = state[k]
    if with_ae:
        for k, v in _ae_state(ae_fx).items():
            state["ae_model." + k] = v
    return state


def _check_calm_parity(model, fx) -> None:
    ids = fx.tensors["input_ids"]
    hidden = model.hidden_states(ids)
    P = fx.tensors["backbone_last_hidden"].shape[1]
    torch.testing.assert_close(hidden[:, :P], fx.tensors["backbone_last_hidden"], **TOL)
    K = model.chunk_size
    targets = model.codec.encode(ids[:, K:])
    torch.testing.assert_close(
        targets.mean.reshape(-1, targets.mean.shape[-1]), fx.tensors["target_mean"], **TOL
    )


@pytest.mark.parametrize("name", ENERGY_FIXTURES or ["energy_k4"])
@pytest.mark.parametrize("ae_source", ["embedded", "ae_path", "flag"])
def test_convert_calm_energy_parity(tmp_path: Path, name: str, ae_source: str) -> None:
    pytest.importorskip("calm_core.calm")
    fx = require_fixture(name)
    ae_fx = require_fixture(fx.meta["ae_fixture"])
    config = dict(fx.meta["calm_config"])
    ae_dir = _write_ref_dir(tmp_path / "ae", ae_fx.meta["ae_config"], _ae_state(ae_fx))
    if ae_source == "ae_path":
        config["ae_path"] = "../ae"
    state = _energy_state(fx, ae_fx, with_ae=ae_source == "embedded", with_alias=True)
    src = _write_ref_dir(tmp_path / "calm", config, state, "bin")
    dst = tmp_path / "ours"
    argv = ["convert-reference", str(src), str(dst)]
    if ae_source == "flag":
        argv += ["--ae", str(ae_dir)]
    assert main(argv) == 0
    assert json.loads((dst / "config.json").read_text())["type"] == "calm"
    model = load_pretrained(dst)
    # the converted model stops where the reference stops
    assert model.config.eos_id == config["eos_token_id"]  # type: ignore[union-attr]
    with torch.no_grad():
        _check_calm_parity(model, fx)


@pytest.mark.parametrize("name", ENERGY_FIXTURES or ["energy_k4"])
def test_convert_calm_energy_parity_detects_perturbed_weight(tmp_path: Path, name: str) -> None:
    pytest.importorskip("calm_core.calm")
    fx = require_fixture(name)
    ae_fx = require_fixture(fx.meta["ae_fixture"])
    state = _energy_state(fx, ae_fx, with_ae=True, with_alias=False)
    key = "transformer.layers.0.self_attn.q_proj.weight"
    state[key] = state[key] + 1e-3 * torch.randn_like(state[key])
    src = _write_ref_dir(tmp_path / "calm", fx.meta["calm_config"], state)
    assert main(["convert-reference", str(src), str(tmp_path / "ours")]) == 0
    with torch.no_grad(), pytest.raises(AssertionError):
        _check_calm_parity(load_pretrained(tmp_path / "ours"), fx)


# ------------------------------------------------------------------------------------- errors
def test_missing_source_directory(tmp_path: Path, capsys) -> None:
    assert main(["convert-reference", str(tmp_path / "nope"), str(tmp_path / "out")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_source_without_weights(tmp_path: Path, capsys) -> None:
    src = tmp_path / "ref"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"num_encoder_layers": 2}))
    assert main(["convert-reference", str(src), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "holds no weights" in err and "pytorch_model.bin" in err


def test_pickle_with_objects_is_refused(tmp_path: Path, capsys) -> None:
    fx = require_fixture(AE_FIXTURES[0] if AE_FIXTURES else "ae_k4")
    src = tmp_path / "ref"
    src.mkdir()
    (src / "config.json").write_text(json.dumps(fx.meta["ae_config"]))
    # a pickle of an arbitrary object: weights_only loading must refuse it
    torch.save({"state": _ae_state(fx), "extra": Path("x")}, src / "pytorch_model.bin")
    assert main(["convert-reference", str(src), str(tmp_path / "out")]) == 2
    assert "refuses to unpickle" in capsys.readouterr().err


def test_existing_output_needs_overwrite(tmp_path: Path, capsys) -> None:
    src, _ = _ae_dir(tmp_path, AE_FIXTURES[0] if AE_FIXTURES else "ae_k4")
    dst = tmp_path / "ours"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    assert main(["convert-reference", str(src), str(dst)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (dst / "keep.txt").read_text() == "mine"
    assert main(["convert-reference", str(src), str(dst), "--overwrite"]) == 0


def test_calm_without_autoencoder_says_pass_ae(tmp_path: Path, capsys) -> None:
    pytest.importorskip("calm_core.calm")
    fx = require_fixture(ENERGY_FIXTURES[0] if ENERGY_FIXTURES else "energy_k4")
    ae_fx = require_fixture(fx.meta["ae_fixture"])
    state = _energy_state(fx, ae_fx, with_ae=False, with_alias=False)
    src = _write_ref_dir(tmp_path / "calm", fx.meta["calm_config"], state)
    assert main(["convert-reference", str(src), str(tmp_path / "out")]) == 2
    assert "--ae DIR" in capsys.readouterr().err


def test_calm_with_mismatched_autoencoder(tmp_path: Path, capsys) -> None:
    pytest.importorskip("calm_core.calm")
    if not {"energy_k4", "ae_k2"} <= set(ENERGY_FIXTURES + AE_FIXTURES):
        pytest.skip("needs energy_k4 and ae_k2")
    fx = require_fixture("energy_k4")
    ae_fx = require_fixture("ae_k4")
    state = _energy_state(fx, ae_fx, with_ae=False, with_alias=False)
    src = _write_ref_dir(tmp_path / "calm", fx.meta["calm_config"], state)
    other, _ = _ae_dir(tmp_path, "ae_k2")
    assert main(["convert-reference", str(src), str(tmp_path / "out"), "--ae", str(other)]) == 2
    assert "do not fit together" in capsys.readouterr().err
