"""The typed registry with in-process registrations (entry-point behaviour: tests/ at the root)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import calm_core.registry as registry_module
import pytest
from calm_core.config import ConfigError
from calm_core.registry import (
    IN_PROCESS,
    UnknownComponentError,
    codecs,
    heads,
    registry_for,
)
from tiny_components import TinyCodec, TinyHead, TinyHeadConfig


@pytest.fixture
def tiny_head() -> Iterator[str]:
    heads.register("test.tiny", TinyHead)
    yield "test.tiny"
    heads.unregister("test.tiny")


def test_register_get_and_build_records_the_name(tiny_head: str) -> None:
    assert tiny_head in heads.names()
    assert heads.get(tiny_head) is TinyHead
    info = heads.info(tiny_head)
    assert info.name == tiny_head and info.distribution == IN_PROCESS
    head = heads.build(tiny_head, hidden_size=4, latent_size=2)
    assert isinstance(head, TinyHead) and head.registered_name == tiny_head
    assert TinyHead(head.config, hidden_size=4, latent_size=2).registered_name is None


def test_register_twice_needs_replace(tiny_head: str) -> None:
    with pytest.raises(ValueError, match="already registered.*replace=True"):
        heads.register(tiny_head, TinyHead)
    heads.register(tiny_head, TinyHead, replace=True)
    assert heads.get(tiny_head) is TinyHead


def test_register_as_decorator() -> None:
    @codecs.register("test.deco")
    class Deco(TinyCodec):
        pass

    try:
        assert codecs.get("test.deco") is Deco
    finally:
        codecs.unregister("test.deco")


def test_register_refuses_wrong_base_and_missing_config() -> None:
    with pytest.raises(TypeError, match="not a subclass of calm_core.interfaces.GenerativeHead"):
        heads.register("test.bad", TinyCodec)  # type: ignore[arg-type]

    class NoConfig(TinyHead):
        config_class = None  # type: ignore[assignment]

    with pytest.raises(TypeError, match="no pydantic 'config_class'"):
        heads.register("test.noconfig", NoConfig)


def test_unknown_name_suggests_and_lists(tiny_head: str) -> None:
    with pytest.raises(UnknownComponentError) as err:
        heads.get("test.tinny")
    msg = str(err.value)
    assert isinstance(err.value, KeyError)
    assert "no head named 'test.tinny'" in msg and "calm.heads" in msg
    assert "Did you mean: 'test.tiny'" in msg
    assert f"test.tiny  ({IN_PROCESS}" in msg


def test_build_validates_config_two_pass(tiny_head: str) -> None:
    head = heads.build({"name": tiny_head, "config": {"width": 5}}, hidden_size=3, latent_size=2)
    assert isinstance(head, TinyHead) and head.config == TinyHeadConfig(width=5)
    assert head.hidden_size == 3 and head.latent_size == 2
    with pytest.raises(ConfigError) as err:
        heads.build({"name": tiny_head, "config": {"width": 0}}, hidden_size=3, latent_size=2)
    assert "head.config.width" in str(err.value) and "greater than 0" in str(err.value)
    assert "got 0" in str(err.value)
    with pytest.raises(ConfigError, match=r"head.config.depth: unknown field \(allowed fields: "):
        heads.build({"name": tiny_head, "config": {"depth": 2}}, hidden_size=3, latent_size=2)


def test_build_from_bare_name_uses_defaults(tiny_head: str) -> None:
    head = heads.build(tiny_head, hidden_size=4, latent_size=2)
    assert head.config.width == 8  # type: ignore[attr-defined]


def test_registry_for() -> None:
    assert registry_for("head") is heads and registry_for("codecs") is codecs
    with pytest.raises(UnknownComponentError, match="available: heads, codecs"):
        registry_for("tokenizer")


# ----------------------------------------------------------------- simulated entry points
_FAKE_PLUGIN = """
from typing import Any, Callable
from calm_core.config import ConfigModel
from tiny_components import TinyHead


class ReexportedHead(TinyHead):
    pass


class CallableConfig(ConfigModel):
    activation: Callable[[Any], Any] = abs  # validates, but has no JSON schema


class SchemalessHead(TinyHead):
    config_class = CallableConfig
