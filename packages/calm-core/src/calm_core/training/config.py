"""``TrainConfig``: everything the trainer needs, with the reference recipe as defaults.

Defaults follow the reference training scripts: AdamW, betas (0.9, 0.95), weight decay 0.1 (on
matrices only), lr 3e-4, gradient clipping 1.0. Unlike the reference, ``warmup_steps`` applies to
every schedule, the constant one included.

``batch_size`` is the *global* batch: sequences per optimizer step summed over DDP ranks and
gradient-accumulation micro-steps. Each rank's micro-batch is
``batch_size // (world_size * grad_accum_steps)``, so changing the number of processes keeps the
optimisation (and the blocks each step sees) the same.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from calm_core.config import ConfigModel
from calm_core.runtime import DEVICE_PATTERN, check_device_spec
from calm_core.training.optimizer_names import OptimizerNotFoundError, get_optimizer_class

__all__ = ["TrainConfig"]


class TrainConfig(ConfigModel):
    """Training hyper-parameters and bookkeeping intervals."""

    steps: int = Field(1000, ge=1, description="Optimizer steps to train for (in total).")
    batch_size: int = Field(
        8, ge=1, description="Global sequences per optimizer step (all ranks, all micro-steps)."
    )
    seq_len: int = Field(512, ge=1, description="Tokens per sequence; a multiple of K.")
    lr: float = Field(3e-4, gt=0, description="Peak learning rate.")
    optimizer: str = Field(
        "adamw",
        description="Optimizer name: any torch.optim optimizer (case-insensitive), or a "
        "torch-optimizer one (e.g. 'lamb') when the calm-core[optim] extra is installed.",
    )
    betas: tuple[float, float] = Field((0.9, 0.95), description="Adam-style betas.")
    weight_decay: float = Field(
        0.1, ge=0, description="Decoupled weight decay, applied only to parameters with dim >= 2."
    )
    eps: float = Field(1e-8, gt=0, description="Optimizer epsilon.")
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps (every schedule).")
    schedule: Literal["constant", "cosine", "linear"] = Field(
        "constant", description="Learning-rate shape after warm-up."
    )
    min_lr_ratio: float = Field(
        0.1, ge=0, le=1, description="Final lr / peak lr for the cosine and linear schedules."
    )
    grad_clip: float = Field(1.0, ge=0, description="Max global gradient norm; 0 disables.")
    grad_accum_steps: int = Field(1, ge=1, description="Micro-steps per optimizer step.")
    autocast: Literal["auto", "none", "bf16", "fp16"] = Field(
        "auto", description="Mixed precision: auto = bf16 on GPU, none (fp32) on CPU."
    )
    device: str = Field(
        "auto",
        json_schema_extra={"pattern": DEVICE_PATTERN},
        description="Where to train: auto (the local rank's GPU under torchrun, else cuda:0, "
        "else mps, else cpu), cpu, cuda, cuda:N or mps; see calm_core.runtime.resolve_device.",
    )
    log_every: int = Field(10, ge=1, description="Steps between metric lines.")
    eval_every: int = Field(0, ge=0, description="Steps between evaluations; 0 = only at the end.")
    eval_batches: int = Field(
        8, ge=1, description="Validation batches for the built-in evaluation (val_data given)."
    )
    checkpoint_every: int = Field(
        0, ge=0, description="Steps between checkpoints; 0 = only at the end (and on signals)."
    )
    keep_checkpoints: int = Field(2, ge=1, description="Most recent checkpoints kept.")
    seed: int = Field(0, ge=0, description="Seeds data order and the torch/numpy/python RNGs.")
    num_threads: int | None = Field(
        None, ge=1, description="torch.set_num_threads for this process; None leaves it."
    )
    find_unused_parameters: bool = Field(
        False, description="Passed to DDP for models that skip some parameters in a step."
    )
    strategy: Literal["ddp", "fsdp"] = Field(
        "ddp",
        description="Data parallelism under torchrun: ddp (replicated weights) or fsdp (FSDP2, "
        "weights, gradients and optimizer state sharded per block; sharded DCP checkpoints).",
    )
    activation_checkpointing: bool = Field(
        False, description="Recompute each block's activations in the backward pass (less memory)."
    )
    compile: bool = Field(
        False, description="torch.compile the backbone and the head (needs a C++ compiler on CPU)."
    )

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, betas: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"each beta must lie in [0, 1), got {list(betas)}")
        return betas

    @field_validator("device")
    @classmethod
    def _device_spec(cls, spec: str) -> str:
        return check_device_spec(spec)  # whether it exists here is checked when it is resolved

    @field_validator("optimizer")
    @classmethod
    def _optimizer_exists(cls, name: str) -> str:
        try:
            get_optimizer_class(name)
        except OptimizerNotFoundError as exc:  # its message lists the close and available names
            raise ValueError(str(exc)) from None
        return name

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.batch_size % self.grad_accum_steps:
            raise ValueError(
                f"batch_size {self.batch_size} must be divisible by grad_accum_steps "
                f"{self.grad_accum_steps}"
            )
        return self
