"""Absurd resource settings are refused with the bound, before any work, instead of a segfault or
the OOM killer: --threads beyond MAX_THREADS_PER_CPU per core, a training batch or an evaluation
batch whose logits alone exceed the available memory, and --num-candidates likewise."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from calm_core.validation import MAX_THREADS_PER_CPU

RunCLI = Callable[..., tuple[int, str]]
HUGE = str(10**9)


def test_absurd_threads_are_refused(ws, tmp_path: Path, run_cli: RunCLI) -> None:
    top = MAX_THREADS_PER_CPU * (os.cpu_count() or 1)
    out = tmp_path / "run"
    code, err = run_cli("train-codec", "--data", ws["data"], "--out", out, "--config",
                        ws["codec_cfg"], "--steps", "1", "--threads", HUGE)  # fmt: skip
    assert code == 2 and f"use 1 to {top}" in err, err
    assert not out.exists() or not any(out.iterdir())
    code, err = run_cli("eval", ws["ar"], "--data", ws["data"], "--threads", HUGE)
    assert code == 2 and f"use 1 to {top}" in err, err
    code, err = run_cli("eval-codec", ws["codec"], "--data", ws["data"], "--threads", "0")
    assert code == 2 and "--threads = 0 is out of range" in err, err


def test_batch_beyond_memory_is_refused(ws, tmp_path: Path, run_cli: RunCLI) -> None:
    out = tmp_path / "run"
    code, err = run_cli("train", "--model", "ar", "--data", ws["data"], "--out", out, "--config",
                        ws["model_cfg"], "--steps", "1", "--batch-size", HUGE,
                        "--no-progress")  # fmt: skip
    assert code == 2, err
    assert "GiB available" in err and "lower --batch-size" in err
    assert not (out / "metrics.jsonl").exists()
    code, err = run_cli("eval", ws["ar"], "--data", ws["data"], "--batch-size", HUGE,
                        "--block-len", "64", "--no-reconstruction")  # fmt: skip
    assert code == 2 and "GiB available" in err, err


def test_num_candidates_beyond_memory_is_refused(ws, run_cli: RunCLI) -> None:
    code, err = run_cli("generate", ws["calm"], "--prompt", "the quick", "--temperature", "0.5",
                        "--sampling", "batch", "--num-candidates", HUGE)  # fmt: skip
    assert code == 2, err
    assert "--num-candidates 1000000000" in err and "lower --num-candidates" in err
