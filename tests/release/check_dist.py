"""Release checks shared by tests/test_release_metadata.py and the nox ``release`` session.

* :func:`version_problems` reads the source tree: calm_core/_version.py is the one version source,
  the three first-party pyproject.toml files take their version from it (hatch), calm-heads and
  calm-codecs pin ``calm-core==<that version>``, and the ranges that name a calm-core minor (the
  example plugin, the plugin template's default) contain it.
* :func:`wheel_problems` reads built wheels: every METADATA carries License-Expression, its
  License-File entries (present in the wheel), the project URLs, the classifiers and authors, and
  the first-party wheels agree on one version and pin it exactly.

Both return a list of problems (empty: all good), each naming the file and the fix.
``python tests/release/check_dist.py [--root DIR] [WHEEL ...]`` runs them and exits 1 on any.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
import zipfile
from email.message import Message
from email.parser import Parser
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

VERSION_FILE = "packages/calm-core/src/calm_core/_version.py"
FIRST_PARTY = {
    "calm-core": "packages/calm-core",
    "calm-heads": "packages/calm-heads",
    "calm-codecs": "packages/calm-codecs",
}
#: pyproject.toml files whose ``calm-core`` requirement is a range over one minor release
RANGED = ["examples/calm-head-gaussian/pyproject.toml"]
TEMPLATE_QUESTIONS = "calm-plugin-template/copier.yml"
PROJECT_URLS = ("Homepage", "Documentation", "Repository", "Issues", "Changelog")
CLASSIFIERS = (
    "Development Status :: 3 - Alpha",
    "Programming Language :: Python :: 3 :: Only",
    "Programming Language :: Python :: 3.11",
    "Typing :: Typed",
)
_VERSION_LINE = re.compile(r'^__version__ = "(?P<version>[^"]+)"$', re.M)
# the template's default, on a line marked for this check: `  default: "0.1.0"  # calm-version`
_TEMPLATE_DEFAULT = re.compile(r'^\s+default:\s*"(?P<v>[^"]+)"\s*#\s*calm-version\b', re.M)


def read_version(root: Path) -> str:
    """The release version written in calm_core/_version.py."""
    match = _VERSION_LINE.search((root / VERSION_FILE).read_text(encoding="utf-8"))
    if match is None:
        raise ValueError(f'{VERSION_FILE} has no line `__version__ = "X.Y.Z"`')
    return match.group("version")


def minor_range(version: str) -> str:
    """The calm-core range a plugin written against ``version`` declares: this minor only."""
    v = Version(version)
    return f">={v.major}.{v.minor},<{v.major}.{v.minor + 1}"


def _calm_core_requirements(pyproject: dict[str, object]) -> list[Requirement]:
    project = pyproject.get("project", {})
    assert isinstance(project, dict)
    reqs = [Requirement(text) for text in project.get("dependencies", [])]
    return [r for r in reqs if r.name == "calm-core"]


def version_problems(root: Path) -> list[str]:
    """Everything in the source tree that disagrees with the one version source."""
    version = read_version(root)
    expected_source = (root / VERSION_FILE).resolve()
    problems: list[str] = []
    for dist, folder in FIRST_PARTY.items():
        path = root / folder / "pyproject.toml"
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        project = data["project"]
        if "version" in project or "version" not in project.get("dynamic", []):
            problems.append(
                f'{path}: write no version here; declare dynamic = ["version"] (hatch reads '
                f"{VERSION_FILE})"
            )
        source = data.get("tool", {}).get("hatch", {}).get("version", {}).get("path")
        if source is None or (path.parent / source).resolve() != expected_source:
            problems.append(f"{path}: [tool.hatch.version] path must point at {VERSION_FILE}")
        if dist == "calm-core":
            continue
        pins = [str(r.specifier) for r in _calm_core_requirements(data)]
        if pins != [f"=={version}"]:
            problems.append(
                f"{path}: {dist} must pin calm-core=={version} (lockstep release), found {pins}"
            )
    wanted = minor_range(version)
    for name in RANGED:
        path = root / name
        reqs = _calm_core_requirements(tomllib.loads(path.read_text(encoding="utf-8")))
        ranges = [str(r.specifier) for r in reqs]
        if not reqs or any(version not in r.specifier for r in reqs):
            problems.append(f"{path}: calm-core range {ranges} does not admit {version}")
    template = root / TEMPLATE_QUESTIONS
    if template.exists():
        match = _TEMPLATE_DEFAULT.search(template.read_text(encoding="utf-8"))
        if match is None:
            problems.append(f"{template}: no calm_core_version default marked `# calm-version`")
        elif match.group("v") != version:
            problems.append(
                f"{template}: the template's calm_core_version default {match.group('v')} is not "
                f"{version}; rendered plugins would declare {minor_range(match.group('v'))} "
                f"instead of {wanted}"
            )
    return problems


def _metadata(wheel: Path) -> tuple[Message, set[str]]:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        meta = [n for n in names if n.endswith(".dist-info/METADATA") and n.count("/") == 1]
        if len(meta) != 1:
            raise ValueError(f"{wheel.name}: expected one .dist-info/METADATA, found {meta}")
        return Parser().parsestr(zf.read(meta[0]).decode("utf-8")), names


def wheel_problems(wheels: list[Path]) -> list[str]:
    """Missing index metadata in built wheels, and first-party wheels out of lockstep."""
    problems: list[str] = []
    versions: dict[str, str] = {}
    pins: dict[str, list[str]] = {}
    for wheel in wheels:
        msg, names = _metadata(wheel)
        name, version = msg["Name"], msg["Version"]
        where = f"{wheel.name} METADATA"
        if not msg["License-Expression"]:
            problems.append(f"{where}: no License-Expression (set project.license = 'MIT')")
        files = msg.get_all("License-File") or []
        if not files:
            problems.append(f"{where}: no License-File (set project.license-files)")
        dist_info = f"{name.replace('-', '_')}-{version}.dist-info"
        for file in files:
            if f"{dist_info}/licenses/{file}" not in names:
                problems.append(f"{where}: License-File {file} is not in the wheel")
        labels = {url.split(",", 1)[0].strip() for url in msg.get_all("Project-URL") or []}
        missing = [label for label in PROJECT_URLS if label not in labels]
        if missing:
            problems.append(f"{where}: no Project-URL for {missing} (set [project.urls])")
        classifiers = set(msg.get_all("Classifier") or [])
        missing = [c for c in CLASSIFIERS if c not in classifiers]
        if missing:
            problems.append(f"{where}: missing classifiers {missing}")
        if not (msg["Author"] or msg["Author-email"]):
            problems.append(f"{where}: no Author (set project.authors)")
        if not msg["Keywords"]:
            problems.append(f"{where}: no Keywords (set project.keywords)")
        if name in FIRST_PARTY:
            versions[name] = version
            reqs = [Requirement(r) for r in msg.get_all("Requires-Dist") or []]
            pins[name] = [str(r.specifier) for r in reqs if r.name == "calm-core"]
    if len(set(versions.values())) > 1:
        problems.append(f"first-party wheels disagree on the version: {versions}")
    core = versions.get("calm-core")
    for name, found in pins.items():
        if name != "calm-core" and core is not None and found != [f"=={core}"]:
            problems.append(f"{name} wheel pins calm-core {found}, not =={core}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("wheels", nargs="*", type=Path, help="built wheels to check")
    parser.add_argument("--root", type=Path, help="source tree to check for version drift")
    args = parser.parse_args(argv)
    problems = version_problems(args.root) if args.root else []
    problems += wheel_problems(args.wheels)
    for problem in problems:
        print(f"release check: {problem}", file=sys.stderr)
    checked = [w.name for w in args.wheels] + ([str(args.root)] if args.root else [])
    print(f"release check: {len(problems)} problem(s) in {', '.join(checked)}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
