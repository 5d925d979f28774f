"""``train_codec``: train a registered codec on a packed data directory; the library form of
``calm train-codec``.

The recipe is data (:data:`~calm_core.recipes.RECIPES`): a codec spec plus
:class:`~calm_core.training.TrainConfig` fields. ``config`` overrides any part of it, the keyword
options override that. The codec's ``vocab_size`` and ``chunk_size`` come from the data directory
unless the config sets them.

The output directory is both the run directory (``metrics.jsonl``, ``checkpoints/``) and the codec
model directory (``config.json`` + ``model.safetensors``, loadable with ``load_pretrained``); the
data's tokenizer and the final reconstruction report (``reconstruction.json``) are written next to
them. Evaluation on the validation split reports the reconstruction metrics of
:mod:`calm_core.metrics.reconstruction`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Unpack

from torch import nn

from calm_core.data.dataset import PackedDataset
from calm_core.interfaces import Codec
from calm_core.metrics.reconstruction import reconstruction_report
from calm_core.recipes.base import Recipe
from calm_core.recipes.build import build_codec
from calm_core.recipes.config import (
    DEFAULT_RECIPE,
    ConfigSource,
    TrainCodecConfig,
    TrainerOptions,
    resolve_codec_config,
)
from calm_core.recipes.rundir import prepare_output_dir
from calm_core.runlock import run_lock
from calm_core.training.trainer import Evaluator, StepCallback

__all__ = ["REPORT_NAME", "CodecRecipe", "reconstruction_evaluator", "train_codec"]

#: the final reconstruction report on the validation split, in the output directory
REPORT_NAME = "reconstruction.json"


def reconstruction_evaluator(
    val: PackedDataset, noise_stds: Sequence[float], max_chunks: int | None = None
) -> Evaluator:
    """The trainer's evaluation of a codec: the reconstruction report on ``val``, flattened."""

    def evaluate(model: Any) -> dict[str, float]:  # the codec being trained
        report = reconstruction_report(
            model, val.tokens, noise_stds=noise_stds, ignore_id=val.pad_id, max_chunks=max_chunks
        )
        return report.flat_metrics()

    return evaluate


class CodecRecipe(Recipe[TrainCodecConfig]):
    """The ``calm train-codec`` recipe (arguments as for :class:`~calm_core.recipes.Recipe`)."""

    name = "calm train-codec"

    def _setup_model(self) -> nn.Module:
        assert self.train_data is not None
        if not self.resume:  # a fresh run: no report of an earlier codec may outlive it
            (self.out / REPORT_NAME).unlink(missing_ok=True)
        return build_codec(self.config, self.train_data, self.device)

    def _evaluator(self) -> Evaluator | None:
        if self.val_data is None:
            return None
        return reconstruction_evaluator(
            self.val_data, self.config.noise_stds, self.config.eval_max_chunks
        )

    def save_checkpoint(self) -> Path:
        """The codec's model directory, and the final reconstruction report on the validation
        split (``reconstruction.json``) when the data has one."""
        out = super().save_checkpoint()
        if self.val_data is not None:
            assert isinstance(self.model, Codec)
            report = reconstruction_report(
                self.model, self.val_data.tokens, noise_stds=self.config.noise_stds,
                ignore_id=self.val_data.pad_id,
            )  # fmt: skip
            text = json.dumps({"split": "val", **report.to_dict()}, indent=2) + "\n"
            tmp = out / f".{REPORT_NAME}.tmp"
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(out / REPORT_NAME)
            self.report = report.to_dict()
            print(f"validation reconstruction:\n{report.format()}", file=sys.stderr)
        return out

    def result(self) -> dict[str, Any]:
        assert self.model is not None
        out = {**super().result(), "parameters": sum(p.numel() for p in self.model.parameters())}
        if self.report is not None:
            out["report"] = self.report
        return out

    #: the final reconstruction report (set by :meth:`save_checkpoint` when there is a val split)
    report: dict[str, Any] | None = None


def train_codec(
    data: str | Path,
    out: str | Path,
    *,
    recipe: str = DEFAULT_RECIPE,
    codec: str | None = None,
    config: ConfigSource | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    callbacks: Sequence[StepCallback] = (),
    **options: Unpack[TrainerOptions],
) -> dict[str, Any]:
    """Train a codec on the data directory ``data`` and write its model directory into ``out``.

    The arguments are ``calm train-codec``'s flags: ``recipe`` names the base recipe
    (:data:`~calm_core.recipes.RECIPES`; ``steps`` shortens its schedule), ``codec`` another
    registered codec, ``config`` a JSON/TOML file, a mapping or a :class:`TrainCodecConfig`
    overriding any part, and the trainer options (``lr``, ``device``, ...) override that.
    ``out`` must be empty unless ``resume`` (continue its run) or ``overwrite`` (start over).

    Returns:
        ``out``, ``steps``, ``final_loss``, ``tokens_per_s``, ``train_s``, ``wall_s``,
        ``device``, ``parameters`` and, with a validation split, ``report`` (the reconstruction
        report); under ``torchrun``, ranks other than 0 return ``out``, ``steps`` and ``rank``.

    Raises:
        ConfigError: an unknown recipe, a config that cannot work, a device that is not
            available (:class:`~calm_core.runtime.DeviceError`).
        UnknownComponentError: a codec name that no installed package registers.
        DataError: data that does not fit the codec, or a split shorter than one block.
        OutputDirError: ``out`` is occupied, not writable, or holds nothing to resume.
        RunLockError: another run (or the stale lock of a dead one) holds ``out``.
        CheckpointError: ``resume`` from a run made with other settings.
    """
    resolved = resolve_codec_config(config, recipe=recipe, codec=codec, **options)
    with run_lock(out):  # issue 23: one run per output directory, taken before any write
        prepare_output_dir(out, overwrite=overwrite, resume=resume, resumable=True)
        recipe_ = CodecRecipe(
            resolved, data, out, resume=resume, progress=progress, callbacks=callbacks
        )
        return recipe_.run()
