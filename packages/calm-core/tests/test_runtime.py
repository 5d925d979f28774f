"""tune_malloc: applies once on glibc, can be turned off, never raises."""

from __future__ import annotations

import platform
import sys

import pytest
from calm_core import runtime


def test_tune_malloc_is_idempotent_and_reports_whether_it_applied(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(runtime, "_applied", None)
    monkeypatch.delenv("CALM_TUNE_MALLOC", raising=False)
    first = runtime.tune_malloc()
    assert isinstance(first, bool)
    if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
        assert first is True
    assert runtime.tune_malloc() is first  # idempotent, cached


@pytest.mark.parametrize("value", ["0", "off", "false"])
def test_tune_malloc_can_be_turned_off(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setattr(runtime, "_applied", None)
    monkeypatch.setenv("CALM_TUNE_MALLOC", value)
    assert runtime.tune_malloc() is False
