"""A run whose weights became non-finite is not saved as a success: an lr so large that one step
overflows the weights (its loss and gradients were finite) ends with exit 2, no model file, and
a message that says what to change."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from calm_core.recipes import NonFiniteModelError, train_model

RunCLI = Callable[..., tuple[int, str]]


def test_diverged_weights_are_not_saved(ws, tmp_path: Path, run_cli: RunCLI) -> None:
    out = tmp_path / "ar"
    code, err = run_cli("train", "--model", "ar", "--data", ws["data"], "--out", out,
                        "--config", ws["model_cfg"], "--steps", "1", "--lr", "1e38",
                        "--no-progress")  # fmt: skip
    assert code == 2, err
    assert "the trained weights are not finite" in err and "lower the lr" in err
    assert not (out / "model.safetensors").exists() and not (out / "config.json").exists()


def test_python_recipe_raises_for_diverged_weights(ws, tmp_path: Path) -> None:
    cfg = json.loads(ws["model_cfg"].read_text())
    with pytest.raises(NonFiniteModelError, match="not finite"):
        train_model(ws["data"], tmp_path / "ar", model="ar", config=cfg, steps=1, lr=1e38,
                    progress=False)  # fmt: skip
