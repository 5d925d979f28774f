"""Cross-verb usage errors of the ``calm`` command: every verb fails the same clear way.

Unknown verbs and flags get suggestions; a config file with an unknown key or a wrong type names
the field path; missing inputs, unwritable outputs and non-empty outputs (without
``--overwrite``) are refused with exit status 2 before any work; a codec that does not fit the
data or the model is named. The inputs are tiny real directories (a byte-level data directory, a
random codec), so every verb gets past its input checks to the problem under test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from calm_core.cli import VERBS, build_parser, main
from calm_core.model_dir import save_pretrained
from calm_core.registry import codecs


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A byte-level data directory (K=4), a matching random codec and a mismatched codec."""
    root = tmp_path_factory.mktemp("cli")
    corpus = root / "corpus.jsonl"
    corpus.write_text(
        "\n".join(
            json.dumps({"text": f"document {i} " + "some words here " * 40}) for i in range(6)
        )
    )
    data = root / "data"
    assert (
        main(["tokenize", str(corpus), "--out", str(data), "--byte-level", "--val-docs", "2"]) == 0
    )
    small = {"hidden_size": 16, "intermediate_size": 32, "latent_size": 4}
    codec = codecs.build({"name": "autoencoder", "config": {"vocab_size": 258, **small}})
    save_pretrained(codec, root / "codec")
    other = codecs.build({"name": "autoencoder", "config": {"vocab_size": 200, **small}})
    save_pretrained(other, root / "codec_v200")
    blocker = root / "a_file"
    blocker.write_text("not a directory")
    return {"root": root, "corpus": corpus, "data": data, "codec": root / "codec",
            "codec_v200": root / "codec_v200", "blocker": blocker}  # fmt: skip


def _argv(verb: str, ws: dict[str, Path], out: Path) -> list[str] | None:
    """Minimal valid arguments of each verb (None for verbs this test does not know)."""
    table = {
        "tokenize": [str(ws["corpus"]), "--out", str(out), "--byte-level"],
        "train-codec": ["--data", str(ws["data"]), "--out", str(out)],
        "train": ["--data", str(ws["data"]), "--codec", str(ws["codec"]), "--out", str(out)],
        "eval": [str(ws["codec"]), "--data", str(ws["data"])],
        "eval-codec": [str(ws["codec"]), "--data", str(ws["data"])],
        "generate": [str(ws["codec"]), "--prompt", "hi"],
        "plugins": [],
        "convert-reference": [str(ws["root"] / "missing-src"), str(out)],
        "demo": ["--out", str(out)],
    }
    args = table.get(verb)
    return None if args is None else [verb, *args]


def _options(verb: str) -> list[str]:
    parser = build_parser().verb_parsers()[verb]
    return [o for a in parser._actions for o in a.option_strings if o.startswith("--")]


