"""Configs: extra keys forbidden, errors name the field path, value and what is allowed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import pytest
from calm_core.config import (
    ComponentSpec,
    ConfigError,
    ConfigModel,
    json_schema,
    load_config_file,
    merge_overrides,
    validate_config,
)
from pydantic import Field


class Inner(ConfigModel):
    size: int = Field(4, gt=0)
    kind: Literal["a", "b"] = "a"


class Outer(ConfigModel):
    inner: Inner = Inner()
    head: ComponentSpec = ComponentSpec(name="energy")
    rate: float = Field(0.1, ge=0, le=1)


def test_defaults_and_schema() -> None:
    cfg = validate_config(Outer, {})
    assert cfg.inner.size == 4 and cfg.head.name == "energy"
    schema = json_schema(Outer)
    assert schema["type"] == "object" and "inner" in schema["properties"]


def test_unknown_key_names_path_and_allowed_fields() -> None:
    with pytest.raises(ConfigError) as err:
        validate_config(Outer, {"inner": {"sise": 3}})
    assert "inner.sise: unknown field (allowed fields: kind, size); did you mean 'size'?" in str(
        err.value
    )
    assert err.value.errors[0][0] == "inner.sise"


def test_bad_value_names_value_and_allowed() -> None:
    with pytest.raises(ConfigError) as err:
        validate_config(Outer, {"inner": {"kind": "c"}, "rate": 2})
    msg = str(err.value)
    assert "inner.kind: Input should be 'a' or 'b' (got 'c')" in msg
    assert "rate: Input should be less than or equal to 1 (got 2)" in msg


def test_wrong_type_and_prefix() -> None:
    with pytest.raises(ConfigError, match=r"model.inner.size: .*valid integer.*got 'x'"):
        validate_config(Outer, {"inner": {"size": "x"}}, path="model")


def test_assignment_is_validated() -> None:
    cfg = Outer()
    with pytest.raises(ValueError):
        cfg.rate = 5.0


def test_config_files_and_overrides(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(json.dumps({"inner": {"size": 7}}))
    (tmp_path / "b.toml").write_text('rate = 0.5\n[inner]\nkind = "b"\n')
    data = merge_overrides(
        load_config_file(tmp_path / "a.json"), load_config_file(tmp_path / "b.toml")
    )
    data = merge_overrides(data, {"head.name": "flow", "head.config.noise_size": 16, "rate": None})
    cfg = validate_config(Outer, data)
    assert (cfg.inner.size, cfg.inner.kind, cfg.rate) == (7, "b", 0.5)
    assert cfg.head.config == {"noise_size": 16}
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(ConfigError, match="bad.json is not valid json"):
        load_config_file(tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config_file(tmp_path / "missing.toml")


def test_overriding_a_spec_with_another_component_drops_the_old_config() -> None:
    base = {"head": {"name": "energy", "config": {"noise_size": 32}}}
    same = merge_overrides(base, {"head": {"name": "energy", "config": {"num_blocks": 2}}})
    assert same["head"]["config"] == {"noise_size": 32, "num_blocks": 2}
    other = merge_overrides(base, {"head": {"name": "flow"}})
    assert other["head"] == {"name": "flow"}
