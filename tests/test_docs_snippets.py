"""Every code block of the docs runs here, so the docs cannot rot.

Each Markdown page under ``docs/`` (and the READMEs of ``examples/``) is one test. Its fenced blocks
run in page order, in a fresh temporary working directory, like one interactive session:

* ``python``: executed in one namespace per page. Conformance suites a page defines (``Test*``
  subclasses of ``HeadConformance``/``CodecConformance``) are then run, every test method.
* ``bash``/``console``: each command runs. ``calm ...`` commands go through
  ``calm_core.cli.main`` and ``python SCRIPT.py ...`` through ``runpy`` in this process (no
  interpreter start-up per command; scripts are found in the working directory or the repository
  root); anything else runs in ``bash -euo pipefail``. A non-zero exit status fails the page.
  ``pip`` and ``nox`` commands are refused unless skipped (see below).
* ``toml``/``json``: parsed.
* ``text``/``mermaid``: not code (diagrams, sample output); ignored.

Any other language fails the test, so every block is a deliberate choice. An HTML comment on the
line before a block changes what happens to it:

* ``<!-- docs-test: file NAME -->`` also writes the block to ``NAME`` in the working directory
  (a config file that later commands use);
* ``<!-- docs-test: skip REASON -->`` does not run it (only for commands that change the
  environment, such as ``pip install``); a reason is required.

Two page-level comments (anywhere in a page):

* ``<!-- docs-test: setup quickstart.md -->`` starts the page in a copy of the working directory
  that ``docs/quickstart.md`` left behind (run once per session), so how-to pages can use its
  data and models;
* ``<!-- docs-test: requires-fixtures -->`` skips the page when the reference parity fixtures are
  absent (``calm_core.testing.fixtures``).

Everything runs with one torch thread (tiny models; a shared CPU). Pages listed in
:data:`SLOW_PAGES` are marked ``slow`` (still run by the nox ``tests`` session).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import runpy
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted(
    [
        *ROOT.joinpath("docs").rglob("*.md"),
        ROOT / "examples" / "README.md",
        ROOT / "examples" / "calm-head-gaussian" / "README.md",
    ]
)
#: pages whose commands take more than a few seconds (several processes, real training)
SLOW_PAGES = {"docs/how-to/distributed.md"}
RUN_LANGS = {"python", "bash", "console", "toml", "json"}
IGNORED_LANGS = {"text", "mermaid"}
DIRECTIVE = re.compile(r"^<!--\s*docs-test:\s*(?P<verb>file|skip)\s*(?P<arg>.*?)\s*-->\s*$")
PAGE_DIRECTIVE = re.compile(
    r"^<!--\s*docs-test:\s*(?P<verb>setup|requires-fixtures)\s*(?P<arg>.*?)\s*-->\s*$", re.M
)
FENCE = re.compile(r"^(?P<indent> *)(?P<fence>```+|~~~+)\s*(?P<info>[^`]*)$")


@dataclass
class Block:
    """One fenced code block of a page."""

    lang: str
    code: str
    line: int  # 1-based line of the opening fence
    directive: tuple[str, str] | None


def parse_blocks(text: str) -> list[Block]:
    """Fenced blocks of a Markdown page, with the ``docs-test`` directive just before each."""
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence = len(m["indent"]), m["fence"]
        info = m["info"].strip()
        lang = info.split()[0].lstrip("{.").rstrip("}") if info else ""
        prev = lines[i - 1].strip() if i > 0 else ""
        d = DIRECTIVE.match(prev)
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and lines[i].strip() != fence:
            body.append(lines[i][indent:] if lines[i][:indent].strip() == "" else lines[i])
            i += 1
        if i >= len(lines):
            raise AssertionError(f"unclosed code fence at line {start + 1}")
        i += 1
        blocks.append(
            Block(lang, "\n".join(body) + "\n", start + 1, (d["verb"], d["arg"]) if d else None)
        )
    return blocks


def shell_commands(code: str) -> list[str]:
    """Commands of a shell block: continuation lines joined; comments, blanks and prompts dropped."""
    commands: list[str] = []
    pending = ""
    for raw in code.splitlines():
        line = raw.rstrip()
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.startswith("$ "):
            line = line[2:]
        if pending:
            line = line.strip()
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        commands.append(pending + line)
        pending = ""
    if pending:
        commands.append(pending)
    return commands


def run_shell(command: str, where: str) -> str:
    """Run one command; ``calm`` in process, anything else in bash. Returns its stdout."""
    words = shlex.split(command, comments=True)
    simple = not any(ch in command for ch in "|&;<>$`")
    if simple and words and words[0] == "calm":
        from calm_core.cli import main

        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(words[1:])
            except SystemExit as exc:  # argparse exits for --help / usage errors
                code = exc.code if isinstance(exc.code, int) else 1
        if code != 0:
            raise AssertionError(
                f"{where}: `{command}` exited with {code}\nstdout:\n{out.getvalue()}\n"
                f"stderr:\n{err.getvalue()[-3000:]}"
            )
        return out.getvalue()
    if simple and len(words) >= 2 and words[0] == "python" and words[1].endswith(".py"):
        return run_script(words[1], words[2:], where)
    if words and (
        words[0] in ("pip", "pip3", "nox") or words[1:3] in (["-m", "pip"], ["-m", "nox"])
    ):
        raise AssertionError(
            f"{where}: `{command}` would change the environment or run the whole suite; "
            "put `<!-- docs-test: skip REASON -->` on the line before its block"
        )
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("OMP_NUM_THREADS", "1")
    env["CALM_REPO_ROOT"] = str(ROOT)
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", command],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    if proc.returncode != 0:
        raise AssertionError(
            f"{where}: `{command}` exited with {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\n"
            f"stderr:\n{proc.stderr[-3000:]}"
        )
    return proc.stdout


def run_script(path: str, argv: list[str], where: str) -> str:
    """``python SCRIPT.py ARGS`` in this process, as ``__main__``; paths are repo-relative."""
    script = Path(path) if Path(path).is_file() else ROOT / path
    assert script.is_file(), f"{where}: script {path} not found (in the work dir or the repo root)"
    out = io.StringIO()
    saved_argv, saved_path = sys.argv, list(sys.path)
    sys.argv = [str(script), *argv]
    sys.path.insert(0, str(script.parent))  # as `python script.py` does
    try:
        with contextlib.redirect_stdout(out):
            try:
                runpy.run_path(str(script), run_name="__main__")
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = saved_argv
        sys.path[:] = saved_path
    if code != 0:
        raise AssertionError(f"{where}: `python {path}` exited with {code}\n{out.getvalue()}")
    return out.getvalue()


def run_conformance(namespace: dict[str, Any], tmp_path: Path, where: str) -> int:
    """Run every test method of the conformance suites a page defined; returns how many ran."""
    from calm_core.testing import CodecConformance, HeadConformance

    ran = 0
    for name, obj in list(namespace.items()):
        suites = (HeadConformance, CodecConformance)
        if not (isinstance(obj, type) and issubclass(obj, suites) and name.startswith("Test")):
            continue
        for attr in sorted(dir(obj)):
            if not attr.startswith("test_"):
                continue
            method = getattr(obj(), attr)
            target = tmp_path / f"conformance-{name}-{attr}"
            target.mkdir()
            try:
                if "tmp_path" in method.__code__.co_varnames[: method.__code__.co_argcount]:
                    method(target)
                else:
                    method()
            except Exception as exc:
                raise AssertionError(f"{where}: {name}.{attr} failed: {exc!r}") from exc
            ran += 1
    return ran


@pytest.fixture
def clean_registries() -> Iterator[None]:
    """Pages may register components in-process; forget them afterwards."""
    from calm_core.registry import codecs, heads

    yield
    heads.refresh()
    codecs.refresh()


def _page_id(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


def _params() -> list[Any]:
    out = []
    for page in PAGES:
        rel = _page_id(page)
        marks = [pytest.mark.slow] if rel in SLOW_PAGES else []
        out.append(pytest.param(page, id=rel, marks=marks))
    return out


def run_page(page: Path, work: Path, tmp_path: Path) -> None:
    """Run every block of ``page`` in ``work`` (the current directory)."""
    rel = _page_id(page)
    module_name = "docs_snippet_" + re.sub(r"\W", "_", rel)
    namespace: dict[str, Any] = {"__name__": module_name}
    for block in parse_blocks(page.read_text(encoding="utf-8")):
        where = f"{rel}:{block.line}"
        if block.lang in IGNORED_LANGS:
            continue
        assert block.lang in RUN_LANGS, (
            f"{where}: code block language {block.lang!r} is neither run ({sorted(RUN_LANGS)}) "
            f"nor a known non-code language ({sorted(IGNORED_LANGS)})"
        )
        if block.directive is not None:
            verb, arg = block.directive
            if verb == "skip":
                assert arg, f"{where}: `docs-test: skip` needs a reason"
                continue
            if verb == "file":
                assert arg, f"{where}: `docs-test: file` needs a file name"
                (work / arg).parent.mkdir(parents=True, exist_ok=True)
                (work / arg).write_text(block.code, encoding="utf-8")
        if block.lang == "python":
            code = compile(block.code, f"{rel}:{block.line}", "exec")
            exec(code, namespace)
        elif block.lang in ("bash", "console"):
            for command in shell_commands(block.code):
                run_shell(command, where)
        elif block.lang == "toml":
            tomllib.loads(block.code)
        elif block.lang == "json":
            json.loads(block.code)
    run_conformance(namespace, tmp_path, rel)


@contextlib.contextmanager
def _in_dir(path: Path) -> Iterator[None]:
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Tiny models run faster on one thread than on two contended ones."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def setup_pages() -> dict[str, Path]:
    """Working directories left by pages that others name in ``docs-test: setup`` (run once)."""
    return {}


def _setup_dir(name: str, cache: dict[str, Path], factory: pytest.TempPathFactory) -> Path:
    if name not in cache:
        page = ROOT / "docs" / name
        assert page.is_file(), f"docs-test: setup names {name}, which is not a docs page"
        work = factory.mktemp("setup") / "work"
        work.mkdir()
        with _in_dir(work), _one_thread():
            run_page(page, work, work.parent)
        cache[name] = work
    return cache[name]


@pytest.mark.parametrize("page", _params())
def test_docs_page_snippets_run(
    page: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    clean_registries: None,
    setup_pages: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    text = page.read_text(encoding="utf-8")
    monkeypatch.setenv("CALM_REPO_ROOT", str(ROOT))
    work = tmp_path / "work"
    for m in PAGE_DIRECTIVE.finditer(text):
        if m["verb"] == "requires-fixtures":
            from calm_core.testing.fixtures import ENV_VAR, fixture_dir

            if fixture_dir() is None:
                pytest.skip(f"reference fixtures not found (set {ENV_VAR})")
        elif m["verb"] == "setup":
            source = _setup_dir(m["arg"], setup_pages, tmp_path_factory)
            shutil.copytree(source, work)
    work.mkdir(exist_ok=True)
    monkeypatch.chdir(work)
    with _one_thread():
        run_page(page, work, tmp_path)


def test_every_docs_page_is_in_the_nav() -> None:
    """mkdocs --strict only warns about pages left out of the nav; fail here instead."""
    nav = ROOT.joinpath("mkdocs.yml").read_text(encoding="utf-8")
    listed = set(re.findall(r":\s*([\w/.-]+\.md)\s*$|^\s*-\s*([\w/.-]+\.md)\s*$", nav, re.M))
    names = {a or b for a, b in listed}
    missing = [
        p.relative_to(ROOT / "docs").as_posix()
        for p in ROOT.joinpath("docs").rglob("*.md")
        if p.relative_to(ROOT / "docs").as_posix() not in names
    ]
    assert not missing, f"docs pages missing from the mkdocs.yml nav: {missing}"


def test_snippet_parser_handles_directives_and_continuations() -> None:
    text = (
        'intro\n\n<!-- docs-test: file cfg.json -->\n```json\n{"a": 1}\n```\n\n'
        "<!-- docs-test: skip changes the environment -->\n```bash\npip install x\n```\n"
        "```bash\n# comment\ncalm plugins \\\n  --json\n$ echo hi\n```\n"
    )
    blocks = parse_blocks(text)
    assert [b.lang for b in blocks] == ["json", "bash", "bash"]
    assert blocks[0].directive == ("file", "cfg.json") and blocks[0].line == 4
    assert blocks[1].directive == ("skip", "changes the environment")
    assert shell_commands(blocks[2].code) == ["calm plugins --json", "echo hi"]
    with pytest.raises(AssertionError, match="unclosed"):
        parse_blocks("```python\nprint(1)\n")


def _public_modules() -> list[str]:
    import importlib
    import pkgutil

    names = []
    for pkg in ("calm_core", "calm_heads", "calm_codecs", "calm_head_gaussian"):
        root = importlib.import_module(pkg)
        names.append(pkg)
        for info in pkgutil.walk_packages(root.__path__, prefix=f"{pkg}."):
            if not any(part.startswith("_") for part in info.name.split(".")[1:]):
                names.append(info.name)
    return names


def test_public_api_is_documented() -> None:
    """The API reference is generated from docstrings: every public module has a docstring and an
    ``__all__``, and every class and function it exports has a docstring."""
    import importlib
    import inspect

    problems = []
    for name in _public_modules():
        module = importlib.import_module(name)
        if not (module.__doc__ or "").strip():
            problems.append(f"{name}: no module docstring")
        exported = getattr(module, "__all__", None)
        if exported is None:
            problems.append(f"{name}: no __all__")
            continue
        for attr in exported:
            if not hasattr(module, attr):
                problems.append(f"{name}.{attr}: listed in __all__ but not defined")
                continue
            obj = getattr(module, attr)
            documentable = inspect.isclass(obj) or inspect.isfunction(obj)
            defined_here = getattr(obj, "__module__", None) == name
            # the CLI verb protocol (add_arguments, run) is documented once, in calm_core.cli
            verb_protocol = name.startswith("calm_core.cli.") and attr in ("add_arguments", "run")
            if verb_protocol:
                continue
            if documentable and defined_here and not (obj.__doc__ or "").strip():
                problems.append(f"{name}.{attr}: no docstring")
    assert not problems, "undocumented public API:\n  " + "\n  ".join(problems)
