"""Typed configuration: pydantic v2 models, component specs, and readable errors.

Every config class derives from :class:`ConfigModel` (``extra="forbid"``, validated on assignment).
A component inside a model config is a :class:`ComponentSpec` ``{"name": ..., "config": {...}}``.
It is validated in two passes: first the spec's shape, then its ``config`` against the registered
component's own ``config_class`` (:func:`validate_component_config`), so plugin configs are typed
without ``calm_core`` knowing them. Every failure raises :class:`ConfigError`, whose message names
the field path, the bad value and what is allowed.
"""

from __future__ import annotations

import difflib
import json
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = [
    "ComponentSpec",
    "ConfigError",
    "ConfigModel",
    "json_schema",
    "load_config_file",
    "merge_overrides",
    "validate_component_config",
    "validate_config",
]

M = TypeVar("M", bound=BaseModel)


class ConfigModel(BaseModel):
    """Base class of every calm config: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class ComponentSpec(ConfigModel):
    """A registered component chosen by name, with its own config (validated in a second pass)."""

    name: str = Field(description="Registered name (entry point) of the component.")
    config: dict[str, Any] = Field(
        default_factory=dict, description="The component's own config; defaults fill the rest."
    )


class ConfigError(ValueError):
    """An invalid config. ``errors`` holds one ``(path, message)`` pair per problem."""

    def __init__(self, message: str, errors: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or []


def format_validation_error(
    exc: ValidationError, model: type[BaseModel], prefix: str = ""
) -> ConfigError:
    """Turn a pydantic error into a :class:`ConfigError` naming paths, values and allowed values."""
    problems: list[tuple[str, str]] = []
    for err in exc.errors(include_url=False):
        loc = tuple(err.get("loc", ()))
        path = ".".join(str(p) for p in ((prefix,) if prefix else ()) + loc) or "<root>"
        msg = err.get("msg", "invalid")
        value = err.get("input")
        etype = err.get("type", "")
        if etype == "extra_forbidden":
            allowed = sorted(_fields_at(model, loc[:-1]))
            close = difflib.get_close_matches(str(loc[-1]), allowed, n=1, cutoff=0.6)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            detail = (
                f"unknown field (allowed fields: {', '.join(allowed)}){hint}"
                if allowed
                else "unknown field (none are allowed here)"
            )
        elif etype == "missing":
            detail = "field required"
        else:
            detail = f"{msg} (got {value!r})"
        problems.append((path, detail))
    name = model.__name__
    lines = [f"invalid {name}:"] + [f"  {p}: {m}" for p, m in problems]
    return ConfigError("\n".join(lines), problems)


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    current: Any = model
    for part in loc:
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            current = field.annotation if field is not None else None
        else:
            return []
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def validate_config(model: type[M], data: Any, *, path: str = "") -> M:
    """Validate ``data`` (a mapping or an instance) into ``model``, raising :class:`ConfigError`."""
    if isinstance(data, model):
        return data
    if isinstance(data, BaseModel):
        data = data.model_dump()
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise format_validation_error(exc, model, path) from None


def validate_component_config(component: type[Any], config: Any, *, path: str = "") -> Any:
    """Second validation pass: a spec's ``config`` against the component's ``config_class``."""
    config_class = getattr(component, "config_class", None)
    if config_class is None:
        raise ConfigError(f"{component.__qualname__} declares no config_class")
    return validate_config(config_class, config or {}, path=f"{path}.config" if path else "")


def json_schema(model: type[BaseModel]) -> dict[str, Any]:
    """JSON Schema of a config class (every config can be exported for editors and docs)."""
    return model.model_json_schema()


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON or TOML config file into a dict, with errors naming the file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix.lower() == ".toml":
            data: Any = tomllib.loads(text)
        else:
            data = json.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        kind = p.suffix.lstrip(".") or "JSON"
        raise ConfigError(f"config file {p} is not valid {kind}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a JSON/TOML object at the top level")
    return data


def _names_another_component(base: Mapping[str, Any], override: Mapping[str, Any]) -> bool:
    return "name" in base and "name" in override and base["name"] != override["name"]


def merge_overrides(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge ``overrides`` into ``base``; dotted keys (``"head.config.noise_size"``) nest.

    A mapping that names another component than the one it overrides (``{"name": "flow"}`` over
    ``{"name": "energy", "config": {...}}``) replaces it whole: the old component's config is not
    valid for the new one.
    """
    out: dict[str, Any] = json.loads(json.dumps(dict(base)))
    for key, value in overrides.items():
        if value is None:
            continue
        parts = key.split(".")
        target = out
        for part in parts[:-1]:
            nxt = target.get(part)
            if not isinstance(nxt, dict):
                nxt = {}
                target[part] = nxt
            target = nxt
        current = target.get(parts[-1])
        if isinstance(value, Mapping) and isinstance(current, dict):
            if _names_another_component(current, value):
                # a component spec naming another component: the old one's config does not apply
                target[parts[-1]] = json.loads(json.dumps(dict(value)))
            else:
                target[parts[-1]] = merge_overrides(current, value)
        else:
            target[parts[-1]] = value
    return out
