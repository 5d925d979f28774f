"""``Recipe``: the shape every training recipe shares (after torchtune's recipes).

``setup()`` resolves the device and calls ``_setup_data()`` -> ``_setup_model()`` ->
``_setup_optimizer()``; ``train()`` runs the :class:`~calm_core.training.Trainer`, which calls the
recipe's ``_loss_step(model, batch)`` for every micro-batch; ``save_checkpoint()`` writes the
model directory (config, safetensors weights and the data's tokenizer) into the output directory.
``run()`` does all three and returns a summary. Every attribute exists from construction on
(None until its step has run), so a subclass or a caller can inspect a recipe at any point.

What is unusual: the Trainer owns the optimizer, its schedule, checkpoints and exact resume, so
``_setup_optimizer`` builds the Trainer (``train.optimizer``, ``lr``, ... name the optimizer) and
``save_checkpoint`` writes the final model directory, not a resumable checkpoint (the Trainer
writes those under ``checkpoints/`` every ``checkpoint_every`` steps).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch
from torch import nn

from calm_core.data.dataset import PackedDataset
from calm_core.data.packing import DataError
from calm_core.data.tokenizer import TokenizerError
from calm_core.recipes.config import TrainCodecConfig, TrainModelConfig
from calm_core.recipes.final_save import save_final_model
from calm_core.runlock import run_lock
from calm_core.runtime import resolve_device
from calm_core.training.trainer import Evaluator, StepCallback, Trainer
from calm_core.validation import check_run_config, check_train_memory

__all__ = ["Recipe"]

C = TypeVar("C", TrainModelConfig, TrainCodecConfig)


class Recipe(Generic[C]):
    """Train one model as ``config`` says on the packed data in ``data_dir``, into ``out``.

    Args:
        config: the resolved recipe config.
        data_dir: a packed data directory (``calm tokenize``); its ``val`` split, when it has
            tokens, is used for evaluation.
        out: the run directory (``metrics.jsonl``, ``checkpoints/``) and model directory.
        resume: continue from the last checkpoint in ``out``.
        progress: show the progress bar (rank 0 only).
        callbacks: ``callback(trainer, step, metrics)`` after every optimizer step.
    """

    #: the verb named in warnings
    name = "recipe"

    def __init__(
        self,
        config: C,
        data_dir: str | Path,
        out: str | Path,
        *,
        resume: bool = False,
        progress: bool = True,
        callbacks: Sequence[StepCallback] = (),
    ) -> None:
        self.config: C = config
        self.data_dir = Path(data_dir)
        self.out = Path(out)
        self.resume = resume
        self.progress = progress
        self.callbacks = list(callbacks)
        #: where the model trains: ``config.train.device`` resolved by :meth:`setup`
        self.device: torch.device | None = None
        self.train_data: PackedDataset | None = None
        self.val_data: PackedDataset | None = None
        self.model: nn.Module | None = None
        self.trainer: Trainer | None = None
        #: what ``Trainer.fit`` returned (empty until :meth:`train` has run)
        self.summary: dict[str, Any] = {}

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        """Resolve the device, open the data, build the model (seeded) and the trainer."""
        self.device = resolve_device(self.config.train.device)
        check_run_config(self.config)  # issue 23: everything the run will use, before step 1
        self._setup_data()
        self._check_data()
        torch.manual_seed(self.config.train.seed)  # the initial weights follow the run's seed
        self.model = self._setup_model()
        self._setup_optimizer()

    def _setup_data(self) -> None:
        self.train_data = PackedDataset(self.data_dir, "train")
        if "val" in self.train_data.index["splits"]:
            val = PackedDataset(self.data_dir, "val")
            self.val_data = val if val.num_tokens > 0 else None  # tokenized without --val-docs

    def _check_data(self) -> None:
        """Issue 23: the data's tokenizer (copied into the model directory at the end) loads,
        and one micro-batch's logits fit in memory."""
        assert self.train_data is not None
        try:
            self.train_data.tokenizer  # noqa: B018 (loads and caches it)
        except (TokenizerError, OSError, ValueError) as exc:
            raise DataError(
                f"the data's tokenizer in {self.data_dir} is missing or unreadable ({exc}); "
                "re-run `calm tokenize`"
            ) from None
        check_train_memory(self.config, self.train_data.vocab_size)

    def _setup_model(self) -> nn.Module:
        raise NotImplementedError

    def _evaluator(self) -> Evaluator | None:
        """The trainer's evaluation; None: the trainer's mean loss on ``val_data``."""
        return None

    def _setup_optimizer(self) -> None:
        """Build the Trainer: it makes the optimizer and learning-rate schedule that
        ``config.train`` names when training starts (and restores them on resume)."""
        assert self.model is not None and self.train_data is not None
        evaluate = self._evaluator()
        self.trainer = Trainer(
            self.model,
            self.config.train,
            train_data=self.train_data,
            run_dir=self.out,
            val_data=self.val_data if evaluate is None else None,
            evaluate=evaluate,
            resume=self.resume,
            callbacks=self.callbacks,
            device=self.device,
            progress=self.progress,
            loss_step=self._loss_step,
        )

    def _loss_step(self, model: nn.Module, batch: torch.Tensor) -> dict[str, Any]:
        """One micro-batch's forward pass: the loss dict (``"loss"`` plus logged scalars)."""
        out: dict[str, Any] = model(batch)
        return out

    # ------------------------------------------------------------------ train and save
    @property
    def is_main(self) -> bool:
        """True on the process that writes the model directory (rank 0, or the only one)."""
        return self.trainer is None or self.trainer.is_main

    def train(self) -> dict[str, Any]:
        """Run the trainer (after :meth:`setup`, which it calls when not yet done)."""
        if self.trainer is None:
            self.setup()
        assert self.trainer is not None
        self.summary = self.trainer.fit()
        return self.summary

    def save_checkpoint(self) -> Path:
        """Write the model directory (config + safetensors) and the data's tokenizer to ``out``."""
        assert self.model is not None and self.train_data is not None
        self.model.eval()
        save_final_model(self.model, self.out)  # issue 23: finite weights; a full disk named
        try:
            self.train_data.tokenizer.save(self.out)
        except Exception as exc:  # the model directory is still usable with token ids
            print(f"{self.name}: could not copy the tokenizer: {exc}", file=sys.stderr)
        return self.out

    def run(self) -> dict[str, Any]:
        """``setup`` -> ``train`` -> ``save_checkpoint`` (rank 0); return the summary.

        Holds the run lock of ``out`` (:func:`calm_core.runlock.run_lock`) throughout.

        Raises:
            RunLockError: another run (or the stale lock of a dead one) holds ``out``.
        """
        with run_lock(self.out, reentrant=True):  # held already when run by calm train
            self.setup()
            summary = self.train()
            if not self.is_main:  # under torchrun only rank 0 writes
                rank = getattr(getattr(self.trainer, "info", None), "rank", 1)
                return {"out": str(self.out), "steps": summary["steps"], "rank": rank}
            self.save_checkpoint()
            return self.result()

    def result(self) -> dict[str, Any]:
        """The summary ``run`` returns on rank 0 (a subclass adds its own figures)."""
        return {
            "out": str(self.out),
            "steps": self.summary["steps"],
            "final_loss": self.summary["final_loss"],
            "tokens_per_s": self.summary["tokens_per_s"],
            "train_s": self.summary["train_s"],
            "wall_s": self.summary["wall_s"],
            "device": str(self.device),
        }
