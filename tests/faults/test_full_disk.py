"""A full disk while writing weights is a usage error naming the last good checkpoint, never a
raw ``SafetensorError`` traceback, and leaves no half-written file behind.

The disk fills in a patched writer that raises the exact exceptions a full disk gives:
safetensors' ``SafetensorError`` (its Rust I/O error, ``os error 28``) and ``OSError(ENOSPC)``.
A real tmpfs would need mount privileges that test machines rarely have.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from calm_core import model_dir
from calm_core.training import checkpoint, fsdp
from safetensors import SafetensorError
from torch.distributed.checkpoint import filesystem

RunCLI = Callable[..., tuple[int, str]]

#: what safetensors raises when the disk fills while it writes (its message, verbatim)
RUST_ENOSPC = (
    "Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "
    '"No space left on device" })'
)


def _disk_full(kind: str) -> BaseException:
    if kind == "safetensors":
        return SafetensorError(RUST_ENOSPC)
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _train_codec(ws: dict[str, Path], out: Path, steps: int) -> list[str | Path]:
    return ["train-codec", "--data", ws["data"], "--out", out, "--config", ws["codec_cfg"],
            "--steps", str(steps), "--no-progress"]  # fmt: skip


@pytest.mark.parametrize("kind", ["safetensors", "oserror"])
def test_full_disk_at_the_final_save_names_the_last_good_checkpoint(
    ws, tmp_path: Path, run_cli: RunCLI, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    real = model_dir.save_file

    def full(tensors: Any, filename: str, metadata: Any = None) -> None:
        real(tensors, filename, metadata=metadata)  # a partial file on disk, then the error
        raise _disk_full(kind)

    monkeypatch.setattr(model_dir, "save_file", full)
    out = tmp_path / "codec"
    code, err = run_cli(*_train_codec(ws, out, 2))
    assert code == 2, err
    assert "Traceback" not in err and "SafetensorError" not in err
    assert f"could not write the model to {out}: No space left on device" in err
    assert f"the last good checkpoint is {out / 'checkpoints' / 'step-00000002'}" in err
    assert "--resume" in err
    # the atomic write left neither a torn weights file nor its temporary
    assert not (out / "model.safetensors").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".") and "safetensors" in p.name]
    # the disk has room again: --resume writes the model from the last checkpoint
    monkeypatch.setattr(model_dir, "save_file", real)
    code, err = run_cli(*_train_codec(ws, out, 2), "--resume")
    assert code == 0, err
    assert (out / "model.safetensors").is_file()


def test_full_disk_at_a_checkpoint_names_the_previous_one(
    ws, tmp_path: Path, run_cli: RunCLI, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = checkpoint.save_file

    def full_on_second(tensors: Any, filename: str, metadata: Any = None) -> None:
        if "step-00000002" in filename:
            raise _disk_full("safetensors")
        real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(checkpoint, "save_file", full_on_second)
    cfg = json.loads(ws["codec_cfg"].read_text())
    cfg["train"]["checkpoint_every"] = 1
    (tmp_path / "every-step.json").write_text(json.dumps(cfg))
    out = tmp_path / "codec"
    code, err = run_cli(*_train_codec(ws, out, 3), "--config", tmp_path / "every-step.json")
    assert code == 2, err
    assert "Traceback" not in err
    assert "could not write the checkpoint of step 2" in err and "No space left on device" in err
    assert f"the last good checkpoint is {out / 'checkpoints' / 'step-00000001'}" in err
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == ["step-00000001"]  # the torn step-2 temporary is gone
    assert not (out / "model.safetensors").exists()


def test_full_disk_in_a_sharded_checkpoint_is_the_os_error_not_dcps_wrapper(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # DCP wraps every rank's failure in a CheckpointException (a BaseException, which the
    # trainer's OSError handling and any `except Exception` would miss): FSDP checkpoints raise
    # the disk's own OSError, which save_training_checkpoint turns into CheckpointWriteError
    def full(*args: Any, **kwargs: Any) -> None:
        raise _disk_full("os")

    monkeypatch.setattr(filesystem, "_write_files_from_queue", full)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    with pytest.raises(OSError) as info:
        fsdp.save_sharded(model, optimizer, tmp_path)
    assert info.value.errno == errno.ENOSPC
    assert checkpoint.describe_write_error(info.value) == "No space left on device"
