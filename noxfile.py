"""One runner for every check: ``nox -s lint typecheck tests`` (the default), docs, demo, bench."""

from __future__ import annotations

import json

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.reuse_existing_virtualenvs = True
nox.options.default_venv_backend = "venv"

PACKAGES = ["packages/calm-core", "packages/calm-heads", "packages/calm-codecs"]
# the CPU wheel on this kind of machine; a bare "torch" would pull a multi-GB CUDA build
TORCH = "torch==2.13.0"
TEST_PLUGINS = [
    "tests/plugins/acme-calm-heads",
    "tests/plugins/broken-calm-plugin",
    "tests/plugins/clash-calm-one",
    "tests/plugins/clash-calm-two",
]
# the example third-party plugin: CI installs it like a user would and runs its own tests
EXAMPLE_PLUGIN = "examples/calm-head-gaussian"
TEST_DIRS = [
    "packages/calm-core/tests",
    "packages/calm-heads/tests",
    "packages/calm-codecs/tests",
    "tests",
    "benchmarks/tests",
    f"{EXAMPLE_PLUGIN}/tests",
]


def _install_project(session: nox.Session, *extra: str) -> None:
    session.install(TORCH)
    session.install(*PACKAGES, *extra)


@nox.session
def tests(session: nox.Session) -> None:
    """Install the three packages and the test plugins into one environment; run every test dir."""
    _install_project(
        session,
        "pytest>=8",
        "pytest-timeout",
        "torch-optimizer>=0.3",
        *TEST_PLUGINS,
        EXAMPLE_PLUGIN,
    )
    session.run("pytest", "-q", "--timeout=900", *TEST_DIRS, *session.posargs)
    session.notify("core_alone")
    session.notify("docs")
    # the speed gate: within-run ratios vs min(target, last full run) / 2 (benchmarks/targets.py)
    session.notify("bench", posargs=["--quick"])


@nox.session
def core_alone(session: nox.Session) -> None:
    """calm-core installed alone: `calm plugins` reports no heads or codecs instead of failing."""
    session.install(TORCH)
    session.install("packages/calm-core")
    out = session.run("calm", "plugins", "--json", silent=True)
    data = json.loads(str(out).strip().splitlines()[-1])
    if data["heads"] or data["codecs"]:
        session.error(f"calm-core alone should list no components, got {data}")
    text = session.run("calm", "plugins", silent=True)
    if "no heads installed" not in str(text):
        session.error(f"`calm plugins` should say no heads are installed, got: {text}")
    session.log("calm-core alone: `calm plugins` reports no heads and no codecs")


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("ruff==0.17.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy, strict, on the three packages' src/."""
    # the optional and test dependencies too, so their types are checked as users get them
    _install_project(session, "mypy==2.4.1", "pytest>=8", "torch-optimizer>=0.3")
    session.run(
        "mypy",
        "packages/calm-core/src/calm_core",
        "packages/calm-heads/src/calm_heads",
        "packages/calm-codecs/src/calm_codecs",
    )


DOCS_REQUIREMENTS = [
    "mkdocs>=1.6,<2",
    "mkdocs-material>=9.5,<10",
    "mkdocstrings>=0.26,<2",
    "mkdocstrings-python>=1.12,<3",
    "ruff>=0.6",  # mkdocstrings formats the separated signatures with it
]


@nox.session
def docs(session: nox.Session) -> None:
    """Build the mkdocs site in strict mode (broken links and missing API references fail).

    mkdocstrings reads the packages' sources statically (griffe, ``paths`` in mkdocs.yml), so no
    torch is needed here; the docs' code snippets are executed by tests/test_docs_snippets.py in
    the ``tests`` session.
    """
    session.install(*DOCS_REQUIREMENTS)
    session.run(
        "mkdocs",
        "build",
        "--strict",
        "--site-dir",
        "site",
        *session.posargs,
        env={"NO_MKDOCS_2_WARNING": "1"},
    )


@nox.session
def bench(session: nox.Session) -> None:
    """Speed benchmarks (benchmarks/run.py). ``nox -s bench`` is the full run and regenerates
    docs/benchmarks.md; ``nox -s bench -- --quick`` (run by CI after the tests) fails when a
    within-run ratio falls below min(target, last full run) / 2; ``nox -s bench -- --published``
    measures the published shapes and adds them to the page."""
    _install_project(session)
    args = list(session.posargs)
    if "--quick" not in args and "--quality" not in args and "--docs" not in args:
        args.append("--docs")
    session.run("python", "benchmarks/run.py", *args)
