"""Training checkpoints: atomic, pickle-free, exactly resumable.

A checkpoint is a directory ``checkpoints/step-00001234/`` holding

- ``model.safetensors``: the model's state (shared/tied tensors handled by safetensors),
- ``optimizer.safetensors``: every tensor of the optimizer state, keyed ``state/<param>/<name>``,
- ``trainer_state.json``: step, schedule, loader position, the optimizer's param groups and
  non-tensor state, the logging window, the config it was made with,
- ``rng-rank<r>.json``: each rank's torch (CPU and CUDA), numpy and python RNG states.

What is unusual: it is written into ``.tmp-step-...`` and renamed only when complete, and deleted
by first renaming it to ``.tmp-del-step-...``, so a crash never leaves a torn checkpoint under a
real name; stale temporaries are swept on resume. Nothing is pickled: tensors go to safetensors,
everything else to JSON.
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

__all__ = [
    "CheckpointError",
    "CheckpointWriteError",
    "capture_rng_state",
    "checkpoint_name",
    "describe_write_error",
    "fsync_dir",
    "latest_checkpoint",
    "list_checkpoints",
    "load_model_state",
    "load_optimizer_state",
    "prune_checkpoints",
    "remove_checkpoint",
    "restore_rng_state",
    "save_model_state",
    "save_optimizer_state",
    "sweep_temporaries",
    "write_json_atomic",
]

_NAME = re.compile(r"^step-(\d+)$")
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "trainer_state.json"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written or read back; the message names the path."""


class CheckpointWriteError(CheckpointError):
    """Writing a checkpoint failed (disk full, permissions); earlier checkpoints are intact."""


def describe_write_error(exc: BaseException) -> str:
    """A short reason for a failed write (``No space left on device`` for a full disk, also
    when safetensors reports it)."""
    text = str(exc)
    # safetensors' Rust I/O errors carry the errno as ``os error 28`` or ``code: 28``
    rust_enospc = any(m in text for m in ("os error 28", "code: 28", "StorageFull"))
    if (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or rust_enospc:
        return os.strerror(errno.ENOSPC)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return text.split("\n")[0]


def checkpoint_name(step: int) -> str:
    """Directory name of the checkpoint taken after ``step`` (zero-padded, so names sort)."""
    return f"step-{step:08d}"


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``root`` as ``(step, path)``, oldest first."""
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _NAME.match(p.name)
        if m and p.is_dir() and (p / STATE_FILE).is_file() and (p / MODEL_FILE).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(root: Path) -> Path | None:
    """The most recent complete checkpoint, or None."""
    found = list_checkpoints(root)
    return found[-1][1] if found else None


def remove_checkpoint(path: Path) -> None:
    """Delete a checkpoint directory without ever exposing a half-deleted one: it is renamed to
    a ``.tmp-del-`` temporary first (which :func:`sweep_temporaries` removes if this is cut)."""
    doomed = path.with_name(f".tmp-del-{path.name}")
    shutil.rmtree(doomed, ignore_errors=True)
    try:
        path.rename(doomed)
    except FileNotFoundError:
        return
    shutil.rmtree(doomed, ignore_errors=True)


def prune_checkpoints(root: Path, keep: int) -> None:
    """Delete all but the ``keep`` most recent checkpoints."""
    for _, path in list_checkpoints(root)[:-keep]:
        remove_checkpoint(path)


def sweep_temporaries(root: Path) -> None:
    """Remove half-written ``.tmp-*`` checkpoints left by a crash."""
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(".tmp-"):
                shutil.rmtree(p, ignore_errors=True)


def fsync_dir(path: Path) -> None:
    """Flush a directory entry (the rename of a checkpoint) to disk where the OS allows."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` via a temporary file and a rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        json.dump(data, fh)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


# ---------------------------------------------------------------------------------------------
# RNG states (JSON: the torch states are byte tensors, stored as lists of ints)


def capture_rng_state() -> dict[str, Any]:
    """torch (CPU + every CUDA device), numpy and python RNG states, JSON-serialisable."""
    np_state: Any = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state().tolist(),
        "numpy": {
            "name": np_state[0],
            "keys": np_state[1].tolist(),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": py_version, "internal": list(py_internal), "gauss": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    n = state["numpy"]
    np.random.set_state(
        (n["name"], np.array(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"],
         n["cached_gaussian"])
    )  # fmt: skip
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


# ---------------------------------------------------------------------------------------------
# optimizer state: tensors to safetensors, the rest to JSON


def save_optimizer_state(optimizer: torch.optim.Optimizer, path: Path) -> dict[str, Any]:
    """Write the optimizer's tensors to ``path``; return its JSON-serialisable remainder."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    values: dict[str, dict[str, Any]] = {}
    for pid, pstate in sd["state"].items():
        for name, value in pstate.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state/{pid}/{name}"] = value.detach().cpu().contiguous()
            elif value is None or isinstance(value, bool | int | float | str):
                values.setdefault(str(pid), {})[name] = value
            else:
                raise CheckpointError(
                    f"optimizer state {name!r} of type {type(value).__name__} cannot be saved "
                    "without pickle; use an optimizer whose state is tensors and numbers"
                )
    save_file(tensors, str(path))
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()}
              for g in sd["param_groups"]]  # fmt: skip
    return {"param_groups": groups, "values": values}


def load_optimizer_state(
    optimizer: torch.optim.Optimizer, path: Path, meta: dict[str, Any]
) -> None:
    """Load what :func:`save_optimizer_state` wrote back into ``optimizer``."""
    tensors = load_file(str(path))
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, pid, name = key.split("/", 2)
        state.setdefault(int(pid), {})[name] = value
    for pid, vals in meta["values"].items():
        state.setdefault(int(pid), {}).update(vals)
    # JSON turned tuples (betas) into lists; optimizers expect tuples back
    groups = [{k: (tuple(v) if isinstance(v, list) and k != "params" else v) for k, v in g.items()}
              for g in meta["param_groups"]]  # fmt: skip
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def save_model_state(model: nn.Module, path: Path) -> None:
    """Write the model's state to safetensors (tied tensors stored once)."""
    save_model(model, str(path))


def load_model_state(model: nn.Module, path: Path) -> None:
    """Load :func:`save_model_state` output into ``model`` (strict: every key must match)."""
    try:
        load_model(model, str(path), strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{path} does not match this model ({exc}); resume with the same model config"
        ) from None
