"""One runner for every check: ``nox -s lint typecheck tests`` (the default), docs, demo, bench,
release (build and use the wheels) and template (render and test the plugin template)."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import tomllib
from pathlib import Path
from typing import Any

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


def _install_project(session: nox.Session, *extra: str) -> None:
    session.install(TORCH)
    session.install(*PACKAGES, *extra)


@nox.session
def tests(session: nox.Session) -> None:
    """Install the three packages and the test plugins into one environment; run every test dir."""
    _install_project(
        session,
        # the optional integrations, so their tests run (each also skips without its extra)
        "packages/calm-core[hub,tensorboard,wandb,mlflow,datasets,parquet,zstd]",
        "pytest>=8",
        "pytest-timeout",
        "torch-optimizer>=0.3",
        "import-linter==2.17",  # tests/test_import_layers.py
        *TEST_PLUGINS,
        EXAMPLE_PLUGIN,
    )
    # no paths: the `testpaths` of the root pyproject.toml (every test directory)
    session.run("pytest", "-q", "--timeout=900", *session.posargs)
    session.notify("core_alone")
    session.notify("docs")
    # the release as users get it: wheels alone in a fresh venv; the plugin template rendered
    session.notify("release")
    session.notify("template")
    # the speed gate: gated ratios vs min(target, committed full run) / 1.75 (benchmarks/targets)
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
    """ruff check, ruff format --check, and the import-linter contracts of pyproject.toml."""
    session.install("ruff==0.17.6", "import-linter==2.17")
    # import-linter reads the source statically: the packages need to be found, not their deps
    session.install("--no-deps", *PACKAGES)
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("lint-imports")


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
    docs/benchmarks.md; ``nox -s bench -- --quick`` (run by CI after the tests) fails when a gated
    ratio falls below min(target, the committed full run's) / 1.75; ``nox -s bench -- --published``
    measures the published shapes and adds them to the page."""
    _install_project(session)
    args = list(session.posargs)
    if "--quick" not in args and "--quality" not in args and "--docs" not in args:
        args.append("--docs")
    session.run("python", "benchmarks/run.py", *args)


@nox.session
def gpu(session: nox.Session) -> None:
    """The one-GPU device check (benchmarks/gpu.py, < 8 min): ``pytest -m cuda``, bf16 training
    tokens/s and MFU of calm-m and transformer-m, generation at batch 1 and 8; one JSON line.
    Fails with exit status 2 and a clear message where CUDA is not available.
    ``nox -s gpu -- --json OUT`` also writes the line to OUT."""
    # PyPI's Linux torch wheel is the CUDA build: on a GPU machine this is the GPU torch
    _install_project(session, "pytest>=8", "pytest-timeout", *TEST_PLUGINS, EXAMPLE_PLUGIN)
    session.run("python", "benchmarks/gpu.py", *session.posargs)


ROOT = Path(__file__).resolve().parent
# the build backend is installed once here and builds run without isolation (python -m build
# still checks it against each package's [build-system] requires)
RELEASE_TOOLS = ["build>=1.2", "twine>=6.1", "packaging>=24", "hatchling>=1.27"]


def _dependencies_of(package: str, *, without: str) -> list[str]:
    """A package's runtime requirements, read from its pyproject.toml (their one home)."""
    with open(ROOT / package / "pyproject.toml", "rb") as f:
        requirements = tomllib.load(f)["project"]["dependencies"]
    return [r for r in requirements if not r.startswith(without)]


@nox.session
def release(session: nox.Session) -> None:
    """Build, check and use the release: sdists and wheels of the three packages (python -m
    build), `twine check --strict`, the index metadata and lockstep pins of every wheel
    (tests/release/check_dist.py), then the wheels alone in a fresh virtual environment outside
    the source tree: `calm plugins --json` and a compose-train-save-load script."""
    session.install(*RELEASE_TOOLS)
    dist = Path(session.create_tmp()).resolve() / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    for package in PACKAGES:
        session.run("python", "-m", "build", "--no-isolation", "--outdir", str(dist), package)
    files = sorted(str(p) for p in dist.iterdir())
    session.run("twine", "check", "--strict", *files)
    wheels = [f for f in files if f.endswith(".whl")]
    session.run("python", "tests/release/check_dist.py", "--root", ".", *wheels)

    # a fresh venv each run; it is removed at the start of the next run rather than at the end of
    # this one (deleting a torch install takes a minute on a slow disk, and CI starts clean)
    venv = dist.parent / "fresh-venv"
    shutil.rmtree(venv, ignore_errors=True)
    session.run("python", "-m", "venv", str(venv))
    python, calm = str(venv / "bin" / "python"), str(venv / "bin" / "calm")
    pip = [python, "-m", "pip", "install", "--quiet"]
    # torch first (TORCH: the CPU wheel), then calm-core's other dependencies from the index;
    # calm itself only from the wheels just built
    session.run(*pip, TORCH, external=True)
    session.run(*pip, *_dependencies_of("packages/calm-core", without="torch"), external=True)
    pins = [f"{Path(package).name}=={_release_version()}" for package in PACKAGES]
    session.run(*pip, "--no-index", "--find-links", str(dist), *pins, external=True)
    # run from outside the source tree, so nothing can be imported from it
    with tempfile.TemporaryDirectory(prefix="calm-release-") as work, session.chdir(work):
        out = session.run(calm, "plugins", "--json", silent=True, external=True)
        _check_first_party_listing(session, json.loads(str(out).strip().splitlines()[-1]))
        session.run(python, str(ROOT / "tests/release/smoke.py"), external=True)


