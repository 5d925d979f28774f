"""Experiment trackers as trainer callbacks: TensorBoard, Weights & Biases, MLflow.

``metrics.jsonl`` (always written, on rank 0) is the one record of a run; a tracker mirrors it.
Each tracker is a step callback (``callback(trainer, step, metrics)``, the trainer's public hook)
that, on the main process only, forwards the lines appended to the run's ``metrics.jsonl`` since
its last call: the training rows (every ``log_every`` steps, window means) and the ``eval/`` rows,
with the same step and the same numbers. :meth:`TrackerCallback.close` forwards what was written
after the last step (the final evaluation) and ends the tracker's run; use the callbacks as
context managers, or :func:`open_loggers`, so that it runs even when training fails. A resumed
run's trackers start at the resumed step (earlier rows were sent by the earlier run). A tracker
that fails while writing is reported once on stderr and dropped; training goes on (every row is in
``metrics.jsonl``).

Each backend is an optional extra of calm-core (``calm-core[tensorboard]``, ``[wandb]``,
``[mlflow]``), imported when its callback is created, so a missing one is reported before
training starts.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Self

from calm_core.training.logging import METRICS_FILE

if TYPE_CHECKING:
    from calm_core.training.trainer import Trainer

__all__ = [
    "LOGGERS",
    "LoggerGroup",
    "LoggerNotInstalledError",
    "MLflowLogger",
    "TensorBoardLogger",
    "TrackerCallback",
    "WandbLogger",
    "make_loggers",
    "open_loggers",
]

#: the names ``--logger`` accepts; ``jsonl`` (metrics.jsonl) is always on
LOGGERS = ("jsonl", "tensorboard", "wandb", "mlflow")


class LoggerNotInstalledError(ImportError):
    """A tracker was asked for whose optional extra is not installed."""


def _require(module: str, extra: str, what: str) -> Any:
    """Import ``module`` (the tracker's library) or say which extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise LoggerNotInstalledError(
            f"the {what} logger needs {module.split('.')[0]}: pip install 'calm-core[{extra}]'"
        ) from None


def _numbers(row: Mapping[str, Any]) -> dict[str, float]:
    """A metrics row's numeric values except ``step`` (NaN is written as a string: skipped)."""
    return {
        k: float(v)
        for k, v in row.items()
        if k != "step" and isinstance(v, int | float) and not isinstance(v, bool)
    }


