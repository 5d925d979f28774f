"""Release metadata: one version source, lockstep pins, and what an index page shows.

The checks themselves live in tests/release/check_dist.py, which the nox ``release`` session also
runs on the built wheels; here they run on the source tree, on copies of it with one file bumped
(the drift must be caught), and on hand-made wheels missing one field each.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import shutil
import sys
import tomllib
import zipfile
from pathlib import Path
from types import ModuleType

import calm_core
import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECTS = [
    "packages/calm-core/pyproject.toml",
    "packages/calm-heads/pyproject.toml",
    "packages/calm-codecs/pyproject.toml",
    "examples/calm-head-gaussian/pyproject.toml",
]


def _load_checks() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "check_dist", ROOT / "tests/release/check_dist.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("check_dist", module)
    spec.loader.exec_module(module)
    return module


checks = _load_checks()


def _copy_tree(tmp_path: Path) -> Path:
    """The files that carry or repeat the version, copied into tmp_path at their paths."""
    files = [checks.VERSION_FILE, *(f"{p}/pyproject.toml" for p in checks.FIRST_PARTY.values())]
    files += [*checks.RANGED, checks.TEMPLATE_QUESTIONS]
    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)
    return tmp_path


def _replace(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def test_the_source_tree_has_one_version_and_lockstep_pins() -> None:
    problems = checks.version_problems(ROOT)
    assert not problems, "the version drifted:\n" + "\n".join(problems)
    assert checks.read_version(ROOT) == calm_core.__version__


def test_installed_distributions_report_the_source_version() -> None:
    version = checks.read_version(ROOT)
    for dist in checks.FIRST_PARTY:
        assert importlib.metadata.version(dist) == version, (
            f"installed {dist} is {importlib.metadata.version(dist)}, the source says {version}: "
            "reinstall the packages (bash setup.sh, or pip install -e packages/...)"
        )


def test_bumping_only_the_version_file_breaks_the_pins(tmp_path: Path) -> None:
    root = _copy_tree(tmp_path)
    version = checks.read_version(ROOT)
    major, minor, patch = (int(p) for p in version.split(".")[:3])
    bumped = f"{major}.{minor}.{patch + 1}"
    _replace(root / checks.VERSION_FILE, f'"{version}"', f'"{bumped}"')
    problems = checks.version_problems(root)
    assert len(problems) == 3, problems
    assert f"calm-heads must pin calm-core=={bumped}" in problems[0]
    assert f"calm-codecs must pin calm-core=={bumped}" in problems[1]
    assert f"calm_core_version default {version} is not {bumped}" in problems[2]
    # the bump is complete once the pins and the template default follow
    for folder in ("packages/calm-heads", "packages/calm-codecs"):
        _replace(root / folder / "pyproject.toml", f"calm-core=={version}", f"calm-core=={bumped}")
    _replace(root / checks.TEMPLATE_QUESTIONS, f'"{version}"', f'"{bumped}"')
    assert checks.version_problems(root) == []


def test_bumping_one_pin_is_caught(tmp_path: Path) -> None:
    root = _copy_tree(tmp_path)
    version = checks.read_version(ROOT)
    path = root / "packages/calm-codecs/pyproject.toml"
    _replace(path, f"calm-core=={version}", "calm-core==9.9.9")
    assert checks.version_problems(root) == [
        f"{path}: calm-codecs must pin calm-core=={version} (lockstep release), found ['==9.9.9']"
    ]


def test_a_static_version_in_a_package_is_caught(tmp_path: Path) -> None:
    root = _copy_tree(tmp_path)
    path = root / "packages/calm-heads/pyproject.toml"
    _replace(path, 'dynamic = ["version"]', 'version = "0.1.0"')
    (problem,) = checks.version_problems(root)
    assert problem.startswith(f"{path}: write no version here")


def test_a_new_minor_release_is_outside_the_plugin_ranges(tmp_path: Path) -> None:
    root = _copy_tree(tmp_path)
    version = checks.read_version(ROOT)
    major, minor = (int(p) for p in version.split(".")[:2])
    _replace(root / checks.VERSION_FILE, f'"{version}"', f'"{major}.{minor + 1}.0"')
    problems = checks.version_problems(root)
    example = f"{root / checks.RANGED[0]}: calm-core range"
    assert any(p.startswith(example) and "does not admit" in p for p in problems), problems
    assert checks.minor_range("0.1.3") == ">=0.1,<0.2"
    assert checks.minor_range("1.4.0") == ">=1.4,<1.5"


@pytest.mark.parametrize("pyproject", PYPROJECTS)
def test_pyproject_carries_index_metadata(pyproject: str) -> None:
    path = ROOT / pyproject
    project = tomllib.loads(path.read_text(encoding="utf-8"))["project"]
    # PEP 639: an SPDX expression string, not the legacy {text = ...} table
    assert isinstance(project["license"], str) and project["license"].startswith("MIT")
    assert "LICENSE" in project["license-files"]
    for name in project["license-files"]:
        assert (path.parent / name).is_file(), f"{pyproject}: license file {name} is missing"
    assert set(project["urls"]) == set(checks.PROJECT_URLS)
    assert all(url.startswith("https://") for url in project["urls"].values())
    assert project["authors"] == [{"name": "The calm authors"}]
    assert set(checks.CLASSIFIERS) <= set(project["classifiers"])
    assert not [c for c in project["classifiers"] if c.startswith("License ::")], (
        "PEP 639 forbids license classifiers next to an SPDX license expression"
    )
    assert project["keywords"]


def test_every_license_file_is_the_root_mit_license() -> None:
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("MIT License") and "Copyright (c) 2026 The calm authors" in text
    for pyproject in PYPROJECTS:
        copy = (ROOT / pyproject).parent / "LICENSE"
        assert copy.read_text(encoding="utf-8") == text, f"{copy} differs from the root LICENSE"


@pytest.mark.parametrize("package", ["calm-core", "calm-heads", "calm-codecs"])
def test_package_readme_reads_right_on_an_index_page(package: str) -> None:
    readme = (ROOT / "packages" / package / "README.md").read_text(encoding="utf-8")
    assert f"pip install {package}" in readme
    assert not re.search(r"pip install (\./)?packages/", readme), "install by name, not by path"
    # relative links do not resolve on an index page
    links = re.findall(r"\]\(([^)]+)\)", readme)
    assert links and all(link.startswith("https://") for link in links), links
    assert "https://calm-lm.github.io/calm/" in readme


def _wheel(tmp_path: Path, name: str, version: str, drop: str = "", pin: str = "") -> Path:
    """A wheel holding only METADATA (and its license file), like hatch writes them."""
    dist_info = f"{name.replace('-', '_')}-{version}.dist-info"
    lines = [
        "Metadata-Version: 2.4",
        f"Name: {name}",
        f"Version: {version}",
        *(
            f"Project-URL: {label}, https://github.com/calm-lm/calm"
            for label in checks.PROJECT_URLS
        ),
        "Author: The calm authors",
        "License-Expression: MIT",
        "License-File: LICENSE",
        "Keywords: calm",
        *(f"Classifier: {c}" for c in checks.CLASSIFIERS),
        *([f"Requires-Dist: calm-core=={pin}"] if pin else []),
    ]
    lines = [line for line in lines if not (drop and line.startswith(drop))]
    path = tmp_path / f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{dist_info}/METADATA", "\n".join(lines) + "\n")
        zf.writestr(f"{dist_info}/licenses/LICENSE", "MIT")
    return path


def test_wheel_checks_pass_on_complete_metadata(tmp_path: Path) -> None:
    core = _wheel(tmp_path, "calm-core", "0.3.0")
    heads = _wheel(tmp_path, "calm-heads", "0.3.0", pin="0.3.0")
    assert checks.wheel_problems([core, heads]) == []


@pytest.mark.parametrize(
    ("drop", "expected"),
    [
        ("License-File", "no License-File (set project.license-files)"),
        ("License-Expression", "no License-Expression (set project.license = 'MIT')"),
        ("Project-URL: Issues", "no Project-URL for ['Issues'] (set [project.urls])"),
        ("Classifier: Typing", "missing classifiers ['Typing :: Typed']"),
        ("Author", "no Author (set project.authors)"),
        ("Keywords", "no Keywords (set project.keywords)"),
    ],
)
def test_wheel_checks_name_the_missing_field(tmp_path: Path, drop: str, expected: str) -> None:
    wheel = _wheel(tmp_path, "calm-codecs", "0.3.0", drop=drop, pin="0.3.0")
    assert checks.wheel_problems([wheel]) == [f"{wheel.name} METADATA: {expected}"]


def test_wheel_checks_catch_versions_out_of_lockstep(tmp_path: Path) -> None:
    core = _wheel(tmp_path, "calm-core", "0.3.1")
    heads = _wheel(tmp_path, "calm-heads", "0.3.0", pin="0.3.0")
    assert checks.wheel_problems([core, heads]) == [
        "first-party wheels disagree on the version: {'calm-core': '0.3.1', 'calm-heads': '0.3.0'}",
        "calm-heads wheel pins calm-core ['==0.3.0'], not ==0.3.1",
    ]
