"""The recipes as a Python user calls them: the same arguments as ``calm train-codec`` /
``calm train``, the library's own errors, and a recipe class whose steps can be overridden."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from calm_core.config import ConfigError
from calm_core.data import Document, Tokenizer, write_data_dir
from calm_core.model_dir import load_pretrained
from calm_core.recipes import (
    REPORT_NAME,
    CodecRecipe,
    OutputDirError,
    TrainCodecConfig,
    resolve_codec_config,
    resolve_model_config,
    train_codec,
    train_model,
)
from calm_core.runtime import DeviceError
from calm_core.training import CheckpointError

SMALL_CODEC = {"hidden_size": 16, "intermediate_size": 32, "latent_size": 4}
TRAIN = {"batch_size": 2, "seq_len": 32, "warmup_steps": 0, "eval_every": 0}
BACKBONE = {"hidden_size": 32, "intermediate_size": 64, "num_layers": 1, "num_heads": 2,
            "num_kv_heads": 2}  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("recipes")
    text = "the cat sat on the mat. " * 30
    docs = [Document(f"document {i}: {text}", f"doc{i}") for i in range(8)]
    write_data_dir(root / "data", docs, Tokenizer.byte_level(), chunk_size=4, val_docs=2, seed=0)
    return root / "data"


@pytest.fixture(scope="module")
def codec_dir(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("codec") / "codec"
    train_codec(data, out, config={"codec": {"config": SMALL_CODEC}, "train": TRAIN}, steps=2,
                device="cpu", progress=False)  # fmt: skip
    return out


def test_train_codec_takes_the_clis_arguments(codec_dir: Path) -> None:
    assert isinstance(load_pretrained(codec_dir), torch.nn.Module)
    report = json.loads((codec_dir / REPORT_NAME).read_text())
    assert report["split"] == "val" and 0.0 <= report["token_accuracy"] <= 1.0
    assert (codec_dir / "tokenizer.json").is_file() or any(codec_dir.glob("tokenizer*"))


def test_train_model_trains_calm_and_ar(data: Path, codec_dir: Path, tmp_path: Path) -> None:
    cfg = {"backbone": BACKBONE, "train": TRAIN}
    calm = train_model(data, tmp_path / "calm", codec=codec_dir, config=cfg, steps=2, lr=1e-3,
                       device="cpu", progress=False)  # fmt: skip
    assert calm["model"] == "calm" and calm["steps"] == 2 and calm["device"] == "cpu"
    assert type(load_pretrained(tmp_path / "calm")).__name__ == "CALM"
    ar = train_model(data, tmp_path / "ar", model="ar", config=cfg, steps=1, progress=False)
    assert ar["model"] == "ar" and ar["trainable_parameters"] > 0
    # resume continues the run; other settings are refused as the library's error
    again = train_model(data, tmp_path / "ar", model="ar", config=cfg, steps=2, resume=True,
                        progress=False)  # fmt: skip
    assert again["steps"] == 2
    with pytest.raises(CheckpointError, match="seed"):
        train_model(data, tmp_path / "ar", model="ar", config=cfg, steps=3, seed=5, resume=True,
                    progress=False)  # fmt: skip


def test_the_recipes_raise_library_errors(data: Path, codec_dir: Path, tmp_path: Path) -> None:
    cfg = {"backbone": BACKBONE, "train": TRAIN}
    with pytest.raises(ConfigError, match="unknown codec recipe 'nope'"):
        train_codec(data, tmp_path / "a", recipe="nope")
    with pytest.raises(ConfigError, match="pass its directory as codec_dir"):
        train_model(data, tmp_path / "b", config=cfg, steps=1, progress=False)
    with pytest.raises(ConfigError, match="head applies to CALM only"):
        resolve_model_config(model="ar", head="energy")
    with pytest.raises(ConfigError, match="is a calm preset but the model is ar"):
        resolve_model_config(model="ar", preset="calm-tiny")
    with pytest.raises(ConfigError, match="unknown device 'gpu'"):
        train_codec(data, tmp_path / "c", device="gpu")
    with pytest.raises(DeviceError, match="device 'cuda:9' is not available"):
        train_codec(data, tmp_path / "c", device="cuda:9")
    with pytest.raises(ConfigError, match=r"multiple of the data's chunk size K=4 \(e.g. 16\)"):
        train_model(data, tmp_path / "d", model="ar", config=cfg, seq_len=18, steps=1,
                    progress=False)  # fmt: skip
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "x").write_text("mine")
    with pytest.raises(OutputDirError, match="is not empty; pass --overwrite"):
        train_codec(data, tmp_path / "e", steps=1)


def test_a_recipe_step_can_be_overridden(data: Path, tmp_path: Path) -> None:
    seen: list[tuple[int, ...]] = []

    class Counting(CodecRecipe):
        def _loss_step(self, model: torch.nn.Module, batch: torch.Tensor) -> dict[str, Any]:
            seen.append(tuple(batch.shape))
            return super()._loss_step(model, batch)

    config = resolve_codec_config(
        {"codec": {"config": SMALL_CODEC}, "train": {**TRAIN, "grad_accum_steps": 2}}, steps=3
    )
    assert isinstance(config, TrainCodecConfig) and config.train.steps == 3
    recipe = Counting(config, data, tmp_path / "c", progress=False)
    assert recipe.model is None and recipe.trainer is None and recipe.device is None
    result = recipe.run()
    assert seen == [(1, 32)] * 6  # 3 steps x 2 micro-batches of batch_size 2 / 2
    assert recipe.device == torch.device("cpu") and result["steps"] == 3
