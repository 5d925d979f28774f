"""The README's promises: its compose-in-code snippet runs, its Quickstart matches ``.ci/run``,
and its links into docs/ resolve."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _quickstart_commands() -> list[str]:
    section = README.split("## Quickstart", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "the Quickstart section has no bash block"
    return [line.strip() for line in block.group(1).splitlines() if line.strip()]


def test_readme_quickstart_has_two_commands_and_ci_runs_the_second() -> None:
    first, second = _quickstart_commands()
    for package in ("packages/calm-core", "packages/calm-heads", "packages/calm-codecs"):
        assert package in first
    assert first.endswith("&& calm demo")
    assert second == "python -m pip install --upgrade nox && python -m nox -s tests"
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert second in [line.strip() for line in ci], ".ci/run must run the README's test command"


def test_readme_compose_in_code_snippet_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    assert blocks, "the README has no Python snippet"
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(blocks[0], "README.md", "exec"), {"__name__": "readme"})
    assert out.getvalue().strip() == "torch.Size([2, 8])"

    from calm_core.calm import CALM

    model = CALM.from_pretrained(tmp_path / "my-calm")
    assert model.chunk_size == 4 and model.head.config.num_blocks == 1


def test_readme_links_into_docs_resolve() -> None:
    links = re.findall(r"\]\(((?:docs|packages)/[^)#]+)\)", README)
    assert any(link.startswith("docs/") for link in links)
    missing = [link for link in links if not (ROOT / link).exists()]
    assert not missing, f"README links to missing files: {missing}"
