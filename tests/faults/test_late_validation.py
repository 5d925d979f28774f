"""Everything a run will use is validated before step 1: a codec evaluation setting that only the
final report reads, or a NaN/inf trainer number, is refused before any step, checkpoint or log."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from calm_core.config import ConfigError
from calm_core.recipes import train_codec

RunCLI = Callable[..., tuple[int, str]]


@pytest.mark.parametrize(
    ("patch", "expect"),
    [
        ({"noise_stds": [0.1, -0.5]}, "noise_stds[1] = -0.5"),
        ({"train": {"lr": float("inf")}}, "train.lr = inf is not a finite number"),
        ({"train": {"weight_decay": float("inf")}}, "train.weight_decay = inf"),
        ({"train": {"eps": float("inf")}}, "train.eps = inf"),
    ],
)
def test_bad_setting_is_refused_before_step_1(
    ws, tmp_path: Path, run_cli: RunCLI, patch: dict, expect: str
) -> None:
    cfg = json.loads(ws["codec_cfg"].read_text())
    for key, value in patch.items():
        cfg[key] = {**cfg[key], **value} if isinstance(value, dict) else value
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg))  # json writes inf/nan as Infinity/NaN, which it reads back
    out = tmp_path / "run"
    code, err = run_cli("train-codec", "--data", ws["data"], "--out", out, "--config", path,
                        "--steps", "2", "--no-progress")  # fmt: skip
    assert code == 2, err
    assert expect in err
    assert not (out / "metrics.jsonl").exists() and not (out / "checkpoints").exists()


def test_python_recipe_refuses_negative_noise_before_training(ws, tmp_path: Path) -> None:
    cfg = {**json.loads(ws["codec_cfg"].read_text()), "noise_stds": [-1.0]}
    with pytest.raises(ConfigError, match=r"noise_stds\[0\] = -1.0"):
        train_codec(ws["data"], tmp_path / "run", config=cfg, steps=2, progress=False)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
