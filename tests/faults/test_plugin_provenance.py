"""Plugins: a third-party entry point that re-exports a built-in class cannot become the recorded
provider of a saved model, and a plugin that takes long to import is named in a warning instead
of blocking in silence."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from calm_core import registry as registry_module
from calm_core.model_dir import save_pretrained
from calm_core.registry import UnknownComponentError, heads

#: calm_core.plugin_watch.SLOW_ENV (spelt out: the test also runs against code without it)
SLOW_ENV = "CALM_PLUGIN_SLOW_SECONDS"

SLOW_PLUGIN = """
import time
from calm_heads.energy import EnergyHead

time.sleep(0.6)


class SlowHead(EnergyHead):
    pass
"""


@pytest.fixture
def entry_points(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[dict[str, str]], None]]:
    """Expose extra ``calm.heads`` entry points of a third-party distribution (no dist record:
    provider ``<unknown>``), with a throwaway package ``slow_calm_plugin`` on the path."""
    (tmp_path / "slow_calm_plugin.py").write_text(SLOW_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    real = registry_module.metadata.entry_points

    def use(points: dict[str, str]) -> None:
        extra = [metadata.EntryPoint(n, v, "calm.heads") for n, v in points.items()]

        def fake(**kw: Any) -> Any:
            found = list(real(**kw))
            return found + extra if kw.get("group") == "calm.heads" else found

        monkeypatch.setattr(registry_module.metadata, "entry_points", fake)
        heads.refresh()

    yield use
    monkeypatch.undo()
    sys.modules.pop("slow_calm_plugin", None)  # the next test imports it afresh (and slowly)
    heads.refresh()


def test_a_re_exported_builtin_never_becomes_the_provider(
    entry_points: Callable[[dict[str, str]], None], tmp_path: Path
) -> None:
    entry_points({"acme.energy": "calm_heads.energy:EnergyHead"})
    with pytest.raises(UnknownComponentError, match="re-exports calm_heads.energy.EnergyHead"):
        heads.get("acme.energy")
    assert any(
        e.name == "acme.energy" and "built-in component of calm-heads" in e.error
        for e in heads.load_errors()
    )
    head = heads.build("energy", hidden_size=8, latent_size=4)
    with pytest.raises(UnknownComponentError):  # saving under the plugin's name is refused too
        save_pretrained(head, tmp_path / "named", name="acme.energy")
    save_pretrained(head, tmp_path / "head")
    record = json.loads((tmp_path / "head" / "config.json").read_text())
    assert (record["component"]["name"], record["component"]["distribution"]) == (
        "energy",
        "calm-heads",
    )


def test_a_plugin_subclassing_a_builtin_is_its_own_provider(
    entry_points: Callable[[dict[str, str]], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SLOW_ENV, "0")
    entry_points({"acme.slow": "slow_calm_plugin:SlowHead"})
    assert heads.get("acme.slow").__name__ == "SlowHead"  # a subclass is the plugin's own code


def test_a_slow_plugin_import_is_named_in_a_warning(
    entry_points: Callable[[dict[str, str]], None],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv(SLOW_ENV, "0.1")
    entry_points({"acme.slow": "slow_calm_plugin:SlowHead"})
    with caplog.at_level(logging.WARNING, logger="calm_core.registry"):
        heads.get("acme.slow")
    messages = [r.getMessage() for r in caplog.records]
    assert any(
        "still importing the plugin entry point acme.slow = slow_calm_plugin:SlowHead" in m
        and "CALM_DISABLE_PLUGINS=1" in m
        for m in messages
    ), messages
    assert any("took" in m and "to import" in m for m in messages), messages