class TrackerCallback(ABC):
    """A trainer callback that mirrors ``metrics.jsonl`` into an experiment tracker.

    Args:
        run_name: the tracker's run name (default: the run directory's name).
        config: settings to record with the run (default: the trainer's config).
    """

    #: the ``--logger`` name
    name: ClassVar[str]

    def __init__(self, *, run_name: str | None = None, config: Mapping[str, Any] | None = None):
        self.run_name = run_name
        self.config = dict(config) if config is not None else None
        self._path: Path | None = None
        self._offset = 0
        #: the step the trainer started at (1 for a fresh run), set before :meth:`start_run`
        self.first_step = 0
        self._started = False
        self._failed = False

    # ------------------------------------------------------------------ what a backend provides
    @abstractmethod
    def start_run(self, run_dir: Path, run_name: str, config: Mapping[str, Any]) -> None:
        """Open the tracker's run (called on the main process at the first step)."""

    @abstractmethod
    def log_row(self, step: int, values: Mapping[str, float]) -> None:
        """Record one row of ``metrics.jsonl``."""

    @abstractmethod
    def finish_run(self) -> None:
        """Flush and close the tracker's run."""

    # ------------------------------------------------------------------ the callback
    def __call__(self, trainer: Trainer, step: int, metrics: Mapping[str, float]) -> None:
        if not trainer.is_main or self._failed:
            return
        if not self._started:
            run_dir = Path(trainer.run_dir)
            config = self.config
            if config is None:
                config = trainer.config.model_dump(mode="json")
            self._path = run_dir / METRICS_FILE
            self.first_step = step  # a resumed run's earlier rows were sent by the earlier run
            self.start_run(run_dir, self.run_name or run_dir.resolve().name, config)
            self._started = True
        try:
            self._forward()
        except Exception as exc:
            self._give_up(exc)

    def _give_up(self, exc: Exception) -> None:
        # a tracker's hiccup (a network error, a full disk) must not end a run of days:
        # metrics.jsonl keeps every row, so the tracker is dropped with one warning
        self._failed = True
        self._started = False
        print(
            f"calm: the {self.name} logger failed ({type(exc).__name__}: {exc}); it is off for "
            "the rest of this run (metrics.jsonl has every row)",
            file=sys.stderr,
        )
        with contextlib.suppress(Exception):
            self.finish_run()

    def _forward(self) -> None:
        """Send the complete lines of ``metrics.jsonl`` past the last one sent."""
        if self._path is None or not self._path.is_file():
            return
        with self._path.open("rb") as fh:
            fh.seek(self._offset)
            data = fh.read()
        end = data.rfind(b"\n") + 1  # a line still being written is sent next time
        self._offset += end
        for line in data[:end].splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if not isinstance(row, dict) or "step" not in row:
                continue
            step = int(row["step"])
            values = _numbers(row)
            if step >= self.first_step and values:
                self.log_row(step, values)

    def close(self) -> None:
        """Send the rows written after the last step, then end the tracker's run."""
        if self._started:
            try:
                self._forward()
            except Exception as exc:
                self._give_up(exc)
                return
            self._started = False
            self.finish_run()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class TensorBoardLogger(TrackerCallback):
    """Scalars for TensorBoard (``torch.utils.tensorboard``), one tag per metric.

    Args:
        log_dir: event-file directory (default: ``RUN_DIR/tensorboard``, whose earlier event
            files a fresh run deletes; a resumed run adds to them).
    """

    name = "tensorboard"

    def __init__(self, log_dir: str | Path | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._tb = _require("torch.utils.tensorboard", "tensorboard", "TensorBoard")
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self._writer: Any = None

    def start_run(self, run_dir: Path, run_name: str, config: Mapping[str, Any]) -> None:
        if self.log_dir is None:
            self.log_dir = run_dir / "tensorboard"
            if self.first_step <= 1:  # a fresh run replaces metrics.jsonl: its curves start over
                for old in self.log_dir.glob("events.out.tfevents.*"):
                    old.unlink()
        self._writer = self._tb.SummaryWriter(log_dir=str(self.log_dir))
        text = json.dumps(dict(config), indent=2)
        self._writer.add_text("config", f"```\n{text}\n```", global_step=0)

    def log_row(self, step: int, values: Mapping[str, float]) -> None:
        for key, value in values.items():
            self._writer.add_scalar(key, value, global_step=step)
        self._writer.flush()  # readers (TensorBoard itself) see each row as it comes

    def finish_run(self) -> None:
        self._writer.close()


class MLflowLogger(TrackerCallback):
    """Metrics and parameters for MLflow.

    Args:
        tracking_uri: where runs go (default: ``MLFLOW_TRACKING_URI``, else the SQLite database
            ``RUN_DIR/mlflow.db``; a ``file:`` store needs ``MLFLOW_ALLOW_FILE_STORE=true`` on
            MLflow 3).
        experiment: experiment name (default: ``MLFLOW_EXPERIMENT_NAME``, else ``calm``).
    """

    name = "mlflow"

    def __init__(
        self, tracking_uri: str | None = None, experiment: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self._mlflow = _require("mlflow", "mlflow", "MLflow")
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self._client: Any = None
        self.run_id: str | None = None

    def start_run(self, run_dir: Path, run_name: str, config: Mapping[str, Any]) -> None:
        uri = self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        artifacts = None
        if not uri:  # a database next to the run, its artifacts too (not in the working dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            uri = f"sqlite:///{(run_dir / 'mlflow.db').resolve()}"
            artifacts = (run_dir / "mlartifacts").resolve().as_uri()
        self.tracking_uri = uri
        name = self.experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or "calm"
        client = self._mlflow.tracking.MlflowClient(tracking_uri=uri)
        found = client.get_experiment_by_name(name)
        exp_id = (
            found.experiment_id
            if found is not None
            else client.create_experiment(name, artifact_location=artifacts)
        )
        run = client.create_run(exp_id, run_name=run_name)
        self._client, self.run_id = client, run.info.run_id
        Param = self._mlflow.entities.Param
        # MLflow caps a parameter value's length; nested settings are written as JSON
        params = [
            Param(k, (v if isinstance(v, str) else json.dumps(v))[:500])
            for k, v in _flatten(config).items()
        ]
        for i in range(0, len(params), 100):  # and the number per call
            client.log_batch(self.run_id, params=params[i : i + 100])

    def log_row(self, step: int, values: Mapping[str, float]) -> None:
        Metric = self._mlflow.entities.Metric
        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, step) for key, value in values.items()]
        self._client.log_batch(self.run_id, metrics=metrics)

    def finish_run(self) -> None:
        self._client.set_terminated(self.run_id)


