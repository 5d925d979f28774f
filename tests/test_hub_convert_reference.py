"""``calm convert-reference`` with Hub ids, offline: the reference CALM and the autoencoder its
config names (``ae_path: org/ae``, as the published checkpoints do) are read from a Hugging Face
cache laid out on disk; ``--revision`` picks the snapshot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from calm_core.cli import main
from calm_core.model_dir import load_pretrained
from calm_core.testing.fixtures import require_fixture
from safetensors.torch import save_file

SHA = {"main": "1" * 40, "v1": "2" * 40}


def _snapshot(cache: Path, repo: str, rev: str, config: dict, state: dict) -> Path:
    """Put a reference checkpoint into the cache as ``repo`` at ``rev`` (refs/rev -> sha)."""
    root = cache / f"models--{repo.replace('/', '--')}"
    snap = root / "snapshots" / SHA[rev]
    snap.mkdir(parents=True)
    (snap / "config.json").write_text(json.dumps(config))
    kept, seen = {}, set()
    for k, v in state.items():  # one name per shared tensor, as Hugging Face saves them
        if v.data_ptr() not in seen:
            seen.add(v.data_ptr())
            kept[k] = v.contiguous()
    save_file(kept, str(snap / "model.safetensors"))
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / rev).write_text(SHA[rev])
    return snap


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    pytest.importorskip("huggingface_hub")  # calm-core[hub]
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "hf"


def test_reference_calm_and_its_autoencoder_by_hub_id(cache: Path, tmp_path: Path) -> None:
    pytest.importorskip("calm_codecs")
    fx = require_fixture("energy_k2")
    ae_fx = require_fixture(fx.meta["ae_fixture"])
    ae_state = dict(ae_fx.params("ae."))
    _snapshot(cache, "org/ae", "main", ae_fx.meta["ae_config"], ae_state)
    config = {**fx.meta["calm_config"], "ae_path": "org/ae"}
    calm_state = dict(fx.params("calm."))
    _snapshot(cache, "org/calm", "v1", config, calm_state)
    # main is another checkpoint (perturbed): --revision v1 must pick the right one
    bad = {k: v + 1.0 for k, v in calm_state.items()}
    _snapshot(cache, "org/calm", "main", config, bad)

    dst = tmp_path / "ours"
    assert main(["convert-reference", "org/calm", str(dst), "--revision", "v1", "--json"]) == 0
    model = load_pretrained(dst)
    ids = fx.tensors["input_ids"]
    with torch.no_grad():
        hidden = model.hidden_states(ids)
    P = fx.tensors["backbone_last_hidden"].shape[1]
    torch.testing.assert_close(
        hidden[:, :P], fx.tensors["backbone_last_hidden"], rtol=1e-5, atol=1e-5
    )
    summary = json.loads((dst / "converted_from.json").read_text())
    assert summary["autoencoder"].endswith(f"models--org--ae/snapshots/{SHA['main']}")

    # the autoencoder alone, and --ae given as a Hub id
    assert main(["convert-reference", "org/ae", str(tmp_path / "codec")]) == 0
    assert load_pretrained(tmp_path / "codec").chunk_size == ae_fx.meta["ae_config"]["patch_size"]
    argv = ["convert-reference", "org/calm", str(tmp_path / "o2"), "--revision", "v1"]
    assert main([*argv, "--ae", "org/ae"]) == 0


def test_missing_hub_checkpoint_offline_is_a_usage_error(
    cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["convert-reference", "org/none", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "'org/none' is not in the Hugging Face cache" in err and "HF_HUB_OFFLINE" in err
    assert not (tmp_path / "out").exists()
