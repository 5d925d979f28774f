"""End to end through the CLI: tokenize -> train-codec -> train (CALM and AR) -> generate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from calm_core.cli import main
from word_corpus import write_word_corpus

pytest.importorskip("calm_heads")
pytest.importorskip("calm_codecs")

BACKBONE = {"hidden_size": 32, "intermediate_size": 64, "num_layers": 2, "num_heads": 4,
            "max_positions": 64}  # fmt: skip
TRAIN = {"batch_size": 2, "seq_len": 64, "eval_every": 0, "log_every": 1}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("cli")
    write_word_corpus(d / "corpus.jsonl", num_docs=30, words_per_doc=50)
    assert main(["tokenize", str(d / "corpus.jsonl"), "--out", str(d / "data"),
                 "--vocab-size", "300", "--chunk-size", "4", "--val-docs", "3"]) == 0  # fmt: skip
    codec_cfg = {"codec": {"name": "autoencoder", "config": {"hidden_size": 32,
                 "intermediate_size": 64, "latent_size": 8}}, "train": TRAIN}  # fmt: skip
    (d / "codec.json").write_text(json.dumps(codec_cfg))
    assert main(["train-codec", "--data", str(d / "data"), "--out", str(d / "codec"),
                 "--config", str(d / "codec.json"), "--steps", "2", "--no-progress"]) == 0  # fmt: skip
    return d


def test_calm_train_then_generate_from_the_directory_alone(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = {"backbone": BACKBONE, "head": {"name": "energy", "config": {"num_blocks": 1,
           "noise_size": 8}}, "train": TRAIN}  # fmt: skip
    (workdir / "calm.json").write_text(json.dumps(cfg))
    out = workdir / "calm"
    code = main(["train", "--data", str(workdir / "data"), "--codec", str(workdir / "codec"),
                 "--out", str(out), "--config", str(workdir / "calm.json"), "--steps", "2",
                 "--no-progress", "--json"])  # fmt: skip
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["model"] == "calm" and summary["steps"] == 2
    for name in ("config.json", "model.safetensors", "metrics.jsonl", "tokenizer.json"):
        assert (out / name).is_file(), name
    record = json.loads((out / "config.json").read_text())
    assert record["type"] == "calm" and record["config"]["codec"]["name"] == "autoencoder"
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in x for x in lines)
    assert main(["generate", str(out), "--prompt", "the cat sat", "--max-new-tokens", "8",
                 "--seed", "1", "--json"]) == 0  # fmt: skip
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 1 <= len(result["new_ids"]) <= 8 and isinstance(result["text"], str)
    assert main(["generate", str(out), "--prompt", "the cat", "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out.startswith("the cat")


def test_ar_train_then_greedy_generate(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = {"backbone": BACKBONE, "train": TRAIN}
    (workdir / "ar.json").write_text(json.dumps(cfg))
    out = workdir / "ar"
    assert main(["train", "--model", "ar", "--data", str(workdir / "data"), "--out", str(out),
                 "--config", str(workdir / "ar.json"), "--steps", "2", "--no-progress"]) == 0  # fmt: skip
    args = ["generate", str(out), "--prompt", "the dog", "--max-new-tokens", "5",
            "--temperature", "0", "--json"]  # fmt: skip
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(args) == 0
    second = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert first["new_ids"] == second["new_ids"]


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--model", "calm"], "--codec MODEL_DIR is required"),
        (["--model", "ar", "--head", "energy"], "--head applies to CALM only"),
        (["--model", "ar", "--preset", "calm-tiny"], "is a calm preset but the model is ar"),
    ],
)
def test_train_usage_errors(
    workdir: Path, capsys: pytest.CaptureFixture[str], argv: list[str], needle: str
) -> None:
    code = main(["train", "--data", str(workdir / "data"), "--out",
                 str(workdir / "bad"), "--steps", "1", *argv])  # fmt: skip
    assert code == 2
    assert needle in capsys.readouterr().err


def test_generate_errors_are_clear(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["generate", str(workdir / "nope"), "--prompt", "x"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["generate", str(workdir / "codec"), "--prompt", "x"]) == 2
    assert "needs a CALM or AR model directory" in capsys.readouterr().err


def test_config_file_may_switch_the_head_without_the_flag(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the preset's energy-head settings must not leak into the file's flow head
    cfg = {"backbone": BACKBONE, "head": {"name": "flow", "config": {"steps": 2}}, "train": TRAIN}
    (workdir / "flow.json").write_text(json.dumps(cfg))
    out = workdir / "flow"
    assert main(["train", "--data", str(workdir / "data"), "--codec", str(workdir / "codec"),
                 "--out", str(out), "--config", str(workdir / "flow.json"), "--steps", "1",
                 "--no-progress"]) == 0  # fmt: skip
    record = json.loads((out / "config.json").read_text())
    assert record["config"]["head"]["name"] == "flow"
    assert record["components"]["head"]["distribution"] == "calm-heads"


def test_unknown_component_names_are_usage_errors(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["train", "--data", str(workdir / "data"), "--codec", str(workdir / "codec"),
                 "--out", str(workdir / "typo"), "--head", "energyy", "--steps", "1"])  # fmt: skip
    assert code == 2
    assert "no head named 'energyy'" in capsys.readouterr().err
    code = main(["train-codec", "--data", str(workdir / "data"), "--out", str(workdir / "typo2"),
                 "--codec", "autoencodr", "--steps", "1"])  # fmt: skip
    assert code == 2
    assert "Did you mean: 'autoencoder'" in capsys.readouterr().err


def test_exhausted_exact_sampler_is_a_usage_error_naming_the_flags(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from calm_core.calm import CALM
    from calm_core.sampling import TemperatureSamplingError

    if not (workdir / "calm" / "config.json").is_file():
        pytest.skip(
            "needs the CALM trained by test_calm_train_then_generate_from_the_directory_alone"
        )

    def exhausted(*args: object, **kwargs: object) -> object:
        raise TemperatureSamplingError(
            "exact temperature sampling at T=0.05 did not accept a sample for 1 of 1 rows; "
            "raise max_draws or pass on_exhausted='fallback'"
        )

    monkeypatch.setattr(CALM, "stream", exhausted)
    code = main(["generate", str(workdir / "calm"), "--prompt", "the cat", "--max-new-tokens",
                 "4", "--temperature", "0.05"])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "did not accept a sample for 1 of 1 rows; use --sampling batch" in err
    assert "max_draws" not in err  # library arguments are not flags


def test_a_fresh_codec_run_removes_an_earlier_report(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from word_corpus import write_word_corpus

    write_word_corpus(workdir / "noval.jsonl", num_docs=12, words_per_doc=50)
    data = workdir / "noval"  # no --val-docs: a codec trained here writes no report
    assert main(["tokenize", str(workdir / "noval.jsonl"), "--out", str(data),
                 "--vocab-size", "300", "--chunk-size", "4"]) == 0  # fmt: skip
    out = workdir / "codec_noval"
    out.mkdir()
    (out / "reconstruction.json").write_text('{"token_accuracy": 0.05}')
    assert main(["train-codec", "--data", str(data), "--out", str(out), "--config",
                 str(workdir / "codec.json"), "--steps", "1", "--no-progress",
                 "--overwrite"]) == 0  # fmt: skip
    assert not (out / "reconstruction.json").exists()


def test_a_codec_with_a_larger_vocabulary_trains_calm_on_its_data(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = json.loads((workdir / "codec.json").read_text())
    cfg["codec"]["config"]["vocab_size"] = 512  # the data's is 300: train-codec accepts it
    (workdir / "codec512.json").write_text(json.dumps(cfg))
    assert main(["train-codec", "--data", str(workdir / "data"), "--out",
                 str(workdir / "codec512"), "--config", str(workdir / "codec512.json"),
                 "--steps", "1", "--no-progress"]) == 0  # fmt: skip
    code = main(["train", "--data", str(workdir / "data"), "--codec", str(workdir / "codec512"),
                 "--out", str(workdir / "calm512"), "--config", str(workdir / "calm.json"),
                 "--steps", "1", "--no-progress"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