class WandbLogger(TrackerCallback):
    """Metrics and config for Weights & Biases (``WANDB_MODE=offline`` works without network).

    Args:
        project: W&B project (default: ``WANDB_PROJECT``, else ``calm``).
        mode: ``online``, ``offline`` or ``disabled`` (default: ``WANDB_MODE``, else online).
    """

    name = "wandb"

    def __init__(self, project: str | None = None, mode: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._wandb = _require("wandb", "wandb", "Weights & Biases")
        self.project = project
        self.mode = mode
        self.run: Any = None

    def start_run(self, run_dir: Path, run_name: str, config: Mapping[str, Any]) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        self.run = self._wandb.init(
            project=self.project or os.environ.get("WANDB_PROJECT") or "calm",
            name=run_name,
            dir=str(run_dir),
            config=dict(config),
            mode=self.mode,
        )

    def log_row(self, step: int, values: Mapping[str, float]) -> None:
        self.run.log(dict(values), step=step)

    def finish_run(self) -> None:
        self.run.finish()


def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


_CLASSES: dict[str, type[TrackerCallback]] = {
    cls.name: cls for cls in (TensorBoardLogger, WandbLogger, MLflowLogger)
}


def make_loggers(
    names: Sequence[str],
    *,
    run_name: str | None = None,
    config: Mapping[str, Any] | None = None,
) -> list[TrackerCallback]:
    """The tracker callbacks named in ``names`` (``--logger`` values; ``jsonl`` adds none).

    Raises:
        ValueError: an unknown name.
        LoggerNotInstalledError: a tracker whose extra is not installed (all checked first).
    """
    unknown = [n for n in names if n not in LOGGERS]
    if unknown:
        raise ValueError(f"unknown logger '{unknown[0]}'; choose from {', '.join(LOGGERS)}")
    wanted = list(dict.fromkeys(n for n in names if n != "jsonl"))
    return [_CLASSES[n](run_name=run_name, config=config) for n in wanted]


class LoggerGroup:
    """Tracker callbacks that are all closed when the ``with`` block ends, error or not."""

    def __init__(self, loggers: Sequence[TrackerCallback]) -> None:
        self.loggers = list(loggers)

    def __enter__(self) -> list[TrackerCallback]:
        return self.loggers

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with contextlib.ExitStack() as stack:  # every one is closed even if one close fails
            for logger in self.loggers:
                stack.callback(logger.close)


def open_loggers(
    names: Sequence[str],
    *,
    run_name: str | None = None,
    config: Mapping[str, Any] | None = None,
) -> LoggerGroup:
    """:func:`make_loggers` (errors raised here, before training) for a ``with`` block that
    closes them all: ``with open_loggers(["tensorboard"]) as callbacks: Trainer(...,
    callbacks=callbacks).fit()``."""
    return LoggerGroup(make_loggers(names, run_name=run_name, config=config))
