"""``Trainer``: one training loop for any module whose ``forward(tokens)`` returns a loss dict.

The contract: ``model(tokens: LongTensor[B, T]) -> dict[str, Tensor]`` with a scalar ``"loss"``;
other scalar entries are logged as metrics. Only parameters with ``requires_grad=True`` are
optimised, and ``model.train()`` is called once (a CALM overrides it to keep its codec frozen).

What is unusual:

- Exact resume: a checkpoint holds the model, optimizer, schedule step, every RNG state (per rank),
  the loader's position and the half-filled logging window, so an interrupted-then-resumed run
  logs the same losses as an uninterrupted one with the same seed.
- SIGINT/SIGTERM (or :meth:`Trainer.request_stop`) finish the current step, write a checkpoint
  and raise :class:`TrainingInterrupted` (a ``KeyboardInterrupt``). Under DDP the stop flag rides
  on the one small all-reduce per step that also carries the loss, so every rank stops together.
- A non-finite loss or gradient norm raises :class:`NonFiniteLossError` naming the step, before
  the optimizer step and without writing a checkpoint.
- Evaluation runs on rank 0 with the RNG states forked, so evaluating never changes training.
- Per-step overhead: one ``.item()`` per step (needed for the NaN check); metric lines are
  written every ``log_every`` steps; nothing else touches the disk between checkpoints.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from calm_core.data.dataset import PackedDataset
from calm_core.data.loader import BlockLoader
from calm_core.training import checkpoint as ckpt
from calm_core.training.config import TrainConfig
from calm_core.training.distributed import DistInfo, all_reduce_sum, barrier, setup_distributed
from calm_core.training.logging import MetricsLog, Progress
from calm_core.training.optim import LRSchedule, build_optimizer

__all__ = [
    "Evaluator",
    "LossStep",
    "NonFiniteLossError",
    "StepCallback",
    "Trainer",
    "TrainingInterrupted",
]

#: ``evaluate(model) -> {"name": value}``; logged with an ``eval/`` prefix
Evaluator = Callable[[nn.Module], dict[str, float]]
#: ``loss_step(model, batch) -> {"loss": ..., ...}``: one forward pass (default ``model(batch)``)
LossStep = Callable[[nn.Module, torch.Tensor], dict[str, Any]]
#: called after every optimizer step on every rank: ``callback(trainer, step, metrics)``
StepCallback = Callable[["Trainer", int, dict[str, float]], None]


class NonFiniteLossError(FloatingPointError):
    """The loss (or gradient norm) became NaN/inf; ``step`` is the 1-based failing step."""

    def __init__(self, message: str, step: int) -> None:
        super().__init__(message)
        self.step = step


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on a signal or request after saving ``checkpoint`` at ``step``.

    ``summary`` holds what ``fit()`` would have returned (steps, final_loss, tokens_per_s, ...).
    """

    def __init__(self, step: int, checkpoint: Path | None, reason: str) -> None:
        super().__init__(f"training interrupted ({reason}) at step {step}; checkpoint {checkpoint}")
        self.step = step
        self.checkpoint = checkpoint
        self.reason = reason
        #: what ``fit()`` would have returned at this step
        self.summary: dict[str, Any] = {}


