"""Two runs on one --out: the second is refused while the first holds the run lock; a stale lock
of a dead process is reported with the command that clears it; the lock goes at exit, also when
the run fails."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from calm_core.recipes import CodecRecipe, resolve_codec_config, train_codec
from calm_core.runlock import LOCK_NAME, RunLockError, run_lock

RunCLI = Callable[..., tuple[int, str]]

#: another process that takes the lock of argv[1] and keeps it until it is killed
HOLDER = """
import sys, time
from calm_core.runlock import run_lock
with run_lock(sys.argv[1], command="the holder"):
    print("held", flush=True)
    time.sleep(120)
"""


def _train_codec_argv(ws: dict[str, Path], out: Path) -> list[str | Path]:
    return ["train-codec", "--data", ws["data"], "--out", out, "--config", ws["codec_cfg"],
            "--steps", "1", "--no-progress"]  # fmt: skip


def test_second_trainer_on_a_locked_out_is_refused(ws, tmp_path: Path, run_cli: RunCLI) -> None:
    out = tmp_path / "run"
    with run_lock(out, command="calm train-codec (the first run)"):
        code, err = run_cli(*_train_codec_argv(ws, out), "--overwrite")
        assert code == 2
        assert "in use by another run" in err
        assert f"pid {__import__('os').getpid()} on host {socket.gethostname()}" in err
        assert "(the first run)" in err
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # nothing else written
        # the Python recipe refuses the same way
        try:
            train_codec(ws["data"], out, config=json.loads(ws["codec_cfg"].read_text()), steps=1,
                        progress=False)  # fmt: skip
        except RunLockError as exc:
            assert "in use by another run" in str(exc)
        else:
            raise AssertionError("train_codec ran on a locked directory")
    assert not (out / LOCK_NAME).exists()  # released by the first run's exit
    assert run_cli(*_train_codec_argv(ws, out))[0] == 0
    assert (out / "model.safetensors").is_file() and not (out / LOCK_NAME).exists()


def test_stale_lock_is_reported_with_the_command_to_clear_it(
    ws, tmp_path: Path, run_cli: RunCLI
) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    out = tmp_path / "run"
    out.mkdir()
    lock = out / LOCK_NAME
    info = {"pid": int(dead.stdout), "host": socket.gethostname(), "started": "then",
            "command": "calm train-codec (killed)"}  # fmt: skip
    lock.write_text(json.dumps(info))
    code, err = run_cli(*_train_codec_argv(ws, out))
    assert code == 2
    assert "stale lock" in err and f"rm {lock}" in err and "no longer running" in err
    assert lock.is_file()  # reported, never taken over silently
    lock.unlink()
    assert run_cli(*_train_codec_argv(ws, out))[0] == 0


def test_lock_is_released_when_the_run_fails(ws, tmp_path: Path, run_cli: RunCLI) -> None:
    out = tmp_path / "run"
    code, err = run_cli(*_train_codec_argv(ws, out), "--seq-len", "100000")  # longer than data
    assert code == 2, err
    assert not (out / LOCK_NAME).exists()


def test_a_recipe_run_from_python_refuses_a_directory_another_process_holds(
    ws, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    config = resolve_codec_config(json.loads(ws["codec_cfg"].read_text()), steps=1)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE,
                              text=True)  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLockError, match=f"in use by another run \\(pid {holder.pid} "):
            CodecRecipe(config, ws["data"], out, progress=False).run()
    finally:
        holder.kill()  # like kill -9: the holder cannot remove its lock
        holder.wait()
    with pytest.raises(RunLockError, match="stale lock"):
        CodecRecipe(config, ws["data"], out, progress=False).run()
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]
