"""The import-linter contracts of pyproject.toml hold on the real tree and catch a wrong import.

Each wrong import is written into a copy of the three src trees, put first on ``PYTHONPATH`` of
a ``lint-imports`` run with the repository's own contracts; the run must fail naming the
contract that import breaks.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"
SRC = {
    "calm_core": ROOT / "packages/calm-core/src/calm_core",
    "calm_heads": ROOT / "packages/calm-heads/src/calm_heads",
    "calm_codecs": ROOT / "packages/calm-codecs/src/calm_codecs",
}
#: what heads and codecs may import of calm_core (stated in pyproject.toml and docs/design.md)
PLUGIN_SURFACE = {"config", "interfaces", "testing", "presets", "reductions"}

LINT = (
    "import sys\n"
    "from importlinter.cli import lint_imports\n"
    "sys.exit(lint_imports(config_filename=sys.argv[1], no_cache=True, no_logo=True))\n"
)


def _lint(pythonpath: list[Path] | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join([*map(str, pythonpath), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-c", LINT, str(PYPROJECT)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )


def _contracts() -> list[dict[str, object]]:
    data = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))
    contracts: list[dict[str, object]] = data["tool"]["importlinter"]["contracts"]
    return contracts


def _top_level_modules(package: Path) -> set[str]:
    return {
        p.stem if p.is_file() else p.name
        for p in package.iterdir()
        if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()
    }


def test_the_real_tree_keeps_every_contract() -> None:
    out = _lint()
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"Contracts: {len(_contracts())} kept, 0 broken." in out.stdout


# (file to append to, the wrong import, words of the contract it breaks)
WRONG_IMPORTS = {
    "interfaces-imports-model_dir": (
        "calm_core/interfaces.py",
        "from calm_core import model_dir  # noqa",
        "calm-core layers",
    ),
    "registry-imports-a-model": (
        "calm_core/registry.py",
        "import calm_core.calm  # noqa",
        "calm-core layers",
    ),
    "core-imports-a-head": (
        "calm_core/calm.py",
        "import calm_heads.energy  # noqa",
        "calm_core never imports calm_heads or calm_codecs",
    ),
    "head-imports-the-model": (
        "calm_heads/energy.py",
        "from calm_core import calm  # noqa",
        "import only calm_core's plugin surface",
    ),
    "codec-imports-a-head": (
        "calm_codecs/autoencoder.py",
        "import calm_heads  # noqa",
        "do not import each other",
    ),
}


@pytest.mark.parametrize("case", sorted(WRONG_IMPORTS))
def test_a_wrong_import_breaks_its_contract(case: str, tmp_path: Path) -> None:
    target, line, contract = WRONG_IMPORTS[case]
    for name, src in SRC.items():
        shutil.copytree(src, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    path = tmp_path / target
    path.write_text(path.read_text(encoding="utf-8") + f"\n{line}\n", encoding="utf-8")
    out = _lint([tmp_path])
    assert out.returncode == 1, out.stdout + out.stderr
    assert "1 broken." in out.stdout, out.stdout
    # the report lists "name KEPT|BROKEN", names wrapped over lines; then the broken import
    words = " ".join(out.stdout.split())
    summary = re.search(r"dependencies\. -+ (.*?) Contracts: \d+ kept", words)
    assert summary is not None, words
    statuses = re.findall(r"(.+?) (KEPT|BROKEN)(?: |$)", summary.group(1))
    broken = [name for name, status in statuses if status == "BROKEN"]
    assert len(broken) == 1 and contract in broken[0], statuses
    module = target.removesuffix(".py").replace("/", ".")
    assert f"{module} -> " in words, words


def test_every_calm_core_module_is_on_one_side_of_the_plugin_surface() -> None:
    forbidden = next(
        c for c in _contracts() if "plugin surface" in str(c["name"]) and c["type"] == "forbidden"
    )
    listed = {str(m).removeprefix("calm_core.") for m in forbidden["forbidden_modules"]}  # type: ignore[attr-defined]
    modules = _top_level_modules(SRC["calm_core"])
    unplaced = modules - listed - PLUGIN_SURFACE
    assert not unplaced, (
        f"calm_core modules {sorted(unplaced)} are neither part of the plugin surface nor "
        "forbidden to plugins: add them to the 'plugin surface' contract in pyproject.toml"
    )
    assert not listed & PLUGIN_SURFACE
    assert modules >= PLUGIN_SURFACE
