"""``Trainer``: one training loop for any module whose ``forward(tokens)`` returns a loss dict.

The contract: ``model(tokens: LongTensor[B, T]) -> dict[str, Tensor]`` with a scalar ``"loss"``;
other scalar entries are logged as metrics. Only parameters with ``requires_grad=True`` are
optimised, and ``model.train()`` is called once (a CALM overrides it to keep its codec frozen).

What is unusual:

- Exact resume: a checkpoint holds the model, optimizer, schedule step, every RNG state (per rank),
  the loader's position and the half-filled logging window, so an interrupted-then-resumed run
  logs the same losses as an uninterrupted one with the same seed.
- SIGINT/SIGTERM (or :meth:`Trainer.request_stop`) finish the current step, write a checkpoint
  and raise :class:`~calm_core.training.errors.TrainingInterrupted` (a ``KeyboardInterrupt``).
  Under DDP the stop flag rides on the one small all-reduce per step that also carries the loss,
  so every rank stops together.
- A non-finite loss or gradient norm raises
  :class:`~calm_core.training.errors.NonFiniteLossError` naming the step, before the optimizer
  step and without writing a checkpoint.
- Evaluation runs on rank 0 (on every rank under FSDP, whose forward is collective) with the RNG
  states forked, so evaluating never changes training.
- The run's state (step, tokens seen, metric window, evaluations, data/RNG positions) is one
  :class:`~calm_core.training.state.RunState`, ``trainer.state``; a fit is ``_setup`` (group,
  loader, model preparation by :mod:`~calm_core.training.parallel`, optimizer, resume or seed),
  then ``_step`` per optimizer step (``_evaluate`` and ``_save`` at their intervals), then
  ``_finish``. Checkpoint writing and resuming live in :mod:`~calm_core.training.checkpoint`.
- Per-step overhead: one ``.item()`` per step (needed for the NaN check); metric lines are
  written every ``log_every`` steps; nothing else touches the disk between checkpoints.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import random
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
import torch.distributed as dist
from torch import nn

from calm_core.data.dataset import PackedDataset
from calm_core.data.loader import BlockLoader
from calm_core.runtime import resolve_device
from calm_core.training import checkpoint as ckpt
from calm_core.training import fsdp
from calm_core.training.config import TrainConfig
from calm_core.training.distributed import DistInfo, all_reduce_sum, barrier, setup_distributed
from calm_core.training.errors import NonFiniteLossError, TrainingInterrupted, compile_failure
from calm_core.training.logging import MetricsLog, Progress
from calm_core.training.optim import LRSchedule, build_optimizer
from calm_core.training.parallel import PreparedModel, prepare_model
from calm_core.training.state import RunState
from calm_core.training.step_outputs import accumulate_scalars, check_output, forward_loss_step

__all__ = [
    "Evaluator",
    "LossStep",
    "StepCallback",
    "Trainer",
]

#: ``evaluate(model) -> {"name": value}``; logged with an ``eval/`` prefix
Evaluator = Callable[[nn.Module], dict[str, float]]
#: ``loss_step(model, batch) -> {"loss": ..., ...}``: one forward pass (default ``model(batch)``)
LossStep = Callable[[nn.Module, torch.Tensor], dict[str, Any]]
#: called after every optimizer step on every rank: ``callback(trainer, step, metrics)``
StepCallback = Callable[["Trainer", int, dict[str, float]], None]


class Trainer:
    """Trains ``model`` on blocks of ``train_data`` as ``config`` says, logging into ``run_dir``.

    Args:
        model: the module to train (see the module docstring for the contract).
        config: hyper-parameters, intervals, device and strategy.
        train_data: the packed training split.
        run_dir: receives ``metrics.jsonl`` and ``checkpoints/``.
        val_data: a packed split for the built-in evaluation (mean of the model's scalar
            outputs over ``config.eval_batches`` in-order batches), used when ``evaluate`` is None.
        evaluate: custom ``evaluate(model) -> dict[str, float]``, called on rank 0 every
            ``eval_every`` steps and at the end, in eval mode under ``torch.no_grad()`` (on every
            rank under FSDP, whose forward is collective).
        resume: continue from the latest checkpoint in ``run_dir`` (fresh start when none).
            A fresh run replaces the checkpoints and ``metrics.jsonl`` already in ``run_dir``.
        callbacks: ``callback(trainer, step, metrics)`` after every optimizer step, on every
            rank; ``metrics`` holds ``loss`` (mean over ranks), ``lr`` and ``grad_norm``. A
            callback may read ``trainer.state`` and ``trainer.optimizer`` and call
            :meth:`request_stop`.
        device: where to train; overrides ``config.device`` (default ``"auto"``: the local rank's
            GPU under torchrun, else ``cuda:0``, else MPS, else the CPU).
        progress: show the progress bar / lines (rank 0 only).
        loss_step: ``loss_step(model, batch)`` computes a micro-step's loss dict (a recipe's
            ``_loss_step``); default ``model(batch)``. ``model`` is the wrapped model (DDP, FSDP,
            compiled) on the training device.
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
        self.show_progress = progress
        self.loss_step: LossStep = loss_step if loss_step is not None else forward_loss_step
        #: where this process trains (resolved now, so a bad device fails before any work)
        self.device: torch.device = resolve_device(device if device is not None else config.device)
        #: this process's place in the group; from the environment until fit() joins the group
        self.info = DistInfo(
            int(os.environ.get("RANK", "0")),
            int(os.environ.get("WORLD_SIZE", "1")),
            int(os.environ.get("LOCAL_RANK", "0")),
        )
        #: the run's counters, metric window and evaluations (restored on resume)
        self.state = RunState()
        #: the optimizer being stepped, set when fit() starts (callbacks may read its groups)
        self.optimizer: torch.optim.Optimizer | None = None
        #: the model as trained (with its DDP/FSDP wrapper), set when fit() starts; None again
        #: after a fit that made its own process group (see ``_leave_group``)
        self.prepared: PreparedModel | None = None
        self._objects: ckpt.TrainingObjects | None = None
        self._log: MetricsLog | None = None
        self._progress: Progress | None = None
        self._amp: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        self._fit_start = 0.0
        self._stop_reason: str | None = None

    # ------------------------------------------------------------------ public helpers

    @property
    def step(self) -> int:
        """Optimizer steps done so far (the step of the last finished one)."""
        return self.state.step

    @property
    def last_eval(self) -> dict[str, float]:
        """The results of the last evaluation (empty before the first)."""
        return self.state.last_eval

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def is_main(self) -> bool:
        """True on the process that writes logs and checkpoints (rank 0, or the only one)."""
        return self.info.is_main

    @property
    def tokens_per_step(self) -> int:
        return self.config.batch_size * self.config.seq_len

    def request_stop(self, reason: str = "requested") -> None:
        """Stop after the current step: save a checkpoint, then raise TrainingInterrupted."""
        self._stop_reason = reason

    def summary(self) -> dict[str, Any]:
        """What ``fit()`` returns: steps, final_loss, tokens, tokens_per_s, timings, checkpoint."""
        run = self.state
        trained = (run.step - run.start_step) * self.tokens_per_step
        return {
            "steps": run.step,
            "start_step": run.start_step,
            "final_loss": run.last_loss,
            "tokens": trained,
            "tokens_per_s": trained / run.train_time if run.train_time > 0 else 0.0,
            "train_s": run.train_time,
            "wall_s": time.perf_counter() - self._fit_start if self._fit_start else 0.0,
            "checkpoint": str(run.last_checkpoint) if run.last_checkpoint else None,
            "eval": dict(run.last_eval),
            "world_size": self.info.world_size,
        }

    # ------------------------------------------------------------------ fit

    def fit(self) -> dict[str, Any]:
        """Train to ``config.steps``; returns :meth:`summary`.

        Raises:
            TrainingInterrupted: on a signal or :meth:`request_stop`, after a checkpoint.
            NonFiniteLossError: a NaN/inf loss or gradient norm (no checkpoint written).
        """
        together = False  # every rank got here: they may wait for each other before leaving
        try:
            with self._signals():
                self._setup()
                try:
                    for step in range(self.state.step, self.config.steps):
                        self._step(step)
                    self._finish()
                finally:
                    self._close()
                together = True
                return self.summary()
        except TrainingInterrupted:
            together = True  # the ranks agreed on the stop in one all-reduce
            raise
        finally:
            if self.info.initialized_here:  # a group we made, we close
                self._leave_group(together)

    def _leave_group(self, together: bool) -> None:
        """Destroy the process group this fit made, and first drop what holds it.

        The DDP wrapper, and under FSDP the sharded copy with its optimizer, keep the group
        alive past ``destroy_process_group``; a gloo group then freed while the interpreter
        shuts down can abort the process at exit (SIGABRT) after a successful run. So they are
        released (``prepared`` is None afterwards, and ``optimizer`` too under FSDP) and
        collected while the process still runs.
        """
        if together:  # every rank done with its last collective before any shuts down
            barrier(self.info)
        if self.prepared is not None:
            if self.prepared.sharded:
                self.optimizer = None
            self.prepared = None
            self._objects = None
            gc.collect()
        dist.destroy_process_group()

    # ------------------------------------------------------------------ setup

    def _setup(self) -> None:
        """Join the group, build loader/optimizer/schedule, wrap the model, resume or seed."""
        c = self.config
        self._fit_start = time.perf_counter()
        info = self.info = setup_distributed(self.device)
        if c.num_threads is not None:
            torch.set_num_threads(c.num_threads)
        loader = BlockLoader(
            self.train_data, c.seq_len, self._micro_batch(), seed=c.seed, rank=info.rank,
            world_size=info.world_size,
        )  # fmt: skip
        if self.val_data is not None and self.evaluate_fn is None:
            # the built-in evaluation needs one block: find out now, not after hours of training
            self._val_loader()
        prepared = self.prepared = prepare_model(self.model, c, info, self.device)
        optimizer = self.optimizer = build_optimizer(prepared.module, c)
        amp_mode = self._autocast_mode()
        if amp_mode != "none":
            dtype = torch.bfloat16 if amp_mode == "bf16" else torch.float16
            self._amp = torch.autocast(device_type=self.device.type, dtype=dtype)
        scaler = torch.amp.GradScaler(self.device.type) if amp_mode == "fp16" else None
        self._objects = ckpt.TrainingObjects(
            prepared.module, optimizer, LRSchedule(optimizer, c), loader, scaler
        )
        self._resume_or_seed()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        run = self.state
        if info.is_main:  # a fresh run starts a new metrics.jsonl; a resumed one truncates it
            resumed = run.last_checkpoint is not None
            self._log = MetricsLog(self.run_dir, resume_step=run.step if resumed else None)
        self._progress = Progress(c.steps, run.step, enabled=self.show_progress and info.is_main)
        if run.last_checkpoint is not None:
            self._progress.message(f"resumed from {run.last_checkpoint} at step {run.step}")
        prepared.module.train()

    def _resume_or_seed(self) -> None:
        assert self._objects is not None
        c, info = self.config, self.info
        self.state = RunState()
        if info.is_main:
            ckpt.sweep_temporaries(self.checkpoint_dir)
        barrier(info)
        latest = ckpt.latest_checkpoint(self.checkpoint_dir) if self.resume else None
        if latest is not None:
            ckpt.load_training_checkpoint(
                latest, self._objects, self.state, c, info, self.tokens_per_step
            )
        else:
            torch.manual_seed(c.seed + info.rank)
            np.random.seed((c.seed + info.rank) % 2**32)
            random.seed(c.seed + info.rank)
            if info.is_main and self.checkpoint_dir.is_dir():
                for _, old in ckpt.list_checkpoints(self.checkpoint_dir):
                    ckpt.remove_checkpoint(old)
        barrier(info)

    def _autocast_mode(self) -> str:
        mode = self.config.autocast
        if mode == "auto":  # bf16 autocast is automatic on CUDA; fp32 elsewhere
            mode = "bf16" if self.device.type == "cuda" else "none"
        return mode

    def _micro_batch(self) -> int:
        c, info = self.config, self.info
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

    # ------------------------------------------------------------------ one step

    def _step(self, step: int) -> None:
        """Optimizer step ``step`` (0-based): forward/backward, the one sync, checks, update,
        logging, callbacks, evaluation and checkpoint as their intervals say."""
        assert self._objects is not None and self.prepared is not None
        c, info, run, objects = self.config, self.info, self.state, self._objects
        t0 = time.perf_counter()
        lr = objects.schedule.apply(step)
        objects.optimizer.zero_grad(set_to_none=True)
        step_sums = self._forward_backward(step)
        if objects.scaler is not None:
            objects.scaler.unscale_(objects.optimizer)
        max_norm = c.grad_clip if c.grad_clip > 0 else math.inf
        params = [p for p in objects.model.parameters() if p.requires_grad]
        grad_norm = fsdp.full_tensor(torch.nn.utils.clip_grad_norm_(params, max_norm))
        n_acc = c.grad_accum_steps
        loss_t = step_sums["loss"] / n_acc
        stop = 1.0 if self._stop_reason is not None else 0.0
        # the one sync of a step: loss, stop vote and grad norm in one tensor/all-reduce
        shared = torch.stack(
            [loss_t, torch.tensor(stop, device=loss_t.device), grad_norm.to(loss_t)]
        )
        step_loss, stop_votes, norm = all_reduce_sum(shared, info).tolist()
        step_loss /= info.world_size
        norm /= info.world_size  # identical on every rank after the gradient reduction
        self._check_finite(step + 1, step_loss, norm)
        if objects.scaler is not None:
            objects.scaler.step(objects.optimizer)
            objects.scaler.update()
        else:
            objects.optimizer.step()
        run.step = step_num = step + 1
        run.tokens_seen += self.tokens_per_step
        run.last_loss = step_loss
        dt = time.perf_counter() - t0
        run.train_time += dt
        values: dict[str, torch.Tensor | float] = {k: v / n_acc for k, v in step_sums.items()}
        values["grad_norm"] = grad_norm
        run.window.add(values, dt)
        record = None
        if step_num % c.log_every == 0 or step_num == c.steps:
            record = self._flush_window(step_num, lr)
            if self._log is not None:
                self._log.write(record)
        if self._progress is not None:
            self._progress.update(step_num, record)
        metrics = {"loss": step_loss, "lr": lr, "grad_norm": norm}
        for cb in self.callbacks:
            cb(self, step_num, metrics)
        if c.eval_every and step_num % c.eval_every == 0:
            self._evaluate()
        if not info.distributed:  # alone, a stop asked for by a callback counts now
            stop_votes = 1.0 if self._stop_reason is not None else 0.0
        if stop_votes > 0 and self._stop_reason is None:
            self._stop_reason = "stop requested on another rank"
        if (c.checkpoint_every and step_num % c.checkpoint_every == 0) or stop_votes > 0:
            self._save()
        if stop_votes > 0:
            if self._progress is not None:
                self._progress.message(
                    f"stopped at step {step_num}: checkpoint {run.last_checkpoint}"
                )
            stopped = TrainingInterrupted(
                step_num, run.last_checkpoint, self._stop_reason or "signal"
            )
            stopped.summary = self.summary()
            raise stopped

    def _forward_backward(self, step: int) -> dict[str, torch.Tensor]:
        """Every micro-step of one optimizer step; the sums of the model's scalar outputs."""
        assert self._objects is not None and self.prepared is not None
        c, objects, wrapped = self.config, self._objects, self.prepared.wrapped
        step_sums: dict[str, torch.Tensor] = {}
        for m in range(c.grad_accum_steps):
            batch = objects.loader.next_batch().to(self.device, non_blocking=True)
            sync = not self.info.distributed or m == c.grad_accum_steps - 1
            fsdp.set_gradient_sync(wrapped, sync)
            no_sync = getattr(wrapped, "no_sync", None)  # DDP's
            ctx = contextlib.nullcontext() if sync or no_sync is None else no_sync()
            try:
                with ctx:
                    with self._amp:
                        out = self.loss_step(wrapped, batch)
                    loss = check_output(out)
                    scaled = loss / c.grad_accum_steps
                    if objects.scaler is not None:
                        scaled = objects.scaler.scale(scaled)
                    scaled.backward()  # type: ignore[no-untyped-call]
            except Exception as exc:
                failure = compile_failure(exc, step + 1) if c.compile else None
                if failure is not None:
                    raise failure from exc
                raise
            accumulate_scalars(step_sums, out)
        return step_sums

    def _check_finite(self, step: int, loss: float, norm: float) -> None:
        assert self._objects is not None
        if math.isfinite(loss) and (self._objects.scaler is not None or math.isfinite(norm)):
            return
        what = (
            f"loss {loss}" if not math.isfinite(loss) else f"gradient norm {norm} (loss {loss:.6g})"
        )
        raise NonFiniteLossError(
            f"non-finite {what} at step {step}; stopped before the optimizer step and wrote no "
            f"checkpoint (last good one: {self.state.last_checkpoint or 'none'}). Lower the lr, "
            "keep grad_clip on, or check the data and the model.",
            step,
        )

    def _flush_window(self, step: int, lr: float) -> dict[str, Any]:
        """The logged line of the window (mean over its steps and all ranks); starts a new one."""
        window, info = self.state.window, self.info
        names = sorted(window.sums)
        # stays on the training device: NCCL reduces only CUDA tensors
        sums = [torch.as_tensor(window.sums[k], device=self.device).float() for k in names]
        stacked = all_reduce_sum(torch.stack(sums), info) if sums else torch.zeros(0)
        count = max(1, window.count)
        values = (stacked / (count * info.world_size)).tolist()
        record: dict[str, Any] = {"step": step}
        record.update(dict(zip(names, values, strict=True)))
        record["lr"] = lr
        record["tokens_per_s"] = self.tokens_per_step * count / window.time if window.time else 0
        window.reset()
        return record

    # ------------------------------------------------------------------ evaluate

    def _evaluate(self) -> None:
        """Evaluate at the current step (rank 0; every rank under FSDP) with the RNGs forked."""
        assert self.prepared is not None
        run = self.state
        if self.evaluate_fn is None and self.val_data is None:
            return
        if not self.info.is_main and not self.prepared.sharded:
            run.evaluated_at = run.step
            return
        model = self.prepared.module
        rng = ckpt.capture_rng_state()
        model.eval()
        try:
            with torch.no_grad():
                fn = self.evaluate_fn or self._default_evaluate
                results = {k: float(v) for k, v in fn(model).items()}
        finally:
            model.train()
            ckpt.restore_rng_state(rng)
        run.record_eval(run.step, results)
        if self._log is not None:
            self._log.write({"step": run.step, **{f"eval/{k}": v for k, v in results.items()}})
        if self._progress is not None:
            shown = " ".join(f"{k} {v:.4g}" for k, v in results.items())
            self._progress.message(f"eval at step {run.step}: {shown}")

    def _val_loader(self) -> BlockLoader:
        """In-order batches of the validation split (raises DataError if it holds no block)."""
        assert self.val_data is not None
        c = self.config
        micro = max(1, c.batch_size // c.grad_accum_steps)
        return BlockLoader(self.val_data, c.seq_len, micro, shuffle=False)

    def _default_evaluate(self, model: nn.Module) -> dict[str, float]:
        c = self.config
        loader = self._val_loader()
        n = min(c.eval_batches, len(loader))
        sums: dict[str, torch.Tensor] = {}
        for _ in range(n):
            accumulate_scalars(sums, model(loader.next_batch().to(self.device)))
        return {k: float(v) / n for k, v in sums.items()}

    # ------------------------------------------------------------------ save and finish

    def _save(self) -> Path:
        assert self._objects is not None
        return ckpt.save_training_checkpoint(
            self.checkpoint_dir, self._objects, self.state, self.config, self.info
        )

    def _finish(self) -> None:
        """The final evaluation and checkpoint (unless the last step made them already)."""
        run = self.state
        if run.evaluated_at != run.step and (self.evaluate_fn or self.val_data):
            self._evaluate()
            if run.saved_at == run.step and run.last_checkpoint is not None and self.info.is_main:
                # saved inside the loop before this evaluation: record it, or resuming the
                # finished run would evaluate (and log) again
                ckpt.update_run_state(run.last_checkpoint, run)
        if run.saved_at != run.step:
            self._save()
        if self.prepared is not None:  # FSDP: the trained weights back into the model given
            self.prepared.restore(copy_weights=True)

    def _close(self) -> None:
        if self.prepared is not None:  # activation checkpointing and compile off again
            self.prepared.restore(copy_weights=False)
        if self._progress is not None:
            self._progress.close()
        if self._log is not None:
            self._log.close(quiet=sys.exc_info()[0] is not None)
            self._log = None
