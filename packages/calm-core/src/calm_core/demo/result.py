"""``DemoResult``: what ``calm demo`` measured (``results.json``), and its atomic JSON writer."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from calm_core.demo.config import DemoConfig

__all__ = ["DemoResult", "dump_json"]


@dataclass
class DemoResult:
    """What the demo measured; ``to_dict`` is ``results.json``."""

    out_dir: Path
    config: DemoConfig
    quick: bool
    corpus: str
    data: dict[str, Any] = field(default_factory=dict)
    codec: dict[str, Any] = field(default_factory=dict)
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    #: where the models trained and generated (``config.device`` resolved)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    #: stage -> (step, training loss) of every step; in metrics.jsonl and the plot, not results
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "out_dir": str(self.out_dir),
            "quick": self.quick,
            "corpus": self.corpus,
            "config": self.config.model_dump(mode="json"),
            "data": self.data,
            "codec": self.codec,
            "models": self.models,
            "samples": self.samples,
            "stage_seconds": self.stage_seconds,
            "notes": self.notes,
            "wall_s": self.wall_s,
            "device": str(self.device),
        }


def _finite(value: Any) -> Any:
    # JSON has no NaN/inf: write them as strings so results.json stays parseable everywhere
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def dump_json(path: Path, data: Any) -> None:
    """Write JSON atomically (used for results.json)."""
    tmp = path.with_name(f".{path.name}.tmp")
    text = json.dumps(_finite(data), indent=2, default=str, allow_nan=False)
    tmp.write_text(text + "\n", encoding="utf-8")
    tmp.replace(path)
