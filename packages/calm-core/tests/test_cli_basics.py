"""The `calm` command: help for every verb, suggestions for typos."""

from __future__ import annotations

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
