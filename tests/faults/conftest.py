"""Shared inputs of the fault-injection suite: a tiny byte-level data directory and tiny trained
codec, CALM and AR directories (one real step each), built once per session, and ``run_cli``,
which runs ``calm`` in-process and returns its exit status and stderr.

Every test copies what it breaks, so the shared directories stay good.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from calm_core.cli import main

#: a codec small enough for a step in well under a second
CODEC_CONFIG = {
    "codec": {"config": {"hidden_size": 16, "intermediate_size": 32, "latent_size": 4}},
    "train": {"batch_size": 4, "seq_len": 256, "log_every": 1, "eval_every": 0},
    "eval_max_chunks": 16,
}
#: a backbone of one layer for CALM and the AR model
MODEL_CONFIG = {
    "backbone": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64},
    "train": {"batch_size": 2, "seq_len": 64, "log_every": 1},
}

RunCLI = Callable[..., tuple[int, str]]


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]) -> RunCLI:
    """``run_cli("train", "--data", ...)`` -> (exit status, stderr); a traceback fails the test."""

    def run(*argv: str | Path) -> tuple[int, str]:
        capsys.readouterr()
        code = main([str(a) for a in argv])
        return code, capsys.readouterr().err

    return run


def write_json(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def ws(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """data/ (byte-level, K=4, with a val split), codec/, calm/ and ar/ model directories."""
    root = tmp_path_factory.mktemp("faults")
    corpus = root / "corpus.jsonl"
    corpus.write_text(
        "\n".join(
            json.dumps({"text": f"doc {i} " + "the quick brown fox jumps over the lazy dog " * 12})
            for i in range(14)
        ),
        encoding="utf-8",
    )
    data = root / "data"
    args = ["tokenize", str(corpus), "--out", str(data), "--byte-level", "--val-docs", "2"]
    assert main(args) == 0
    codec_cfg = write_json(root / "codec.json", CODEC_CONFIG)
    model_cfg = write_json(root / "model.json", MODEL_CONFIG)
    common = ["--steps", "1", "--no-progress"]
    assert main(["train-codec", "--data", str(data), "--out", str(root / "codec"),
                 "--config", str(codec_cfg), *common]) == 0  # fmt: skip
    assert main(["train", "--data", str(data), "--codec", str(root / "codec"), "--out",
                 str(root / "calm"), "--config", str(model_cfg), *common]) == 0  # fmt: skip
    assert main(["train", "--model", "ar", "--data", str(data), "--out", str(root / "ar"),
                 "--config", str(model_cfg), *common]) == 0  # fmt: skip
    return {"root": root, "data": data, "codec": root / "codec", "calm": root / "calm",
            "ar": root / "ar", "codec_cfg": codec_cfg, "model_cfg": model_cfg}  # fmt: skip
