"""The typed registry with in-process registrations (entry-point behaviour: tests/ at the root)."""

from __future__ import annotations

from collections.abc import Iterator

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


def test_register_get_and_identify(tiny_head: str) -> None:
    assert tiny_head in heads.names()
    assert heads.get(tiny_head) is TinyHead
    info = heads.identify(TinyHead)
    assert info.name == tiny_head and info.distribution == IN_PROCESS


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
