"""``calm plugins``: every installed head and codec, its provider and config fields."""

from __future__ import annotations

import argparse
from typing import Any

from calm_core.cli.common import print_json

__all__ = ["HELP", "add_arguments", "collect", "run"]

HELP = "List installed heads and codecs with their providing distribution and config fields."
OPTIONS_FROM_CONFIG = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the verb's options to its parser."""
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def collect() -> dict[str, Any]:
    """Every registered component (loaded, so broken ones are found) and the load errors."""
    from calm_core.registry import codecs, heads

    out: dict[str, Any] = {}
    schema_errors: list[dict[str, str]] = []
    for key, registry in (("heads", heads), ("codecs", codecs)):
        table: dict[str, Any] = {}
        for name, cls in registry.load_all().items():
            info = registry.info(name)
            try:
                schema: dict[str, Any] | None = cls.config_class.model_json_schema()
            except Exception as exc:  # one plugin's config must not hide every other component
                schema = None
                schema_errors.append(
                    {
                        "group": registry.group,
                        "name": name,
                        "distribution": info.distribution,
                        "error": f"config schema failed: {type(exc).__name__}: {exc}",
                    }
                )
            table[name] = {
                "distribution": info.distribution,
                "version": info.version,
                "class": f"{cls.__module__}.{cls.__qualname__}",
                "config_schema": schema,
            }
        out[key] = table
    out["errors"] = [
        {"group": e.group, "name": e.name, "distribution": e.distribution, "error": e.error}
        for e in heads.load_errors() + codecs.load_errors()
    ] + schema_errors
    return out


def _fields(schema: dict[str, Any] | None) -> str:
    if schema is None:
        return " (schema unavailable; see the errors below)"
    props = schema.get("properties", {})
    parts = []
    for name, prop in props.items():
        default = f"={prop['default']!r}" if "default" in prop else ""
        about = f"  {prop['description']}" if prop.get("description") else ""
        parts.append(f"\n        {name}{default}{about}")
    return "".join(parts) or " (no fields)"


def run(args: argparse.Namespace) -> int:
    """Print the installed components (a table, or one JSON object with ``--json``)."""
    data = collect()
    if args.json:
        print_json(data)
        return 0
    for key, hint in (("heads", "calm-heads"), ("codecs", "calm-codecs")):
        table = data[key]
        print(f"{key}:")
        if not table:
            print(f"  (no {key} installed; pip install {hint})")
        for name, row in table.items():
            print(f"  {name}  [{row['distribution']} {row['version']}]  {row['class']}")
            print(f"      config:{_fields(row['config_schema'])}")
    if data["errors"]:
        print("plugins that failed to load:")
        for e in data["errors"]:
            print(f"  {e['group']}:{e['name']} ({e['distribution']}): {e['error']}")
    return 0