class Trainer:
    """Trains ``model`` on blocks of ``train_data`` as ``config`` says, logging into ``run_dir``.

    Args:
        model: the module to train (see the module docstring for the contract).
        config: hyper-parameters and intervals.
        train_data: the packed training split.
        run_dir: receives ``metrics.jsonl`` and ``checkpoints/``.
        val_data: a packed split for the built-in evaluation (mean of the model's scalar
            outputs over ``config.eval_batches`` in-order batches), used when ``evaluate`` is None.
        evaluate: custom ``evaluate(model) -> dict[str, float]``, called on rank 0 every
            ``eval_every`` steps and at the end, in eval mode under ``torch.no_grad()``.
        resume: continue from the latest checkpoint in ``run_dir`` (fresh start when none).
            A fresh run replaces the checkpoints and ``metrics.jsonl`` already in ``run_dir``.
        callbacks: ``callback(trainer, step, metrics)`` after every optimizer step.
        device: where to train; default the model's device (under DDP with CUDA, the local GPU).
        progress: show the progress bar / lines (rank 0 only).
        loss_step: ``loss_step(model, batch)`` computes a micro-step's loss dict (a recipe's
            ``_loss_step``); default ``model(batch)``.
    """

    def __init__(
        self,
        model: nn.Module,
        config: TrainConfig,
        train_data: PackedDataset,
        run_dir: str | Path,
        val_data: PackedDataset | None = None,
        evaluate: Evaluator | None = None,
        resume: bool = False,
        *,
        callbacks: Sequence[StepCallback] = (),
        device: torch.device | str | None = None,
        progress: bool = True,
        loss_step: LossStep | None = None,
    ) -> None:
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
        self.model = model
        self.config = config
        self.train_data = train_data
        self.val_data = val_data
        self.run_dir = Path(run_dir)
        self.evaluate_fn = evaluate
        self.resume = resume
        self.callbacks = list(callbacks)
        self.device = torch.device(device) if device is not None else None
        self.show_progress = progress
        self.loss_step: LossStep = loss_step if loss_step is not None else _forward
        self.step = 0
        self.last_eval: dict[str, float] = {}
        #: the optimizer being stepped, set when fit() starts (callbacks may read its groups)
        self.optimizer: torch.optim.Optimizer | None = None
        self._stop_reason: str | None = None

    # ------------------------------------------------------------------ public helpers

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def is_main(self) -> bool:
        """True on the process that writes logs and checkpoints (rank 0, or the only one)."""
        info = getattr(self, "info", None)
        if info is not None:
            return bool(info.is_main)
        return int(os.environ.get("RANK", "0")) == 0

    def request_stop(self, reason: str = "requested") -> None:
        """Stop after the current step: save a checkpoint, then raise TrainingInterrupted."""
        self._stop_reason = reason

    # ------------------------------------------------------------------ setup

    def _resolve_device(self, info: DistInfo) -> torch.device:
        if self.device is not None:
            return self.device
        if info.distributed and torch.cuda.is_available():
            return torch.device("cuda", info.local_rank)
        param = next(self.model.parameters(), None)
        return param.device if param is not None else torch.device("cpu")

    def _autocast(
        self, device: torch.device
    ) -> tuple[contextlib.AbstractContextManager[Any], bool]:
        mode = self.config.autocast
        if mode == "auto":
            mode = "bf16" if device.type == "cuda" else "none"
        if mode == "none":
            return contextlib.nullcontext(), False
        dtype = torch.bfloat16 if mode == "bf16" else torch.float16
        return torch.autocast(device_type=device.type, dtype=dtype), mode == "fp16"

    def _micro_batch(self, info: DistInfo) -> int:
        c = self.config
        per = info.world_size * c.grad_accum_steps
        if c.batch_size % per:
            raise ValueError(
                f"batch_size {c.batch_size} (global) must be divisible by world_size "
                f"{info.world_size} x grad_accum_steps {c.grad_accum_steps} = {per}"
            )
        return c.batch_size // per

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous: dict[int, Any] = {}

        def handler(signum: int, frame: FrameType | None) -> None:
            if self._stop_reason is not None:  # a second signal: stop now, no checkpoint
                for s, h in previous.items():
                    signal.signal(s, h)
                raise KeyboardInterrupt
            self._stop_reason = signal.Signals(signum).name

        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    # ------------------------------------------------------------------ the loop

    def fit(self) -> dict[str, Any]:
        """Train to ``config.steps``; returns a summary (steps, final_loss, tokens_per_s, ...)."""
        try:
            with self._signals():
                return self._fit()
        finally:
            info = getattr(self, "info", None)
            if info is not None and info.initialized_here:  # a group we made, we close
                import torch.distributed as dist

                dist.destroy_process_group()

    def _fit(self) -> dict[str, Any]:
        c = self.config
        info = setup_distributed()
        self.info = info
        if c.num_threads is not None:
            torch.set_num_threads(c.num_threads)
        device = self._resolve_device(info)
        model = self.model.to(device)
        micro = self._micro_batch(info)
        loader = BlockLoader(
            self.train_data, c.seq_len, micro, seed=c.seed, rank=info.rank,
            world_size=info.world_size,
        )  # fmt: skip
        if self.val_data is not None and self.evaluate_fn is None:
            # the built-in evaluation needs one block: find out now, not after hours of training
            self._val_loader()
        optimizer = build_optimizer(model, c)
        self.optimizer = optimizer  # for callbacks (its param groups, the current lr)
        schedule = LRSchedule(optimizer, c)
        amp, use_scaler = self._autocast(device)
        scaler = torch.amp.GradScaler(device.type) if use_scaler else None
        params = [p for p in model.parameters() if p.requires_grad]
        window: dict[str, Any] = {"count": 0, "sums": {}, "time": 0.0}

        start_step = 0
        latest = None
        if info.is_main:
            ckpt.sweep_temporaries(self.checkpoint_dir)
        barrier(info)
        if self.resume:
            latest = ckpt.latest_checkpoint(self.checkpoint_dir)
        resumed: dict[str, Any] = {}
        if latest is not None:
            start_step, window, resumed = self._load(
                latest, model, optimizer, schedule, loader, scaler
            )
        else:
            torch.manual_seed(c.seed + info.rank)
            np.random.seed((c.seed + info.rank) % 2**32)
            random.seed(c.seed + info.rank)
            if info.is_main and self.checkpoint_dir.is_dir():
                for _, old in ckpt.list_checkpoints(self.checkpoint_dir):
                    ckpt.remove_checkpoint(old)
        self.step = start_step
        barrier(info)

        self.run_dir.mkdir(parents=True, exist_ok=True)
        log = None
        if info.is_main:  # a fresh run starts a new metrics.jsonl; a resumed one truncates it
            log = MetricsLog(self.run_dir, resume_step=start_step if latest else None)
        progress = Progress(c.steps, start_step, enabled=self.show_progress and info.is_main)
        if latest is not None:
            progress.message(f"resumed from {latest} at step {start_step}")

        ddp: nn.Module = model
        if info.distributed:
            ids = [device.index] if device.type == "cuda" else None
            ddp = DistributedDataParallel(
                model, device_ids=ids, find_unused_parameters=c.find_unused_parameters
            )
        model.train()
        tokens_per_step = c.batch_size * c.seq_len
        fit_start = time.perf_counter()
        train_time = 0.0
        # what a resumed run must not forget: the last step's loss and the last evaluation
        last_loss = float("nan") if resumed.get("last_loss") is None else resumed["last_loss"]
        evaluated_at = int(resumed.get("evaluated_at", -1))
        self.last_eval = dict(resumed.get("last_eval") or {})
        last_ckpt: Path | None = latest
        saved_at = start_step if latest is not None else -1

        def progress_state(loss: float, evaluated: int) -> dict[str, Any]:
            return {
                "last_loss": loss if math.isfinite(loss) else None,
                "evaluated_at": evaluated,
                "last_eval": dict(self.last_eval),
            }

        def summary() -> dict[str, Any]:
            trained = (self.step - start_step) * tokens_per_step
            return {
                "steps": self.step,
                "start_step": start_step,
                "final_loss": last_loss,
                "tokens": trained,
                "tokens_per_s": trained / train_time if train_time > 0 else 0.0,
                "train_s": train_time,
                "wall_s": time.perf_counter() - fit_start,
                "checkpoint": str(last_ckpt) if last_ckpt else None,
                "eval": dict(self.last_eval),
                "world_size": info.world_size,
            }

        try:
            for step in range(start_step, c.steps):
                t0 = time.perf_counter()
                lr = schedule.apply(step)
                optimizer.zero_grad(set_to_none=True)
                step_sums: dict[str, torch.Tensor] = {}
                for m in range(c.grad_accum_steps):
                    batch = loader.next_batch().to(device, non_blocking=True)
                    sync = not info.distributed or m == c.grad_accum_steps - 1
                    no_sync = getattr(ddp, "no_sync", None)
                    ctx = contextlib.nullcontext() if sync or no_sync is None else no_sync()
                    with ctx:
                        with amp:
                            out = self.loss_step(ddp, batch)
                        loss = _check_output(out)
                        scaled = loss / c.grad_accum_steps
                        if scaler is not None:
                            scaled = scaler.scale(scaled)
                        scaled.backward()  # type: ignore[no-untyped-call]
                    _accumulate(step_sums, out)
                if scaler is not None:
                    scaler.unscale_(optimizer)
                max_norm = c.grad_clip if c.grad_clip > 0 else math.inf
                grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
                n_acc = c.grad_accum_steps
                stop = 1.0 if self._stop_reason is not None else 0.0
                loss_t = step_sums["loss"] / n_acc
                # the one sync of a step: loss, stop vote and grad norm in one tensor/all-reduce
                shared = torch.stack(
                    [loss_t, torch.tensor(stop, device=loss_t.device), grad_norm.to(loss_t)]
                )
                step_loss, stop_votes, norm = all_reduce_sum(shared, info).tolist()
                step_loss /= info.world_size
                norm /= info.world_size  # identical on every rank after DDP's gradient all-reduce
                if not math.isfinite(step_loss) or (scaler is None and not math.isfinite(norm)):
                    what = (
                        f"loss {step_loss}"
                        if not math.isfinite(step_loss)
                        else (f"gradient norm {norm} (loss {step_loss:.6g})")
                    )
                    raise NonFiniteLossError(
                        f"non-finite {what} at step {step + 1}; stopped before the optimizer "
                        f"step and wrote no checkpoint (last good one: {last_ckpt or 'none'}). "
                        "Lower the lr, keep grad_clip on, or check the data and the model.",
                        step + 1,
                    )
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                self.step = step_num = step + 1
                last_loss = step_loss
                dt = time.perf_counter() - t0
                train_time += dt
                for k, v in step_sums.items():
                    window["sums"][k] = window["sums"].get(k, 0.0) + v / n_acc
                window["sums"]["grad_norm"] = window["sums"].get("grad_norm", 0.0) + grad_norm
                window["count"] += 1
                window["time"] += dt
                record = None
                if step_num % c.log_every == 0 or step_num == c.steps:
                    record = self._flush_window(window, step_num, lr, tokens_per_step, info, device)
                    if log is not None:
                        log.write(record)
                progress.update(step_num, record)
                metrics = {"loss": step_loss, "lr": lr, "grad_norm": norm}
                for cb in self.callbacks:
                    cb(self, step_num, metrics)
                if c.eval_every and step_num % c.eval_every == 0:
                    self._run_eval(model, step_num, log, progress, info)
                    evaluated_at = step_num
                if not info.distributed:  # alone, a stop asked for by a callback counts now
                    stop_votes = 1.0 if self._stop_reason is not None else 0.0
                if stop_votes > 0 and self._stop_reason is None:
                    self._stop_reason = "stop requested on another rank"
                if (c.checkpoint_every and step_num % c.checkpoint_every == 0) or (stop_votes > 0):
                    last_ckpt = self._save(
                        model, optimizer, schedule, loader, scaler, window,
                        progress_state(last_loss, evaluated_at),
                    )  # fmt: skip
                    saved_at = step_num
                if stop_votes > 0:
                    progress.message(f"stopped at step {step_num}: checkpoint {last_ckpt}")
                    reason = self._stop_reason or "signal"
                    stopped = TrainingInterrupted(step_num, last_ckpt, reason)
                    stopped.summary = summary()
                    raise stopped
            if evaluated_at != self.step and (self.evaluate_fn or self.val_data):
                self._run_eval(model, self.step, log, progress, info)
                evaluated_at = self.step
                if saved_at == self.step and last_ckpt is not None and info.is_main:
                    # saved inside the loop before this evaluation: record it, or resuming the
                    # finished run would evaluate (and log) again
                    _update_run_state(last_ckpt, progress_state(last_loss, evaluated_at))
            if saved_at != self.step:
                last_ckpt = self._save(
                    model, optimizer, schedule, loader, scaler, window,
                    progress_state(last_loss, evaluated_at),
                )  # fmt: skip
        finally:
            progress.close()
            if log is not None:
                log.close(quiet=sys.exc_info()[0] is not None)
        return summary()

    # ------------------------------------------------------------------ pieces of a step

    def _flush_window(
        self,
        window: dict[str, Any],
        step: int,
        lr: float,
        tokens_per_step: int,
        info: DistInfo,
        device: torch.device,
    ) -> dict[str, Any]:
        names = sorted(window["sums"])
        # stays on the training device: NCCL reduces only CUDA tensors
        sums = [torch.as_tensor(window["sums"][k], device=device).float() for k in names]
        stacked = all_reduce_sum(torch.stack(sums), info) if sums else torch.zeros(0)
        count = max(1, window["count"])
        values = (stacked / (count * info.world_size)).tolist()
        record: dict[str, Any] = {"step": step}
        record.update(dict(zip(names, values, strict=True)))
        record["lr"] = lr
        record["tokens_per_s"] = tokens_per_step * count / window["time"] if window["time"] else 0
        window.update(count=0, sums={}, time=0.0)
        return record

    def _run_eval(
        self,
        model: nn.Module,
        step: int,
        log: MetricsLog | None,
        progress: Progress,
        info: DistInfo,
    ) -> None:
        if not info.is_main or (self.evaluate_fn is None and self.val_data is None):
            return
        rng = ckpt.capture_rng_state()
        model.eval()
        try:
            with torch.no_grad():
                fn = self.evaluate_fn or self._default_evaluate
                results = {k: float(v) for k, v in fn(model).items()}
        finally:
            model.train()
            ckpt.restore_rng_state(rng)
        self.last_eval = results
        if log is not None:
            log.write({"step": step, **{f"eval/{k}": v for k, v in results.items()}})
        shown = " ".join(f"{k} {v:.4g}" for k, v in results.items())
        progress.message(f"eval at step {step}: {shown}")

    def _val_loader(self) -> BlockLoader:
        """In-order batches of the validation split (raises DataError if it holds no block)."""
        assert self.val_data is not None
        c = self.config
        micro = max(1, c.batch_size // c.grad_accum_steps)
        return BlockLoader(self.val_data, c.seq_len, micro, shuffle=False)

    def _default_evaluate(self, model: nn.Module) -> dict[str, float]:
        c = self.config
        device = next(model.parameters()).device
        loader = self._val_loader()
        n = min(c.eval_batches, len(loader))
        sums: dict[str, torch.Tensor] = {}
        for _ in range(n):
            _accumulate(sums, model(loader.next_batch().to(device)))
        return {k: float(v) / n for k, v in sums.items()}

    # ------------------------------------------------------------------ checkpoints

    def _save(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        schedule: LRSchedule,
        loader: BlockLoader,
        scaler: torch.amp.GradScaler | None,
        window: dict[str, Any],
        run_state: dict[str, Any],
    ) -> Path:
        try:
            info = self.info
            root = self.checkpoint_dir
            name = ckpt.checkpoint_name(self.step)
            tmp, final = root / f".tmp-{name}", root / name
            if info.is_main:
                root.mkdir(parents=True, exist_ok=True)
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir()
            barrier(info)
            ckpt.write_json_atomic(tmp / f"rng-rank{info.rank}.json", ckpt.capture_rng_state())
            # every rank's unflushed metric window (its own sums, reduced at the next flush)
            ckpt.write_json_atomic(tmp / f"window-rank{info.rank}.json", _window_state(window))
            barrier(info)
            if info.is_main:
                ckpt.save_model_state(model, tmp / ckpt.MODEL_FILE)
                opt_meta = ckpt.save_optimizer_state(optimizer, tmp / ckpt.OPTIMIZER_FILE)
                state = {
                    "step": self.step,
                    "config": self.config.model_dump(mode="json"),
                    "world_size": info.world_size,
                    "schedule": schedule.state_dict(),
                    "loader": loader.state_dict(),
                    "optimizer": opt_meta,
                    "scaler": scaler.state_dict() if scaler is not None else None,
                    "window": _window_state(window),
                    **run_state,
                }
                ckpt.write_json_atomic(tmp / ckpt.STATE_FILE, state)
                if final.exists():
                    ckpt.remove_checkpoint(final)
                tmp.replace(final)
                ckpt.fsync_dir(root)
                ckpt.prune_checkpoints(root, self.config.keep_checkpoints)
            barrier(info)
            return final
        except (OSError, SafetensorError) as exc:  # disk full, permissions (issue 23: safetensors')
            tmp = self.checkpoint_dir / f".tmp-{ckpt.checkpoint_name(self.step)}"
            shutil.rmtree(tmp, ignore_errors=True)
            good = ckpt.latest_checkpoint(self.checkpoint_dir)
            raise ckpt.CheckpointWriteError(
                f"could not write the checkpoint of step {self.step} under "
                f"{self.checkpoint_dir}: {ckpt.describe_write_error(exc)}; the last good "
                f"checkpoint is {good or 'none'} "
                "(free space or fix permissions, then resume from it)"
            ) from exc

    def _load(
        self,
        path: Path,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        schedule: LRSchedule,
        loader: BlockLoader,
        scaler: torch.amp.GradScaler | None,
    ) -> tuple[int, dict[str, Any], dict[str, Any]]:
        """Restore every state; return the step, this rank's metric window and the run state
        (``last_loss``, ``evaluated_at``, ``last_eval``)."""
        state = json.loads((path / ckpt.STATE_FILE).read_text())
        saved = state["config"]
        for key in ("seq_len", "seed"):
            if saved.get(key) != getattr(self.config, key):
                raise ckpt.CheckpointError(
                    f"cannot resume from {path}: it was trained with {key}={saved.get(key)!r}, "
                    f"this run has {key}={getattr(self.config, key)!r}"
                )
        if str(saved.get("optimizer", "adamw")).lower() != self.config.optimizer.lower():
            raise ckpt.CheckpointError(
                f"cannot resume from {path}: it was trained with optimizer="
                f"{saved.get('optimizer')!r}, this run has optimizer={self.config.optimizer!r} "
                "(the optimizer state does not carry over)"
            )
        ckpt.load_model_state(model, path / ckpt.MODEL_FILE)
        # the config's hyper-parameters win over the saved ones, as lr and steps do
        configured = [
            {k: v for k, v in g.items() if k not in ("params", "lr", "initial_lr")}
            for g in optimizer.param_groups
        ]
        ckpt.load_optimizer_state(optimizer, path / ckpt.OPTIMIZER_FILE, state["optimizer"])
        for group, settings in zip(optimizer.param_groups, configured, strict=True):
            group.update(settings)
        schedule.load_state_dict(state["schedule"])
        loader.load_state_dict(state["loader"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        rng_path = path / f"rng-rank{self.info.rank}.json"
        if rng_path.is_file():
            ckpt.restore_rng_state(json.loads(rng_path.read_text()))
        else:  # resumed with more ranks than saved: deterministic, but not the old stream
            torch.manual_seed(self.config.seed + self.info.rank + state["step"])
        window = _resumed_window(path, state, self.info)
        run_state = {k: state[k] for k in ("last_loss", "evaluated_at", "last_eval") if k in state}
        return int(state["step"]), window, run_state


def _update_run_state(path: Path, run_state: dict[str, Any]) -> None:
    """Rewrite a checkpoint's run state (last loss, evaluation) in place, atomically."""
    state = json.loads((path / ckpt.STATE_FILE).read_text())
    state.update(run_state)
    ckpt.write_json_atomic(path / ckpt.STATE_FILE, state)


def _resumed_window(path: Path, state: dict[str, Any], info: DistInfo) -> dict[str, Any]:
    """This rank's unflushed metric window from a checkpoint.

    With the saved number of processes each rank takes its own window back. With another number
    the saved windows are merged onto rank 0, scaled so that the next logged line (the sum over
    ranks divided by ``count * world_size``) is the mean it would have been.
    """
    saved_world = int(state.get("world_size") or 1)
    files = sorted(path.glob("window-rank*.json"))
    if saved_world == info.world_size or not files:
        own = path / f"window-rank{info.rank}.json"
        w = json.loads(own.read_text()) if own.is_file() else state["window"]
        if saved_world != info.world_size:  # an old checkpoint without per-rank windows
            return {"count": 0, "sums": {}, "time": 0.0}
        return {"count": w["count"], "time": w["time"], "sums": dict(w["sums"])}
    windows = [json.loads(f.read_text()) for f in files]
    count, seconds = windows[0]["count"], windows[0]["time"]
    scale = info.world_size / saved_world if info.rank == 0 else 0.0  # same keys on every rank
    sums: dict[str, float] = {}
    for w in windows:
        for k, v in w["sums"].items():
            sums[k] = sums.get(k, 0.0) + scale * float(v)
    return {"count": count, "time": seconds, "sums": sums}


def _window_state(window: dict[str, Any]) -> dict[str, Any]:
    """A metric window as JSON data (its sums are tensors or floats while training)."""
    return {
        "count": window["count"],
        "time": window["time"],
        "sums": {k: float(v) for k, v in window["sums"].items()},
    }


def _forward(model: nn.Module, batch: torch.Tensor) -> dict[str, Any]:
    out: dict[str, Any] = model(batch)
    return out


def _check_output(out: Any) -> torch.Tensor:
    if not isinstance(out, dict) or "loss" not in out:
        got = sorted(out) if isinstance(out, dict) else type(out).__name__
        raise TypeError(f"model(tokens) must return a dict with a scalar 'loss'; got {got}")
    loss = out["loss"]
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise TypeError("model(tokens)['loss'] must be a scalar tensor")
    return loss


def _accumulate(sums: dict[str, torch.Tensor], out: dict[str, Any]) -> None:
    """Add the scalar entries of a model output to ``sums`` (detached, fp32, no sync)."""
    for key, value in out.items():
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                continue
            v = value.detach().float().reshape(())
        elif isinstance(value, int | float) and not isinstance(value, bool):
            v = torch.tensor(float(value))
        else:
            continue
        sums[key] = sums[key] + v.to(sums[key].device) if key in sums else v
