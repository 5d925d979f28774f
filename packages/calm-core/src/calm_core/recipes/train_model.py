"""``train_model``: train CALM (around a frozen, trained codec) or the AR baseline on a packed data
directory; the library form of ``calm train``.

The model shape starts from a named preset (:mod:`calm_core.presets`; ``calm-bench`` /
``transformer-bench`` by default, the benchmark configuration), ``config`` overrides any part,
the keyword options override that. Vocabulary, PAD and EOS come from the data (and, for CALM,
must agree with the codec's vocabulary and K). Both models train on the same shards with the
same trainer, so comparisons are fair.

The output directory is the run directory (``metrics.jsonl``, ``checkpoints/``) and the model
directory (``config.json`` + ``model.safetensors``, the codec's weights inside for CALM) with the
data's tokenizer, so ``calm generate OUT`` works from it alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Unpack

from torch import nn

from calm_core.recipes.base import Recipe
from calm_core.recipes.build import build_model, check_lengths
from calm_core.recipes.config import (
    ConfigSource,
    TrainerOptions,
    TrainModelConfig,
    resolve_model_config,
)
from calm_core.recipes.rundir import prepare_output_dir
from calm_core.runlock import run_lock
from calm_core.training.trainer import StepCallback

__all__ = ["ModelRecipe", "train_model"]


class ModelRecipe(Recipe[TrainModelConfig]):
    """The ``calm train`` recipe: a CALM around the codec in ``codec_dir``, or the AR model.

    Args:
        config: the resolved :class:`TrainModelConfig`.
        data_dir, out, resume, progress, callbacks: as for :class:`~calm_core.recipes.Recipe`.
        codec_dir: the trained codec's directory (CALM only).
    """

    name = "calm train"

    def __init__(
        self,
        config: TrainModelConfig,
        data_dir: str | Path,
        out: str | Path,
        *,
        codec_dir: str | Path | None = None,
        resume: bool = False,
        progress: bool = True,
        callbacks: Sequence[StepCallback] = (),
    ) -> None:
        super().__init__(
            config, data_dir, out, resume=resume, progress=progress, callbacks=callbacks
        )
        self.codec_dir = Path(codec_dir) if codec_dir is not None else None

    def _setup_model(self) -> nn.Module:
        assert self.train_data is not None
        model = build_model(self.config, self.train_data, self.codec_dir, self.device)
        check_lengths(self.config, model, self.train_data.chunk_size)
        return model

    def result(self) -> dict[str, Any]:
        assert self.model is not None
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        return {**super().result(), "model": self.config.model, "trainable_parameters": trainable}


def train_model(
    data: str | Path,
    out: str | Path,
    *,
    codec: str | Path | None = None,
    model: str = "calm",
    head: str | None = None,
    preset: str | None = None,
    config: ConfigSource | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    callbacks: Sequence[StepCallback] = (),
    **options: Unpack[TrainerOptions],
) -> dict[str, Any]:
    """Train CALM (``model="calm"``, around the codec directory ``codec``) or the AR baseline
    (``model="ar"``) on the data directory ``data``; write the model directory into ``out``.

    The arguments are ``calm train``'s flags: ``config`` is a JSON/TOML file, a mapping or a
    :class:`TrainModelConfig` overriding any part of the preset, and the trainer options
    (``steps``, ``lr``, ``device``, ...) override it. ``out`` must be empty unless ``resume``
    (continue its run) or ``overwrite`` (start over).

    Returns:
        ``out``, ``steps``, ``final_loss``, ``tokens_per_s``, ``train_s``, ``wall_s``,
        ``device``, ``model`` and ``trainable_parameters`` (under ``torchrun``, ranks other than
        0 return only ``out``, ``steps`` and ``rank``).

    Raises:
        ConfigError: a config that cannot work (unknown preset or head, lengths that do not fit,
            a device that is not available: :class:`~calm_core.runtime.DeviceError`).
        DataError: data that does not fit the codec, or a split shorter than one block.
        ModelLoadError: an unreadable codec directory.
        OutputDirError: ``out`` is occupied, not writable, or holds nothing to resume.
        RunLockError: another run (or the stale lock of a dead one) holds ``out``.
        CheckpointError: ``resume`` from a run made with other settings.
    """
    resolved = resolve_model_config(config, model=model, preset=preset, head=head, **options)
    with run_lock(out):  # issue 23: one run per output directory, taken before any write
        prepare_output_dir(out, overwrite=overwrite, resume=resume, resumable=True)
        recipe = ModelRecipe(
            resolved, data, out, codec_dir=codec, resume=resume, progress=progress,
            callbacks=callbacks,
        )  # fmt: skip
        return recipe.run()