def test_unknown_verb_suggests_the_close_one(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["tokenise", "x"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice" in err and "did you mean: tokenize" in err


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_unknown_flag_is_named_with_a_suggestion(verb: str, workspace, tmp_path, capsys) -> None:
    argv = _argv(verb, workspace, tmp_path / "out")
    if argv is None:
        pytest.skip(f"no minimal arguments known for {verb}")
    flag = next(o for o in _options(verb) if o != "--help" and len(o) > 5)
    typo = flag[:-1]  # drop the last letter: close enough for a suggestion
    if typo in _options(verb):
        pytest.skip("the typo is itself an option")
    with pytest.raises(SystemExit) as exc:
        main([*argv, typo + "x"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments" in err and flag in err


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_help_documents_every_option(verb: str, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main([verb, "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for option in _options(verb):
        assert option in text


def _config_verbs() -> list[str]:
    return sorted(v for v in VERBS if "--config" in _options(v))


@pytest.mark.parametrize("verb", _config_verbs())
@pytest.mark.parametrize("suffix", [".json", ".toml"])
def test_config_unknown_key_names_the_field(verb, suffix, workspace, tmp_path, capsys) -> None:
    argv = _argv(verb, workspace, tmp_path / "out")
    if argv is None:
        pytest.skip(f"no minimal arguments known for {verb}")
    cfg = tmp_path / f"bad{suffix}"
    cfg.write_text('{"no_such_field": 1}' if suffix == ".json" else "no_such_field = 1\n")
    assert main([*argv, "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "no_such_field" in err and "unknown field" in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize(
    ("verb", "body", "path"),
    [
        ("tokenize", '{"vocab_size": "big"}', "vocab_size"),
        ("train-codec", '{"train": {"steps": "many"}}', "train.steps"),
        ("train", '{"train": {"lr": "fast"}}', "train.lr"),
        ("demo", '{"lm": {"num_layers": [1]}}', "lm.num_layers"),
    ],
)
def test_config_wrong_type_names_the_path(verb, body, path, workspace, tmp_path, capsys) -> None:
    argv = _argv(verb, workspace, tmp_path / "out")
    if verb not in VERBS or argv is None:
        pytest.skip(f"{verb} is not installed")
    cfg = tmp_path / "bad.json"
    cfg.write_text(body)
    assert main([*argv, "--config", str(cfg)]) == 2
    assert path in capsys.readouterr().err


@pytest.mark.parametrize(
    ("verb", "args"),
    [
        ("tokenize", ["{root}/nope.txt", "--out", "{root}/o1"]),
        ("train-codec", ["--data", "{root}/nodata", "--out", "{root}/o2"]),
        ("train", ["--data", "{data}", "--codec", "{root}/nocodec", "--out", "{root}/o3"]),
        ("eval", ["{root}/nomodel", "--data", "{data}"]),
        ("generate", ["{root}/nomodel", "--prompt", "hi"]),
        ("convert-reference", ["{root}/nosrc", "{root}/o4"]),
        ("demo", ["--corpus", "{root}/nocorpus.txt", "--out", "{root}/o5"]),
    ],
)
def test_missing_input_is_named(verb, args, workspace, capsys) -> None:
    if verb not in VERBS:
        pytest.skip(f"{verb} is not installed")
    argv = [a.format(root=workspace["root"], data=workspace["data"]) for a in args]
    assert main([verb, *argv]) == 2
    err = capsys.readouterr().err
    missing = next(a for a in argv if "/no" in a)
    assert Path(missing).name in err and ("does not exist" in err or "not found" in err)


@pytest.mark.parametrize("verb", ["tokenize", "train-codec", "demo"])
def test_unwritable_output(verb, workspace, capsys) -> None:
    if verb not in VERBS:
        pytest.skip(f"{verb} is not installed")
    argv = _argv(verb, workspace, workspace["blocker"] / "sub")
    assert argv is not None
    assert main([*argv, "--quick"] if verb == "demo" else argv) == 2
    assert "not writable" in capsys.readouterr().err


@pytest.mark.parametrize("verb", ["tokenize", "train-codec", "train", "convert-reference", "demo"])
def test_non_empty_output_needs_overwrite(verb, workspace, tmp_path, capsys) -> None:
    if verb not in VERBS:
        pytest.skip(f"{verb} is not installed")
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    argv = _argv(verb, workspace, out)
    assert argv is not None
    if verb == "convert-reference":  # needs a readable source to get as far as the output
        src = tmp_path / "src"
        src.mkdir()
        (src / "config.json").write_text(json.dumps({"num_encoder_layers": 2}))
        import torch
        from safetensors.torch import save_file

        save_file({"x": torch.zeros(1)}, str(src / "model.safetensors"))
        argv = [verb, str(src), str(out)]
    assert main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "precious.txt").read_text() == "keep me"


def test_train_with_a_codec_that_does_not_fit_the_data(workspace, tmp_path, capsys) -> None:
    if "train" not in VERBS:
        pytest.skip("calm train is not installed")
    # a codec with fewer ids than the data cannot encode it (more ids are fine, as in train-codec)
    argv = ["train", "--data", str(workspace["data"]), "--codec", str(workspace["codec_v200"]),
            "--out", str(tmp_path / "o"), "--steps", "1"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "vocab_size is 200, smaller than the data's 258" in err


DEVICE_VERBS = ["train-codec", "train", "eval", "eval-codec", "generate", "demo"]


@pytest.mark.parametrize("verb", DEVICE_VERBS)
def test_device_cuda_without_cuda_is_a_usage_error(
    verb: str, workspace, tmp_path, capsys, monkeypatch
) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    argv = _argv(verb, workspace, tmp_path / "out")
    assert argv is not None
    assert main([*argv, "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert f"calm {verb}: error: device 'cuda' is not available" in err
    assert "available: cpu" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # refused before any work
    assert main([*argv, "--device", "tpu"]) == 2
    assert "unknown device 'tpu'; use auto, cpu, cuda, cuda:N or mps" in capsys.readouterr().err


@pytest.mark.parametrize("verb", DEVICE_VERBS)
def test_every_compute_verb_documents_device(verb: str, capsys) -> None:
    with pytest.raises(SystemExit):
        main([verb, "--help"])
    assert "--device DEVICE" in capsys.readouterr().out
