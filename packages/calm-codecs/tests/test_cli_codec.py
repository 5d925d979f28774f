"""``calm train-codec`` and ``calm eval-codec`` end to end on a tiny byte-level data directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from calm_codecs import ChunkAutoencoder
from calm_core.cli import main
from calm_core.corpus import load_bundled_corpus
from calm_core.data import Document, Tokenizer, write_data_dir
from calm_core.model_dir import load_pretrained
from calm_core.recipes import RECIPES, TrainCodecConfig
from calm_core.recipes import codec_recipe as recipe
from calm_core.training import read_metrics

TINY_CODEC = {"hidden_size": 16, "intermediate_size": 24, "latent_size": 8}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    docs = [Document(d.text[:1500], d.source) for d in load_bundled_corpus()[:6]]
    out = tmp_path_factory.mktemp("data")
    write_data_dir(out, docs, Tokenizer.byte_level(), chunk_size=4, val_docs=2, seed=0)
    return out


def _config(tmp_path: Path, **train: object) -> Path:
    path = tmp_path / "codec.json"
    cfg = {"codec": {"config": TINY_CODEC}, "train": {"batch_size": 4, "seq_len": 64, **train}}
    path.write_text(json.dumps(cfg))
    return path


def test_train_codec_writes_a_loadable_codec_and_report(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "codec"
    cfg = _config(tmp_path, eval_every=2, log_every=1)
    argv = ["train-codec", "--data", str(data_dir), "--out", str(out), "--config", str(cfg)]
    assert main([*argv, "--steps", "3", "--json", "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 3 and summary["out"] == str(out)
    codec = load_pretrained(out)
    assert isinstance(codec, ChunkAutoencoder)
    assert codec.vocab_size == 258 and codec.chunk_size == 4  # taken from the data directory
    assert codec.config.hidden_size == 16
    report = json.loads((out / "reconstruction.json").read_text())
    assert report["split"] == "val" and set(report["noisy_token_accuracy"]) == {"0.1", "0.3", "0.5"}
    assert report == {"split": "val", **summary["report"]}
    assert (out / "tokenizer.json").is_file()
    records = read_metrics(out)
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3]
    evals = [r for r in records if "eval/token_accuracy" in r]
    assert [r["step"] for r in evals] == [2, 3]
    assert evals[-1]["eval/token_accuracy"] == pytest.approx(report["token_accuracy"])
    assert "eval/noisy_token_accuracy@0.3" in evals[-1] and "eval/collapsed_dims" in evals[-1]

    # eval-codec gives the same report for the same split
    assert main(["eval-codec", str(out), "--data", str(data_dir), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["token_accuracy"] == pytest.approx(report["token_accuracy"])
    assert again["noisy_token_accuracy"] == pytest.approx(report["noisy_token_accuracy"])
    assert again["collapsed_dims"] == report["collapsed_dims"]

    # the training split can be scored too, and a second run refuses to overwrite
    assert main(["eval-codec", str(out), "--data", str(data_dir), "--split", "train",
                 "--noise", "0.2", "--json"]) == 0  # fmt: skip
    train_report = json.loads(capsys.readouterr().out)
    assert set(train_report["noisy_token_accuracy"]) == {"0.2"}
    assert main([*argv, "--steps", "1"]) == 2
    assert "not empty" in capsys.readouterr().err


def test_train_codec_resume_continues_to_more_steps(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "codec"
    cfg = _config(tmp_path, checkpoint_every=2)
    base = ["train-codec", "--data", str(data_dir), "--out", str(out), "--config", str(cfg)]
    assert main([*base, "--steps", "2", "--no-progress"]) == 0
    assert main([*base, "--steps", "4", "--resume", "--no-progress"]) == 0
    steps = [r["step"] for r in read_metrics(out) if "loss" in r]
    assert steps[-1] == 4 and steps == sorted(steps)


def test_cli_errors_are_clear(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(["train-codec", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    )
    assert "data directory" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"codec": {"config": {**TINY_CODEC, "vocab_size": 100}}}))
    code = main(["train-codec", "--data", str(data_dir), "--out", str(tmp_path / "o2"),
                 "--config", str(bad), "--steps", "1"])  # fmt: skip
    assert code == 2 and "smaller than the data's 258" in capsys.readouterr().err
    typo = tmp_path / "typo.json"
    typo.write_text(json.dumps({"codec": {"config": {"hiden_size": 8}}}))
    code = main(["train-codec", "--data", str(data_dir), "--out", str(tmp_path / "o3"),
                 "--config", str(typo), "--steps", "1"])  # fmt: skip
    assert code == 2 and "hiden_size" in capsys.readouterr().err
    assert main(["eval-codec", str(tmp_path), "--data", str(data_dir)]) == 2
    assert "config.json is missing" in capsys.readouterr().err


def test_recipes_are_valid_and_shorten() -> None:
    for name in RECIPES:
        cfg = TrainCodecConfig.model_validate(recipe(name))
        assert cfg.codec.name == "autoencoder"
    short = recipe("default", steps=150)["train"]
    full = RECIPES["default"]["train"]
    assert short["steps"] == 150
    assert short["warmup_steps"] == round(full["warmup_steps"] * 150 / full["steps"])
    assert short["eval_every"] <= 150 and short["checkpoint_every"] <= 150
    assert RECIPES["default"]["train"]["lr"] > RECIPES["reference"]["train"]["lr"]
    torch.manual_seed(0)  # the default recipe's codec builds with the bench shape
    assert TrainCodecConfig.model_validate(recipe()).train.schedule == "cosine"


def test_train_codec_without_a_validation_split(tmp_path: Path) -> None:
    docs = [Document(d.text[:800], d.source) for d in load_bundled_corpus()[:3]]
    data = tmp_path / "data"
    write_data_dir(data, docs, Tokenizer.byte_level(), chunk_size=4, val_docs=0, seed=0)
    out = tmp_path / "codec"
    cfg = _config(tmp_path)
    argv = ["train-codec", "--data", str(data), "--out", str(out), "--config", str(cfg)]
    assert main([*argv, "--steps", "2", "--no-progress"]) == 0
    assert isinstance(load_pretrained(out), ChunkAutoencoder)
    assert not (out / "reconstruction.json").exists()
