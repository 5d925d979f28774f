"""``RunState``: everything a training run carries from one step to the next, in one typed object.

The trainer owns one :class:`RunState` from construction on. A checkpoint stores it (as JSON, in
``trainer_state.json`` and, for the per-rank parts, ``window-rank<r>.json`` / ``rng-rank<r>.json``)
and a resume restores it, so that the resumed run logs what the uninterrupted one would have.

The metric window is the part that is unusual: each rank sums its *own* scalar outputs since the
last logged line (sums stay tensors on the device while training, so logging costs no sync); the
logged line is the sum over ranks divided by ``count * world_size``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = ["MetricWindow", "RunState"]


@dataclass
class MetricWindow:
    """Sums of the per-step metrics since the last logged line, on this rank."""

    count: int = 0
    time: float = 0.0
    sums: dict[str, torch.Tensor | float] = field(default_factory=dict)

    def add(self, values: dict[str, torch.Tensor | float], seconds: float) -> None:
        """Add one optimizer step's metrics (tensors stay where they are: no sync)."""
        for key, value in values.items():
            self.sums[key] = self.sums[key] + value if key in self.sums else value
        self.count += 1
        self.time += seconds

    def reset(self) -> None:
        self.count, self.time, self.sums = 0, 0.0, {}

    def to_json(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "time": self.time,
            "sums": {k: float(v) for k, v in self.sums.items()},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MetricWindow:
        sums: dict[str, torch.Tensor | float] = {k: float(v) for k, v in data["sums"].items()}
        return cls(count=int(data["count"]), time=float(data["time"]), sums=sums)


@dataclass
class RunState:
    """Counters, metric window, evaluations and the data/RNG positions of one run.

    ``rng`` and ``data`` are snapshots taken when a checkpoint is written (this rank's RNG states
    and the loader's position) and consumed when one is loaded; while training, the live RNGs
    and the loader hold them.
    """

    #: optimizer steps done (over the whole run, resumes included)
    step: int = 0
    #: the step this process started (or resumed) at
    start_step: int = 0
    #: tokens trained on over the whole run (global batch x seq_len per step)
    tokens_seen: int = 0
    #: the last step's loss (mean over ranks); NaN before the first step
    last_loss: float = math.nan
    #: this rank's unflushed metric window
    window: MetricWindow = field(default_factory=MetricWindow)
    #: the step of the last evaluation (-1: none yet)
    evaluated_at: int = -1
    #: the last evaluation's results
    last_eval: dict[str, float] = field(default_factory=dict)
    #: the evaluation with the lowest ``loss`` so far (empty when none reported a loss)
    best_eval: dict[str, float] = field(default_factory=dict)
    #: the step of the last checkpoint written or loaded (-1: none)
    saved_at: int = -1
    #: that checkpoint's directory
    last_checkpoint: Path | None = None
    #: seconds spent in training steps by this process (evaluation and saving excluded)
    train_time: float = 0.0
    #: this rank's RNG states, captured at the last save or loaded from a checkpoint
    rng: dict[str, Any] | None = None
    #: the loader's position, captured at the last save or loaded from a checkpoint
    data: dict[str, Any] | None = None

    def record_eval(self, step: int, results: dict[str, float]) -> None:
        self.last_eval = dict(results)
        self.evaluated_at = step
        loss = results.get("loss")
        if loss is not None and math.isfinite(loss):
            best = self.best_eval.get("loss")
            if best is None or loss < best:
                self.best_eval = dict(results)

    def progress_json(self) -> dict[str, Any]:
        """What ``trainer_state.json`` keeps of the run beyond the step (JSON-safe)."""
        return {
            "last_loss": self.last_loss if math.isfinite(self.last_loss) else None,
            "evaluated_at": self.evaluated_at,
            "last_eval": dict(self.last_eval),
            "best_eval": dict(self.best_eval),
            "tokens_seen": self.tokens_seen,
        }

    def load_progress(self, state: dict[str, Any], tokens_per_step: int) -> None:
        """Inverse of :meth:`progress_json` (older checkpoints lack some keys)."""
        self.step = self.start_step = int(state["step"])
        loss = state.get("last_loss")
        self.last_loss = math.nan if loss is None else float(loss)
        self.evaluated_at = int(state.get("evaluated_at", -1))
        self.last_eval = dict(state.get("last_eval") or {})
        self.best_eval = dict(state.get("best_eval") or {})
        self.tokens_seen = int(state.get("tokens_seen", self.step * tokens_per_step))
