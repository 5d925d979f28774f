"""Nothing outside ``calm_core/cli/`` imports ``calm_core.cli``: the command line is a leaf over
the library (recipes, demo, benchmarks and plugins call :mod:`calm_core.recipes`)."""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI_DIR = ROOT / "packages" / "calm-core" / "src" / "calm_core" / "cli"
#: library and tool sources; tests may drive the command line
SOURCES = [
    *sorted((ROOT / "packages").glob("*/src")),
    *sorted((ROOT / "examples").glob("*/src")),
    ROOT / "benchmarks",
    ROOT / "noxfile.py",
]


def cli_importers(paths: Iterable[Path]) -> list[str]:
    """``file:line`` of every import of ``calm_core.cli`` (or a module in it) in ``paths``."""
    found = []
    for root in paths:
        for path in [root] if root.is_file() else sorted(root.rglob("*.py")):
            if CLI_DIR in path.parents:
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
                names: list[str] = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
                if any(n == "calm_core.cli" or n.startswith("calm_core.cli.") for n in names):
                    found.append(f"{path}:{node.lineno}")
    return found


def test_nothing_outside_the_cli_imports_it() -> None:
    assert all(p.exists() for p in SOURCES)
    assert cli_importers(SOURCES) == []


def test_the_scan_finds_every_import_form(tmp_path: Path) -> None:
    forms = [
        "import calm_core.cli",
        "from calm_core.cli.train import run",
        "from calm_core import cli",
        "def f():\n    from calm_core.cli.common import CLIError",
    ]
    for i, form in enumerate(forms):
        (tmp_path / f"m{i}.py").write_text(form + "\n")
    (tmp_path / "fine.py").write_text(
        "from calm_core.recipes import train_codec\nimport calm_core\n"
    )
    hits = cli_importers([tmp_path])
    assert len(hits) == len(forms) and not any("fine.py" in h for h in hits)
