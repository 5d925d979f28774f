"""Locating and reading the reference-implementation parity fixtures (DESIGN.md §8).

The directory comes from ``CALM_REFERENCE_FIXTURES``; by default ``../shared/fixtures/reference``
relative to the repository root. Each fixture is ``NAME.safetensors`` (tensors) + ``NAME.json``
(configs, seeds, shapes). Tests call :func:`require_fixture`, which skips with a clear message when
the directory or the fixture is absent, so parity tests run for any fixture set of the same format.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

__all__ = ["ENV_VAR", "Fixture", "fixture_dir", "fixture_names", "load_fixture", "require_fixture"]

ENV_VAR = "CALM_REFERENCE_FIXTURES"


def _repo_root() -> Path | None:
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "noxfile.py").is_file() and (parent / "packages").is_dir():
            return parent
    cwd = Path.cwd()
    for parent in (cwd, *cwd.parents):
        if (parent / "noxfile.py").is_file() and (parent / "packages").is_dir():
            return parent
    return None


def fixture_dir() -> Path | None:
    """The fixture directory, or None when it does not exist."""
    env = os.environ.get(ENV_VAR)
    if env:
        p = Path(env)
        return p if p.is_dir() else None
    root = _repo_root()
    if root is None:
        return None
    p = (root / ".." / "shared" / "fixtures" / "reference").resolve()
    return p if p.is_dir() else None


def fixture_names(prefix: str = "") -> list[str]:
    """Names of the fixtures present (``ae_k4``, ``energy_k2``, ...), optionally by prefix."""
    d = fixture_dir()
    if d is None:
        return []
    return sorted(
        p.stem for p in d.glob(f"{prefix}*.json") if (d / f"{p.stem}.safetensors").is_file()
    )


@dataclass(frozen=True)
class Fixture:
    """One fixture: its tensors and its JSON description."""

    name: str
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]

    def params(self, prefix: str) -> dict[str, torch.Tensor]:
        """Parameter tensors under ``prefix`` (e.g. ``"ae."``) with the prefix removed."""
        return {k[len(prefix) :]: v for k, v in self.tensors.items() if k.startswith(prefix)}


def load_fixture(name: str) -> Fixture:
    """Read ``NAME.safetensors`` and ``NAME.json`` from :func:`fixture_dir`."""
    d = fixture_dir()
    if d is None:
        raise FileNotFoundError(
            f"no reference fixture directory; set {ENV_VAR} or place the fixtures in "
            "../shared/fixtures/reference relative to the repository root"
        )
    meta = json.loads((d / f"{name}.json").read_text(encoding="utf-8"))
    return Fixture(name, load_file(str(d / f"{name}.safetensors")), meta)


def require_fixture(name: str) -> Fixture:
    """Like :func:`load_fixture`, but skips the calling pytest test when it is absent."""
    import pytest

    d = fixture_dir()
    if d is None:
        pytest.skip(f"reference fixtures not found (set {ENV_VAR}); skipping parity test")
    if not (d / f"{name}.json").is_file():
        pytest.skip(f"fixture '{name}' not in {d}; skipping parity test")
    return load_fixture(name)
