"""The `calm` command: help for every verb, suggestions for typos."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from calm_core.cli import VERBS, main


def test_top_level_help_lists_verbs(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for verb in VERBS:
        assert verb in out


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_every_verb_has_help(verb: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([verb, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: calm {verb}" in out and "-h, --help" in out


def test_unknown_verb_suggests(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["plugin"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'plugin'" in err and "did you mean: plugins?" in err


def test_unknown_flag_suggests(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["plugins", "--jsn"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: --jsn" in err and "--jsn -> --json" in err


def test_no_verb_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: calm" in capsys.readouterr().out


def test_flag_verbs_take_a_validated_config_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "eval.toml"
    cfg.write_text('data = "some-data"\nnum-blocks = 3\nseed = 4\n')
    # --data comes from the file; the flag overrides the file's seed
    code = main(["eval", str(tmp_path / "missing"), "--config", str(cfg), "--seed", "9"])
    assert code == 2
    err = capsys.readouterr().err
    assert '"data": "some-data"' in err and '"num_blocks": 3' in err and '"seed": 9' in err
    assert "model directory" in err and "does not exist" in err


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ('{"tempreature": 0.5}', "tempreature: unknown field"),
        ('{"temperature": "hot"}', "temperature: Input should be a valid number"),
        ('{"sampling": "greedy"}', "sampling: Input should be"),
    ],
)
def test_bad_options_file_names_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, needle: str
) -> None:
    cfg = tmp_path / "gen.json"
    cfg.write_text(content)
    assert main(["generate", str(tmp_path), "--prompt", "hi", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert needle in err and "gen.json" in err


# ------------------------------------------------------------------------ calm generate output
def _uniform_byte_lm(path: Path) -> None:
    """An AR model over the byte tokenizer (PAD 0, EOS 1) whose next-token law is uniform."""
    from calm_core.ar import ARConfig, ARModel
    from calm_core.data.tokenizer import Tokenizer

    torch.manual_seed(0)
    backbone = {"hidden_size": 16, "intermediate_size": 32, "num_layers": 1, "num_heads": 2,
                "max_positions": 512}  # fmt: skip
    cfg = ARConfig.model_validate(
        {"backbone": backbone, "vocab_size": 258, "pad_id": 0, "eos_id": 1}
    )
    model = ARModel(cfg)
    with torch.no_grad():
        model.lm_head.weight.zero_()
    model.save_pretrained(path)
    Tokenizer.byte_level().save(path)


def test_generate_no_eos_stop_runs_to_max_new_tokens(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _uniform_byte_lm(tmp_path / "m")
    base = ["generate", str(tmp_path / "m"), "--prompt", "hi", "--seed", "3", "--json"]
    assert main([*base, "--max-new-tokens", "400"]) == 0
    stopped = json.loads(capsys.readouterr().out)["new_ids"]
    assert stopped[-1] == 1 and len(stopped) < 400  # a uniform law meets EOS (1 in 258) early
    assert main([*base, "--max-new-tokens", "400", "--no-eos-stop"]) == 0
    free = json.loads(capsys.readouterr().out)["new_ids"]
    assert len(free) == 400 and free[: len(stopped)] == stopped


def test_streamed_text_equals_the_decoded_ids_even_across_split_characters(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from calm_core.data.tokenizer import Tokenizer

    _uniform_byte_lm(tmp_path / "m")
    base = ["generate", str(tmp_path / "m"), "--prompt", "hi", "--seed", "3"]
    base += ["--max-new-tokens", "300", "--no-eos-stop"]
    assert main([*base, "--json"]) == 0
    ids = json.loads(capsys.readouterr().out)["new_ids"]
    assert main(base) == 0
    streamed = capsys.readouterr().out
    assert streamed == "hi" + Tokenizer.byte_level().decode(ids) + "\n"


def test_partial_utf8_is_held_back_until_its_last_byte(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from calm_core.cli.generate import _write_stable

    shown = ""
    for text in ("caf", "caf\ufffd", "café", "café!"):
        shown = _write_stable(text, shown)
    assert capsys.readouterr().out == "café!"


# ------------------------------------------------------------------------------- calm train
@pytest.fixture(scope="module")
def byte_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from test_trainer_support import make_data_dir

    return make_data_dir(tmp_path_factory.mktemp("bytes"), docs=12, val_docs=2)


def _train_ar(data: Path, out: Path, *extra: str) -> int:
    return main(["train", "--model", "ar", "--preset", "transformer-tiny", "--data", str(data),
                 "--out", str(out), "--batch-size", "2", "--seq-len", "16", "--no-progress",
                 *extra])  # fmt: skip


def test_train_with_the_same_seed_gives_the_same_weights(byte_data: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    for name in ("a", "b", "c"):
        torch.rand(3)  # whatever the process's RNG did before, --seed decides the initial weights
        seed = "1" if name == "c" else "0"
        assert _train_ar(byte_data, tmp_path / name, "--steps", "1", "--seed", seed) == 0
    a, b, c = (load_file(tmp_path / n / "model.safetensors") for n in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_train_errors_on_lengths_the_data_cannot_serve(
    byte_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the AR model has no K, but the data's blocks are cut on its chunks (K=4)
    assert _train_ar(byte_data, tmp_path / "a", "--steps", "1", "--seq-len", "18") == 2
    assert "multiple of the data's chunk size K=4 (e.g. 16)" in capsys.readouterr().err
    # a validation split shorter than one block: refused before any step, as a usage error
    from calm_core.data import PackedDataset

    seq = (PackedDataset(byte_data, "val").num_tokens // 4 + 1) * 4
    assert seq <= min(512, PackedDataset(byte_data).num_tokens)  # the train split has blocks
    assert _train_ar(byte_data, tmp_path / "b", "--steps", "1", "--seq-len", str(seq)) == 2
    assert f"fewer than one block of seq_len={seq}" in capsys.readouterr().err
    assert not (tmp_path / "b" / "model.safetensors").exists()


def test_resumed_finished_run_prints_strict_json(
    byte_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _train_ar(byte_data, tmp_path / "r", "--steps", "2", "--json") == 0
    first = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert _train_ar(byte_data, tmp_path / "r", "--steps", "2", "--json", "--resume") == 0
    again = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert again["final_loss"] == first["final_loss"] and again["steps"] == 2


def test_print_json_writes_non_finite_floats_as_null(capsys: pytest.CaptureFixture[str]) -> None:
    from calm_core.cli.common import print_json

    print_json({"a": float("nan"), "b": [1.5, float("inf")], "c": {"d": -float("inf")}})
    assert json.loads(capsys.readouterr().out) == {"a": None, "b": [1.5, None], "c": {"d": None}}


def test_resume_refuses_a_directory_without_checkpoints(
    byte_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "other"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert _train_ar(byte_data, out, "--steps", "1", "--resume") == 2
    assert "holds no checkpoint to continue from" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_resume_with_other_settings_is_a_usage_error(
    byte_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _train_ar(byte_data, tmp_path / "r", "--steps", "2") == 0
    capsys.readouterr()
    assert _train_ar(byte_data, tmp_path / "r", "--steps", "3", "--seed", "7", "--resume") == 2
    err = capsys.readouterr().err
    assert "trained with seed=0, this run has seed=7" in err and "drop --resume" in err


def test_only_training_verbs_suggest_resume(
    byte_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = tmp_path / "a.txt"
    corpus.write_text("some text to tokenize\n")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("")
    assert main(["tokenize", str(corpus), "--out", str(tmp_path / "out"), "--byte-level"]) == 2
    err = capsys.readouterr().err
    assert "pass --overwrite" in err and "--resume" not in err
    assert _train_ar(byte_data, tmp_path / "out", "--steps", "1") == 2
    assert "(or --resume to continue a run)" in capsys.readouterr().err


def test_eval_refuses_data_of_another_tokenizer(
    byte_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from word_corpus import write_word_corpus

    assert _train_ar(byte_data, tmp_path / "ar", "--steps", "1") == 0
    write_word_corpus(tmp_path / "words.jsonl", num_docs=20, words_per_doc=40)
    assert main(["tokenize", str(tmp_path / "words.jsonl"), "--out", str(tmp_path / "bpe"),
                 "--vocab-size", "270", "--val-docs", "2"]) == 0  # fmt: skip
    capsys.readouterr()
    args = ["eval", str(tmp_path / "ar"), "--data", str(tmp_path / "bpe"), "--num-blocks", "1"]
    assert main([*args, "--block-len", "16"]) == 2
    assert "was tokenized with another tokenizer" in capsys.readouterr().err
    # the data the model was trained on is accepted
    args = ["eval", str(tmp_path / "ar"), "--data", str(byte_data), "--num-blocks", "1"]
    assert main([*args, "--block-len", "16", "--json"]) == 0


def test_resume_and_overwrite_together_are_refused(
    byte_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _train_ar(byte_data, tmp_path / "r", "--steps", "1", "--resume", "--overwrite") == 2
    assert "pass one of them" in capsys.readouterr().err


def test_overwrite_removes_the_old_model_before_training(tmp_path: Path) -> None:
    from calm_core.cli.common import prepare_output_dir

    out = tmp_path / "run"
    out.mkdir()
    for name in ("config.json", "model.safetensors", "reconstruction.json", "notes.txt"):
        (out / name).write_text("old")
    # a run cut short after this must not leave the old model loadable as if it were the new one
    prepare_output_dir(out, overwrite=True, resumable=True)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_train_honours_device_cpu_and_prints_the_resolved_device(
    byte_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _train_ar(byte_data, tmp_path / "r", "--steps", "1", "--device", "cpu", "--json") == 0
    captured = capsys.readouterr()
    assert "\ndevice: cpu\n" in captured.err
    assert '"device": "cpu"' in captured.err  # the resolved config's train.device
    assert json.loads(captured.out.strip().splitlines()[-1])["device"] == "cpu"
    # a config file may set it too; the flag wins over the file
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"train": {"device": "cuda:7"}}))
    out = tmp_path / "r2"
    assert _train_ar(byte_data, out, "--steps", "1", "--config", str(cfg), "--device", "cpu") == 0
    assert "\ndevice: cpu\n" in capsys.readouterr().err
    assert _train_ar(byte_data, tmp_path / "r3", "--steps", "1", "--config", str(cfg)) == 2
    assert "device 'cuda:7' is not available" in capsys.readouterr().err
