"""Training: one ``Trainer`` for any module returning ``{"loss": ...}``, its config, optimizers by
name, atomic checkpoints with exact resume, metrics logging, DDP and FSDP2."""

from __future__ import annotations

from calm_core.training.checkpoint import (
    CheckpointError,
    CheckpointWriteError,
    latest_checkpoint,
    list_checkpoints,
)
from calm_core.training.config import TrainConfig
from calm_core.training.errors import CompileError, NonFiniteLossError, TrainingInterrupted
from calm_core.training.logging import METRICS_FILE, read_metrics
from calm_core.training.optim import (
    LRSchedule,
    OptimizerNotFoundError,
    available_optimizers,
    build_optimizer,
    get_optimizer_class,
)
from calm_core.training.state import MetricWindow, RunState
from calm_core.training.trainer import Evaluator, LossStep, StepCallback, Trainer

__all__ = [
    "METRICS_FILE",
    "CheckpointError",
    "CheckpointWriteError",
    "CompileError",
    "Evaluator",
    "LRSchedule",
    "LossStep",
    "MetricWindow",
    "NonFiniteLossError",
    "OptimizerNotFoundError",
    "RunState",
    "StepCallback",
    "TrainConfig",
    "Trainer",
    "TrainingInterrupted",
    "available_optimizers",
    "build_optimizer",
    "get_optimizer_class",
    "latest_checkpoint",
    "list_checkpoints",
    "read_metrics",
]
