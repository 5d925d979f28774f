"""``calm eval`` end to end on tiny saved CALM, AR and codec directories."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from calm_core.ar import ARConfig, ARModel
from calm_core.calm import CALM
from calm_core.cli import main
from calm_core.model_dir import save_pretrained
from calm_core.registry import codecs
from word_corpus import write_word_corpus

BACKBONE = {
    "hidden_size": 16,
    "intermediate_size": 24,
    "num_layers": 2,
    "num_heads": 2,
    "max_positions": 256,
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("eval")
    write_word_corpus(d / "c.jsonl", num_docs=8, words_per_doc=40)
    argv = ["tokenize", str(d / "c.jsonl"), "--out", str(d / "data"), "--byte-level"]
    assert main([*argv, "--chunk-size", "2", "--val-docs", "2"]) == 0
    torch.manual_seed(0)
    shape = {"latent_size": 4, "hidden_size": 16, "intermediate_size": 24}
    codec = codecs.build(
        {"name": "autoencoder", "config": {"vocab_size": 258, "chunk_size": 2, **shape}}
    )
    save_pretrained(codec, d / "codec")
    head = {"name": "energy", "config": {"noise_size": 4, "num_blocks": 1}}
    CALM.from_codec(codec, backbone=BACKBONE, head=head).save_pretrained(d / "calm")
    lm = ARModel(ARConfig(backbone=BACKBONE, vocab_size=258))
    lm.save_pretrained(d / "ar")
    return d


def _eval(workdir: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> dict:  # type: ignore[type-arg]
    args = ["eval", *extra, "--data", str(workdir / "data"), "--json"]
    assert main(args) == 0
    return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]


def test_eval_calm_reports_brier_and_reconstruction(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _eval(workdir, capsys, str(workdir / "calm"), "--block-len", "32", "--num-blocks", "4")
    assert out["model_type"] == "calm" and out["num_blocks"] == 4
    assert set(out["brier"]) == {"1", "2", "3", "4"} and set(out["brier_se"]) == set(out["brier"])
    # untrained: the two samples (nearly) always agree and never hit, so every Brier-n is
    # <= 0; BrierLM is then 0 and flagged, never the reference's ~98.8
    assert all(b <= 0 for b in out["brier"].values())
    assert out["brierlm"] == 0.0 and out["brierlm_raw"] == 0.0
    assert out["brierlm_meaningful"] is False and "<= 0" in out["warning"]
    for key in ("token_accuracy", "chunk_accuracy"):
        assert 0.0 <= out[key] <= 1.0
    assert set(out["noisy_token_accuracy"]) == {"0.1", "0.3", "0.5"}
    # same seed, same numbers
    again = _eval(workdir, capsys, str(workdir / "calm"), "--block-len", "32", "--num-blocks", "4")
    assert again["brier"] == out["brier"]


def test_eval_ar_and_codec(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = _eval(workdir, capsys, str(workdir / "ar"), "--block-len", "24", "--num-blocks", "3")
    assert out["model_type"] == "ar" and "token_accuracy" not in out
    # an untrained LM is close to uniform over 258 tokens: Brier-1 ~ 2/V - 1/V
    assert out["brier"]["1"] == pytest.approx(1 / 258, rel=0.2)
    assert out["brier_se"]["1"] >= 0
    codec = _eval(workdir, capsys, str(workdir / "codec"))
    assert codec["model_type"] == "codec" and codec["brier"] is None
    assert "token_accuracy" in codec


def test_eval_usage_errors(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = str(workdir / "data")
    assert main(["eval", str(workdir / "calm"), "--data", data, "--block-len", "33"]) == 2
    assert "multiple of K=2" in capsys.readouterr().err
    assert main(["eval", str(workdir / "nope"), "--data", data]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["eval", str(workdir / "ar"), "--data", data, "--block-len", "100000"]) == 2
    assert "fewer than one block" in capsys.readouterr().err
