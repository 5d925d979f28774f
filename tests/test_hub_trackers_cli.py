"""The CLI end to end with calm-codecs installed: ``calm train-codec --logger tensorboard`` mirrors
its metrics.jsonl, and the trained codec, put into a Hugging Face cache as ``org/codec``, is used
by id (offline) by ``calm train --codec`` and ``calm eval-codec``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from calm_core.cli import main
from calm_core.training import read_metrics

SHA = "c" * 40
CODEC = {
    "codec": {"name": "autoencoder",
              "config": {"latent_size": 4, "hidden_size": 16, "intermediate_size": 32}},
    "train": {"batch_size": 4, "seq_len": 32, "warmup_steps": 1, "log_every": 2,
              "eval_every": 3, "checkpoint_every": 6},
}  # fmt: skip
CALM = {
    "backbone": {"hidden_size": 16, "intermediate_size": 32, "num_layers": 1, "num_heads": 2,
                 "num_kv_heads": 1, "max_positions": 32},
    "train": {"batch_size": 4, "seq_len": 32, "warmup_steps": 1, "eval_every": 0},
}  # fmt: skip


def test_train_codec_logger_then_the_codec_by_hub_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("calm_codecs")
    pytest.importorskip("huggingface_hub")  # calm-core[hub] and [tensorboard]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    corpus = tmp_path / "corpus.jsonl"
    lines = [json.dumps({"text": f"document {i} " + "some words here " * 30}) for i in range(8)]
    corpus.write_text("\n".join(lines))
    data = tmp_path / "data"
    argv = ["tokenize", str(corpus), "--out", str(data), "--byte-level", "--val-docs", "2"]
    assert main(argv) == 0
    (tmp_path / "codec.json").write_text(json.dumps(CODEC))
    codec = tmp_path / "codec"
    argv = ["train-codec", "--data", str(data), "--out", str(codec), "--steps", "6"]
    argv += ["--config", str(tmp_path / "codec.json"), "--no-progress", "--logger", "tensorboard"]
    assert main(argv) == 0

    expected = {
        (int(r["step"]), k): v for r in read_metrics(codec) for k, v in r.items() if k != "step"
    }
    assert (6, "loss") in expected and any(k.startswith("eval/") for _, k in expected)
    acc = EventAccumulator(str(codec / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    got = {(e.step, t): e.value for t in acc.Tags()["scalars"] for e in acc.Scalars(t)}
    assert got == pytest.approx(expected, rel=1e-6)

    # publish into an on-disk Hugging Face cache and use it by id, offline
    cache = tmp_path / "hf"
    snap = cache / "models--org--codec" / "snapshots" / SHA
    shutil.copytree(codec, snap, ignore=shutil.ignore_patterns("checkpoints", "tensorboard"))
    (cache / "models--org--codec" / "refs").mkdir()
    (cache / "models--org--codec" / "refs" / "main").write_text(SHA)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    capsys.readouterr()
    assert main(["eval-codec", "org/codec", "--data", str(data), "--json"]) == 0
    by_id = json.loads(capsys.readouterr().out)
    assert main(["eval-codec", str(codec), "--data", str(data), "--json"]) == 0
    by_path = json.loads(capsys.readouterr().out)
    assert by_id.pop("model") == "org/codec" and by_path.pop("model") == str(codec)
    same = {k: v for k, v in by_id.items() if "seconds" not in k}
    assert same == {k: v for k, v in by_path.items() if "seconds" not in k}
    assert "token_accuracy" in same
    (tmp_path / "calm.json").write_text(json.dumps(CALM))
    argv = ["train", "--data", str(data), "--codec", "org/codec", "--out", str(tmp_path / "calm")]
    argv += ["--config", str(tmp_path / "calm.json"), "--steps", "2", "--no-progress"]
    assert main(argv) == 0
    assert main([*argv[:4], "org/none", *argv[5:], "--overwrite"]) == 2
    assert "'org/none' is not in the Hugging Face cache" in capsys.readouterr().err