def _release_version() -> str:
    """calm_core/_version.py, the one version source (read as text: nothing is imported)."""
    text = (ROOT / "packages/calm-core/src/calm_core/_version.py").read_text(encoding="utf-8")
    match = re.search(r'^__version__ = "([^"]+)"$', text, re.M)
    if match is None:
        raise RuntimeError("packages/calm-core/src/calm_core/_version.py has no __version__ line")
    return match.group(1)


def _check_first_party_listing(session: nox.Session, listing: dict[str, Any]) -> None:
    expected = {
        "heads": {name: "calm-heads" for name in ("energy", "diffusion", "flow")},
        "codecs": {"autoencoder": "calm-codecs"},
    }
    version = _release_version()
    for kind, names in expected.items():
        for name, dist in names.items():
            row = listing[kind].get(name)
            if row is None or (row["distribution"], row["version"]) != (dist, version):
                want = f"{dist} {version}"
                session.error(f"`calm plugins --json` {kind}.{name}: want {want}, got {row}")
    if listing["errors"]:
        session.error(f"`calm plugins --json` reports load errors: {listing['errors']}")
    session.log(f"`calm plugins --json` from the wheels lists {expected}")


TEMPLATE = ROOT / "calm-plugin-template"
#: (kind, vendor) of the plugins CI renders: both kinds, answering the other questions by default
TEMPLATE_RENDERS = [("head", "acme"), ("codec", "zeta")]


@nox.session
def template(session: nox.Session) -> None:
    """Render calm-plugin-template with copier (a head and a codec plugin) into a temporary
    directory and run each rendered package's own nox sessions against a calm-core wheel of this
    checkout: its tests (after a pip install that `calm plugins` must discover) and `build`
    (sdist + wheel, twine check --strict); then check the wheels' index metadata."""
    session.install("copier>=9.4", "nox>=2024.4", "ruff==0.17.6", *RELEASE_TOOLS)
    with tempfile.TemporaryDirectory(prefix="calm-template-") as tmp:
        wheelhouse = Path(tmp) / "wheelhouse"
        session.run(
            "python", "-m", "build", "--no-isolation", "--wheel", "--outdir", str(wheelhouse),
            "packages/calm-core",
        )  # fmt: skip
        # one envdir for both rendered packages: they share the test environments (and so are
        # also checked side by side); kept between runs like every nox environment here
        envdir = Path(session.create_tmp()).resolve() / "plugin-envs"
        nested = ["nox", "--envdir", str(envdir), "--reuse-existing-virtualenvs"]
        env = {"CALM_TEST_WHEELHOUSE": str(wheelhouse), "CALM_TEST_TORCH": TORCH}
        wheels: list[str] = []
        plugins = []
        for kind, vendor in TEMPLATE_RENDERS:
            dst = Path(tmp) / f"{vendor}-{kind}"
            session.run(
                "copier", "copy", "--quiet", "--defaults", "--data", f"kind={kind}",
                "--data", f"vendor={vendor}", str(TEMPLATE), str(dst),
            )  # fmt: skip
            with session.chdir(dst):
                session.run("ruff", "check", ".")
                session.run("ruff", "format", "--check", ".")
                session.run(*nested, "--sessions", "tests", "build", env=env)
            wheels += [str(p) for p in (dst / "dist").glob("*.whl")]
            plugins.append(_rendered_plugin(dst))
        session.run("python", str(ROOT / "tests/release/check_dist.py"), *wheels)
        _check_rendered_listing(session, envdir, plugins)


def _rendered_plugin(dst: Path) -> tuple[str, str, str]:
    """(registry key, entry-point name, distribution) that a rendered package declares."""
    with open(dst / "pyproject.toml", "rb") as f:
        project = tomllib.load(f)["project"]
    ((group, entry_points),) = project["entry-points"].items()
    (name,) = entry_points
    return group.removeprefix("calm."), name, project["name"]


def _check_rendered_listing(
    session: nox.Session, envdir: Path, plugins: list[tuple[str, str, str]]
) -> None:
    """`calm plugins --json` in the rendered packages' test environment lists them all."""
    calms = sorted(envdir.glob("tests*/bin/calm"))
    if not calms:
        session.error(f"no test environment with a `calm` command under {envdir}")
    for calm in calms:
        out = session.run(str(calm), "plugins", "--json", silent=True, external=True)
        listing = json.loads(str(out).strip().splitlines()[-1])
        for key, name, dist in plugins:
            row = listing[key].get(name)
            if row is None or row["distribution"] != dist:
                session.error(f"{calm} plugins --json: want {key} {name} from {dist}, got {row}")
        session.log(f"{calm.parent.parent.name}: `calm plugins` lists {plugins}")