"""


@pytest.fixture
def fake_entry_points(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[dict[str, str]], None]]:
    """Install a throwaway package and expose chosen ``calm.heads`` entry points for it."""
    pkg = tmp_path / "fake_calm_plugin"
    (pkg / "impl").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from fake_calm_plugin.impl import ReexportedHead\n")
    (pkg / "impl" / "__init__.py").write_text(_FAKE_PLUGIN)
    (pkg / "exits.py").write_text("import sys\nsys.exit('this plugin exits at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    real = registry_module.metadata.entry_points

    def use(points: dict[str, str]) -> None:
        extra = [metadata.EntryPoint(n, v, "calm.heads") for n, v in points.items()]

        def entry_points(**kw: Any) -> Any:
            found = list(real(**kw))
            return found + extra if kw.get("group") == "calm.heads" else found

        monkeypatch.setattr(registry_module.metadata, "entry_points", entry_points)
        heads.refresh()

    yield use
    monkeypatch.undo()
    heads.refresh()


def test_build_records_the_entry_point_name_of_a_re_export(
    fake_entry_points: Callable[[dict[str, str]], None],
) -> None:
    fake_entry_points({"fake.reexported": "fake_calm_plugin:ReexportedHead"})
    # the entry point names the package, the class lives in a submodule: the name is the one
    # built under, found without any reverse lookup
    head = heads.build("fake.reexported", hidden_size=4, latent_size=2)
    assert type(head).__module__ == "fake_calm_plugin.impl"
    assert head.registered_name == "fake.reexported"


def test_a_plugin_that_exits_at_import_is_recorded_not_fatal(
    fake_entry_points: Callable[[dict[str, str]], None],
) -> None:
    fake_entry_points({"fake.exits": "fake_calm_plugin.exits:Head"})
    with pytest.raises(UnknownComponentError, match="SystemExit: this plugin exits at import"):
        heads.get("fake.exits")
    assert "fake.exits" not in heads.load_all()
    assert any(e.name == "fake.exits" and "SystemExit" in e.error for e in heads.load_errors())


def test_calm_plugins_survives_a_config_without_json_schema(
    fake_entry_points: Callable[[dict[str, str]], None], capsys: pytest.CaptureFixture[str]
) -> None:
    from calm_core.cli import plugins

    fake_entry_points({"fake.schemaless": "fake_calm_plugin.impl:SchemalessHead"})
    data = plugins.collect()
    assert data["heads"]["fake.schemaless"]["config_schema"] is None
    err = next(e for e in data["errors"] if e["name"] == "fake.schemaless")
    assert err["error"].startswith("config schema failed: PydanticInvalidForJsonSchema")
    assert plugins.run(argparse.Namespace(json=False)) == 0
    out = capsys.readouterr().out
    assert "fake.schemaless" in out and "(schema unavailable; see the errors below)" in out


@pytest.mark.parametrize(("value", "off"), [("0", False), ("no", False), ("1", True)])
def test_unknown_name_message_says_discovery_is_off_only_when_it_is(
    value: str, off: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CALM_DISABLE_PLUGINS", value)
    heads.refresh()
    try:
        with pytest.raises(UnknownComponentError) as err:
            heads.get("test.nothing_here")
        assert ("Third-party discovery is off" in str(err.value)) is off
    finally:
        monkeypatch.undo()
        heads.refresh()


def test_a_malformed_spec_is_a_config_error_naming_the_field(tiny_head: str) -> None:
    with pytest.raises(ConfigError, match=r"head.cfg: unknown field .*did you mean 'config'"):
        heads.build({"name": tiny_head, "cfg": {}}, hidden_size=3, latent_size=2)


def test_register_with_a_config_class_for_a_class_without_one() -> None:
    class Bare(TinyHead):
        config_class = None  # type: ignore[assignment]

    heads.register("test.bare", Bare, config=TinyHeadConfig)
    try:
        head = heads.build(
            {"name": "test.bare", "config": {"width": 3}}, hidden_size=4, latent_size=2
        )
        assert head.config == TinyHeadConfig(width=3)
    finally:
        heads.unregister("test.bare")

    class OtherConfig(TinyHeadConfig):
        pass

    with pytest.raises(TypeError, match="declares config_class TinyHeadConfig but config=Other"):
        heads.register("test.clash", TinyHead, config=OtherConfig)
    assert "test.clash" not in heads.names()


def test_a_config_class_that_accepts_unknown_fields_is_refused() -> None:
    from pydantic import BaseModel

    class Loose(BaseModel):
        width: int = 8

    class LooseHead(TinyHead):
        config_class = Loose  # type: ignore[assignment]

    with pytest.raises(TypeError, match="accepts unknown fields .*derive it from .*ConfigModel"):
        heads.register("test.loose", LooseHead)


def test_a_refused_registration_leaves_the_class_as_it_was(tiny_head: str) -> None:
    class Bare(TinyHead):
        config_class = None  # type: ignore[assignment]

    with pytest.raises(ValueError, match="already registered"):
        heads.register(tiny_head, Bare, config=TinyHeadConfig)
    assert Bare.config_class is None
