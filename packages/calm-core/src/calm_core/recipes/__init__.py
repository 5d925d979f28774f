"""Training recipes: the library form of ``calm train-codec`` and ``calm train``.

:func:`train_codec` and :func:`train_model` take the same arguments as the command line's flags
and raise the library's own errors (:class:`~calm_core.config.ConfigError`,
:class:`~calm_core.data.packing.DataError`, ...). Each runs a recipe class shaped like
torchtune's (:class:`Recipe`: ``setup`` -> ``_setup_data`` / ``_setup_model`` /
``_setup_optimizer`` -> ``_loss_step`` -> ``train`` -> ``save_checkpoint``); subclass
:class:`CodecRecipe` or :class:`ModelRecipe` to change one step. The configs, the named recipes
and the builders (:func:`build_codec`, :func:`build_model`) are here too, so programs (``calm
demo``, the benchmarks) build and train exactly what the command line does.
"""

from __future__ import annotations

from calm_core.recipes.base import Recipe
from calm_core.recipes.build import (
    build_codec,
    build_model,
    check_lengths,
    check_same_tokenizer,
    load_codec,
)
from calm_core.recipes.config import (
    DEFAULT_RECIPE,
    MODEL_TRAIN_DEFAULTS,
    RECIPES,
    ConfigSource,
    TrainCodecConfig,
    TrainModelConfig,
    codec_recipe,
    model_recipe,
    resolve_codec_config,
    resolve_model_config,
)
from calm_core.recipes.final_save import NonFiniteModelError
from calm_core.recipes.rundir import OutputDirError, prepare_output_dir
from calm_core.recipes.train_codec import (
    REPORT_NAME,
    CodecRecipe,
    reconstruction_evaluator,
    train_codec,
)
from calm_core.recipes.train_model import ModelRecipe, train_model

__all__ = [
    "DEFAULT_RECIPE",
    "MODEL_TRAIN_DEFAULTS",
    "RECIPES",
    "REPORT_NAME",
    "CodecRecipe",
    "ConfigSource",
    "ModelRecipe",
    "NonFiniteModelError",
    "OutputDirError",
    "Recipe",
    "TrainCodecConfig",
    "TrainModelConfig",
    "build_codec",
    "build_model",
    "check_lengths",
    "check_same_tokenizer",
    "codec_recipe",
    "load_codec",
    "model_recipe",
    "prepare_output_dir",
    "reconstruction_evaluator",
    "resolve_codec_config",
    "resolve_model_config",
    "train_codec",
    "train_model",
]
