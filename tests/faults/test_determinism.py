"""Deterministic CPU training, the codec included: two fresh ``calm train-codec`` runs with one
seed give bit-identical losses and weights, and a run stopped at a checkpoint and resumed ends
bit-identical to one that was never stopped.

The codec's per-token stage runs once per distinct id and is gathered back; with indexing's
backward (an accumulating ``index_put``) the sums of repeated ids came out in a thread-dependent
order, so two runs differed after step 1. A byte-level batch of 1024 tokens repeats ids heavily
and takes that path, on two threads.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

from safetensors.torch import load_file

RunCLI = Callable[..., tuple[int, str]]

STEPS = 4


def _config(ws: dict[str, Path], tmp_path: Path) -> Path:
    cfg = json.loads(ws["codec_cfg"].read_text())
    cfg["train"].update(checkpoint_every=2, keep_checkpoints=4, lr=3e-3, batch_size=12, seq_len=512)
    path = tmp_path / "codec.json"
    path.write_text(json.dumps(cfg))
    return path


def _train(run_cli: RunCLI, ws: dict[str, Path], cfg: Path, out: Path, *extra: str) -> None:
    code, err = run_cli("train-codec", "--data", ws["data"], "--out", out, "--config", cfg,
                        "--threads", "2", "--no-progress", *extra)  # fmt: skip
    assert code == 0, err


def _losses(out: Path) -> dict[int, float]:
    """The training loss of every step (a resumed run's log holds each step once)."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def _same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    differing = [k for k in wa if not (wa[k] == wb[k]).all()]
    assert not differing, f"weights differ in {differing}"


def test_two_fresh_codec_runs_are_bit_identical(ws, tmp_path: Path, run_cli: RunCLI) -> None:
    cfg = _config(ws, tmp_path)
    a, b = tmp_path / "a", tmp_path / "b"
    _train(run_cli, ws, cfg, a, "--steps", str(STEPS))
    _train(run_cli, ws, cfg, b, "--steps", str(STEPS))
    assert len(_losses(a)) == STEPS
    assert _losses(a) == _losses(b)  # exact float equality, every step
    _same_weights(a, b)


def test_codec_resume_is_bit_identical(ws, tmp_path: Path, run_cli: RunCLI) -> None:
    cfg = _config(ws, tmp_path)
    whole = tmp_path / "whole"
    _train(run_cli, ws, cfg, whole, "--steps", str(STEPS))
    # a run killed after its step-2 checkpoint: the same run directory without what came later
    cut = tmp_path / "cut"
    shutil.copytree(whole, cut)
    shutil.rmtree(cut / "checkpoints" / f"step-{STEPS:08d}")
    for name in ("model.safetensors", "config.json", "reconstruction.json"):
        (cut / name).unlink(missing_ok=True)
    _train(run_cli, ws, cfg, cut, "--steps", str(STEPS), "--resume")
    assert _losses(cut) == _losses(whole)
    _same_weights(whole, cut)
