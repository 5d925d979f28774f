"""Training checkpoints: atomic, pickle-free, exactly resumable.

A checkpoint is a directory ``checkpoints/step-00001234/`` holding

- ``model.safetensors``: the model's state (shared/tied tensors handled by safetensors),
- ``optimizer.safetensors``: every tensor of the optimizer state, keyed ``state/<param>/<name>``,
- ``trainer_state.json``: step, schedule, loader position, the optimizer's param groups and
  non-tensor state, the logging window, the config it was made with,
- ``rng-rank<r>.json``: each rank's torch (CPU and CUDA), numpy and python RNG states,
- ``window-rank<r>.json``: each rank's unflushed metric window.

A checkpoint of an FSDP run (``strategy: "fsdp"``) holds ``dcp/`` instead of the two safetensors
files: the model and optimizer state sharded by :mod:`torch.distributed.checkpoint`, loadable on
any number of processes (:mod:`calm_core.training.fsdp`).

:func:`save_training_checkpoint` and :func:`load_training_checkpoint` write and restore a whole
run (the trainer's objects and its :class:`~calm_core.training.state.RunState`).

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

from calm_core.data.loader import BlockLoader
from calm_core.training import fsdp
from calm_core.training.config import TrainConfig
from calm_core.training.distributed import DistInfo, barrier
from calm_core.training.optim import LRSchedule
from calm_core.training.state import MetricWindow, RunState

__all__ = [
    "CheckpointError",
    "CheckpointWriteError",
    "TrainingObjects",
    "capture_rng_state",
    "checkpoint_name",
    "describe_write_error",
    "fsync_dir",
    "latest_checkpoint",
    "list_checkpoints",
    "load_model_state",
    "load_optimizer_state",
    "load_training_checkpoint",
    "prune_checkpoints",
    "remove_checkpoint",
    "restore_rng_state",
    "save_model_state",
    "save_optimizer_state",
    "save_training_checkpoint",
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
        weights = (p / MODEL_FILE).is_file() or fsdp.is_sharded_checkpoint(p)
        if m and p.is_dir() and (p / STATE_FILE).is_file() and weights:
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


# ---------------------------------------------------------------------------------------------
# a whole run: the trainer's objects and its RunState


@dataclass
class TrainingObjects:
    """What a training checkpoint saves and restores besides the :class:`RunState`."""

    #: the module being trained (FSDP-sharded for ``strategy: "fsdp"`` on several processes)
    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    loader: BlockLoader
    scaler: torch.amp.GradScaler | None


def save_training_checkpoint(
    root: Path,
    objects: TrainingObjects,
    run: RunState,
    config: TrainConfig,
    info: DistInfo,
) -> Path:
    """Write ``root/step-<run.step>`` (collective: every rank calls it); return its path.

    Raises:
        CheckpointWriteError: the disk refused (full, permissions); the message names the last
            good checkpoint. The half-written temporary is removed.
    """
    name = checkpoint_name(run.step)
    tmp, final = root / f".tmp-{name}", root / name
    try:
        if info.is_main:
            root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
        barrier(info)
        run.rng = capture_rng_state()
        run.data = objects.loader.state_dict()
        write_json_atomic(tmp / f"rng-rank{info.rank}.json", run.rng)
        # every rank's unflushed metric window (its own sums, reduced at the next flush)
        write_json_atomic(tmp / f"window-rank{info.rank}.json", run.window.to_json())
        sharded = config.strategy == "fsdp"
        if sharded:  # every rank writes its shards
            fsdp.save_sharded(objects.model, objects.optimizer, tmp)
        barrier(info)
        if info.is_main:
            opt_meta = None
            if not sharded:
                save_model_state(objects.model, tmp / MODEL_FILE)
                opt_meta = save_optimizer_state(objects.optimizer, tmp / OPTIMIZER_FILE)
            state = {
                "step": run.step,
                "config": config.model_dump(mode="json"),
                "world_size": info.world_size,
                "schedule": objects.schedule.state_dict(),
                "loader": run.data,
                "optimizer": opt_meta,
                "scaler": objects.scaler.state_dict() if objects.scaler is not None else None,
                "window": run.window.to_json(),
                **run.progress_json(),
            }
            write_json_atomic(tmp / STATE_FILE, state)
            if final.exists():
                remove_checkpoint(final)
            tmp.replace(final)
            fsync_dir(root)
            prune_checkpoints(root, config.keep_checkpoints)
        barrier(info)
    except (OSError, SafetensorError) as exc:  # disk full, permissions (also safetensors')
        shutil.rmtree(tmp, ignore_errors=True)
        good = latest_checkpoint(root)
        raise CheckpointWriteError(
            f"could not write the checkpoint of step {run.step} under {root}: "
            f"{describe_write_error(exc)}; the last good checkpoint is {good or 'none'} (free "
            "space or fix permissions, then resume from it)"
        ) from exc
    run.saved_at, run.last_checkpoint = run.step, final
    return final


def _check_compatible(path: Path, saved: dict[str, Any], config: TrainConfig) -> None:
    for key in ("seq_len", "seed"):
        if saved.get(key) != getattr(config, key):
            raise CheckpointError(
                f"cannot resume from {path}: it was trained with {key}={saved.get(key)!r}, "
                f"this run has {key}={getattr(config, key)!r}"
            )
    if str(saved.get("optimizer", "adamw")).lower() != config.optimizer.lower():
        raise CheckpointError(
            f"cannot resume from {path}: it was trained with optimizer="
            f"{saved.get('optimizer')!r}, this run has optimizer={config.optimizer!r} "
            "(the optimizer state does not carry over)"
        )
    was_sharded = fsdp.is_sharded_checkpoint(path)
    if was_sharded != (config.strategy == "fsdp"):
        made = "fsdp" if was_sharded else saved.get("strategy", "ddp")
        raise CheckpointError(
            f"cannot resume from {path}: it was written with strategy={made!r}, this run has "
            f"strategy={config.strategy!r}; resume with strategy: {made!r}"
        )


def load_training_checkpoint(
    path: Path,
    objects: TrainingObjects,
    run: RunState,
    config: TrainConfig,
    info: DistInfo,
    tokens_per_step: int,
) -> None:
    """Restore every state saved in ``path`` into ``objects`` and ``run`` (every rank calls it).

    Raises:
        CheckpointError: the checkpoint was made with another seq_len, seed, optimizer or
            strategy, or does not match the model.
    """
    state = json.loads((path / STATE_FILE).read_text())
    _check_compatible(path, state["config"], config)
    optimizer = objects.optimizer
    # the config's hyper-parameters win over the saved ones, as lr and steps do
    configured = [
        {k: v for k, v in g.items() if k not in ("params", "lr", "initial_lr")}
        for g in optimizer.param_groups
    ]
    if fsdp.is_sharded_checkpoint(path):
        try:
            fsdp.load_sharded(objects.model, optimizer, path)
        except (RuntimeError, ValueError, KeyError) as exc:
            raise CheckpointError(
                f"{path} does not match this model ({exc}); resume with the same model config"
            ) from None
    else:
        load_model_state(objects.model, path / MODEL_FILE)
        load_optimizer_state(optimizer, path / OPTIMIZER_FILE, state["optimizer"])
    for group, settings in zip(optimizer.param_groups, configured, strict=True):
        group.update(settings)
    objects.schedule.load_state_dict(state["schedule"])
    objects.loader.load_state_dict(state["loader"])
    run.data = state["loader"]
    if objects.scaler is not None and state.get("scaler"):
        objects.scaler.load_state_dict(state["scaler"])
    rng_path = path / f"rng-rank{info.rank}.json"
    if rng_path.is_file():
        run.rng = json.loads(rng_path.read_text())
        restore_rng_state(run.rng)
    else:  # resumed with more ranks than saved: deterministic, but not the old stream
        run.rng = None
        torch.manual_seed(config.seed + info.rank + state["step"])
    run.window = resumed_window(path, state, info)
    run.load_progress(state, tokens_per_step)
    run.saved_at, run.last_checkpoint = run.step, path


def update_run_state(path: Path, run: RunState) -> None:
    """Rewrite a checkpoint's run progress (last loss, evaluations) in place, atomically."""
    state = json.loads((path / STATE_FILE).read_text())
    state.update(run.progress_json())
    write_json_atomic(path / STATE_FILE, state)


def resumed_window(path: Path, state: dict[str, Any], info: DistInfo) -> MetricWindow:
    """This rank's unflushed metric window from a checkpoint.

    With the saved number of processes each rank takes its own window back. With another number
    the saved windows are merged onto rank 0, scaled so that the next logged line (the sum over
    ranks divided by ``count * world_size``) is the mean it would have been.
    """
    saved_world = int(state.get("world_size") or 1)
    files = sorted(path.glob("window-rank*.json"))
    if saved_world == info.world_size or not files:
        if saved_world != info.world_size:  # an old checkpoint without per-rank windows
            return MetricWindow()
        own = path / f"window-rank{info.rank}.json"
        return MetricWindow.from_json(
            json.loads(own.read_text()) if own.is_file() else state["window"]
        )
    windows = [json.loads(f.read_text()) for f in files]
    scale = info.world_size / saved_world if info.rank == 0 else 0.0  # same keys on every rank
    sums: dict[str, torch.Tensor | float] = {}
    for w in windows:
        for k, v in w["sums"].items():
            sums[k] = float(sums.get(k, 0.0)) + scale * float(v)
    return MetricWindow(count=int(windows[0]["count"]), time=float(windows[0]["time"]), sums=sums)
