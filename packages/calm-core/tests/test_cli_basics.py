"""The `calm` command: help for every verb, suggestions for typos."""

from __future__ import annotations

from pathlib import Path

import pytest
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
