"""The recipe configs: what ``train_model`` / ``train_codec`` (and ``calm train`` /
``calm train-codec``) run with, and how they are resolved.

A config is resolved in layers: the recipe's defaults (a named preset for the language models, a
named codec recipe for the codec) <- a config file or mapping (any part) <- keyword options (the
command line's flags). The result is validated into :class:`TrainModelConfig` or
:class:`TrainCodecConfig`; every problem is a :class:`~calm_core.config.ConfigError`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypedDict, TypeVar, Unpack

from pydantic import BaseModel, Field

from calm_core.backbone import BackboneConfig
from calm_core.config import (
    ComponentSpec,
    ConfigError,
    ConfigModel,
    load_config_file,
    merge_overrides,
    validate_config,
)
from calm_core.presets import get_preset
from calm_core.training.config import TrainConfig
from calm_core.validation import check_run_config

__all__ = [
    "DEFAULT_RECIPE",
    "MODEL_TRAIN_DEFAULTS",
    "RECIPES",
    "ConfigSource",
    "TrainCodecConfig",
    "TrainModelConfig",
    "TrainerOptions",
    "codec_recipe",
    "model_recipe",
    "resolve_codec_config",
    "resolve_model_config",
]

M = TypeVar("M", bound=BaseModel)

#: a config file (JSON/TOML), a mapping, or a config object: any part of the recipe's config
ConfigSource = str | Path | Mapping[str, Any] | BaseModel

#: the language models' trainer settings (the preset gives the shape)
MODEL_TRAIN_DEFAULTS: dict[str, Any] = {
    "steps": 1000,
    "batch_size": 8,
    "seq_len": 512,
    "lr": 3e-4,
    "betas": (0.9, 0.95),
    "weight_decay": 0.1,
    "grad_clip": 1.0,
    "warmup_steps": 200,
    "schedule": "constant",
    "log_every": 10,
    "eval_every": 250,
    "checkpoint_every": 250,
}

_CODEC_TRAIN_BASE: dict[str, Any] = {
    "batch_size": 8,
    "seq_len": 512,
    "betas": (0.9, 0.95),
    "weight_decay": 0.1,
    "grad_clip": 1.0,
    "log_every": 25,
    "eval_every": 250,
    "checkpoint_every": 500,
}

DEFAULT_RECIPE = "default"

#: named codec recipes: codec spec + trainer fields. "default" is the tuned one (calm-codecs README)
RECIPES: dict[str, dict[str, Any]] = {
    "default": {
        # random-token replacement trains every vocabulary row (rare and unseen tokens were
        # all of the held-out errors without it); see the calm-codecs README
        "codec": {"name": "autoencoder", "config": {"random_token_rate": 0.1}},
        "train": {
            **_CODEC_TRAIN_BASE,
            "steps": 800,
            "eval_every": 200,
            "lr": 2e-3,
            "warmup_steps": 100,
            "schedule": "cosine",
            "min_lr_ratio": 0.1,
        },
    },
    # the reference implementation's recipe (constant lr 3e-4 after warm-up), for comparison
    "reference": {
        "codec": {"name": "autoencoder", "config": {}},
        "train": {**_CODEC_TRAIN_BASE, "steps": 2000, "lr": 3e-4, "warmup_steps": 200,
                  "schedule": "constant"},
    },
}  # fmt: skip


class TrainModelConfig(ConfigModel):
    """Everything :func:`~calm_core.recipes.train_model` (``calm train``) runs with."""

    model: Literal["calm", "ar"] = Field("calm", description="CALM or the AR baseline.")
    backbone: BackboneConfig = Field(
        default_factory=lambda: BackboneConfig.model_validate({}), description="Backbone shape."
    )
    head: ComponentSpec = Field(
        default_factory=lambda: ComponentSpec(name="energy"), description="CALM's head."
    )
    tie_embeddings: bool = Field(False, description="AR only: tie input and output embeddings.")
    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig.model_validate({}), description="Trainer settings."
    )


class TrainCodecConfig(ConfigModel):
    """Everything :func:`~calm_core.recipes.train_codec` (``calm train-codec``) runs with."""

    codec: ComponentSpec = Field(
        default_factory=lambda: ComponentSpec.model_validate({"name": "autoencoder"}),
        description="The codec to train: registered name and its own config.",
    )
    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig.model_validate({}), description="Trainer settings."
    )
    noise_stds: list[float] = Field(
        default_factory=lambda: [0.1, 0.3, 0.5],
        description="Latent noise levels of the reconstruction report.",
    )
    eval_max_chunks: int | None = Field(
        None, ge=1, description="Score at most this many validation chunks per evaluation."
    )


def _check_steps(steps: int | None) -> None:
    if steps is not None and steps < 1:
        raise ConfigError(f"steps must be positive, got {steps}")


def codec_recipe(name: str = DEFAULT_RECIPE, *, steps: int | None = None) -> dict[str, Any]:
    """A deep copy of a named codec recipe as a config dict; ``steps`` shortens it.

    Shortening scales the warm-up and caps the eval/checkpoint/log intervals at ``steps``, so a
    short run (``calm demo``, a smoke test) keeps the recipe's shape.
    """
    if name not in RECIPES:
        raise ConfigError(f"unknown codec recipe {name!r}; known recipes: {', '.join(RECIPES)}")
    _check_steps(steps)
    out = copy.deepcopy(RECIPES[name])
    if steps is not None:
        train = out["train"]
        train["warmup_steps"] = min(
            train["warmup_steps"], round(train["warmup_steps"] * steps / train["steps"])
        )
        train["steps"] = steps
        for key in ("eval_every", "checkpoint_every", "log_every"):
            if train.get(key):
                train[key] = max(1, min(train[key], steps))
    return out


def model_recipe(
    model: str = "calm", preset: str | None = None, *, steps: int | None = None
) -> dict[str, Any]:
    """Defaults for ``model`` ("calm" or "ar") from a named preset (``calm-bench`` /
    ``transformer-bench`` unless ``preset`` names another); ``steps`` caps the warm-up at a tenth
    of the run and the eval/checkpoint/log intervals at ``steps``."""
    if model not in ("calm", "ar"):
        raise ConfigError(f"model must be 'calm' or 'ar', got {model!r}")
    _check_steps(steps)
    name = preset or ("calm-bench" if model == "calm" else "transformer-bench")
    try:
        data = get_preset(name)
    except KeyError as exc:
        raise ConfigError(str(exc.args[0])) from None
    kind = "calm" if data["kind"] == "calm" else "ar"
    if kind != model:
        raise ConfigError(f"preset '{name}' is a {data['kind']} preset but the model is {model}")
    train = dict(MODEL_TRAIN_DEFAULTS)
    if steps is not None:
        train["steps"] = steps
        train["warmup_steps"] = min(train["warmup_steps"], max(0, steps // 10))
        for key in ("eval_every", "checkpoint_every", "log_every"):
            train[key] = max(1, min(train[key], steps))
    out: dict[str, Any] = {"model": model, "backbone": copy.deepcopy(data["backbone"])}
    out["train"] = train
    if model == "calm":
        out["head"] = copy.deepcopy(data["head"])
    else:
        out["tie_embeddings"] = bool(data.get("tie_embeddings", False))
    return out


class TrainerOptions(TypedDict, total=False):
    """The trainer options that ``train_model`` / ``train_codec`` (and the command line's flags)
    take as keywords, each overriding one field of the ``train`` section."""

    steps: int | None
    batch_size: int | None
    seq_len: int | None
    lr: float | None
    eval_every: int | None
    seed: int | None
    threads: int | None
    device: str | None


#: each trainer option's dotted field in the config
_TRAINER_FIELDS = {
    "steps": "train.steps",
    "batch_size": "train.batch_size",
    "seq_len": "train.seq_len",
    "lr": "train.lr",
    "eval_every": "train.eval_every",
    "seed": "train.seed",
    "threads": "train.num_threads",
    "device": "train.device",
}


def train_overrides(**options: Unpack[TrainerOptions]) -> dict[str, Any]:
    """Trainer options as dotted overrides of the ``train`` section (None changes nothing)."""
    given: dict[str, Any] = dict(options)
    unknown = sorted(set(given) - set(_TRAINER_FIELDS))
    if unknown:
        raise TypeError(
            f"unexpected keyword argument {unknown[0]!r}; the trainer options are "
            + ", ".join(_TRAINER_FIELDS)
        )
    return {field: given.get(name) for name, field in _TRAINER_FIELDS.items()}


def resolve(
    model: type[M],
    config: ConfigSource | None,
    overrides: Mapping[str, Any] | None = None,
    *,
    base: Mapping[str, Any] | None = None,
) -> M:
    """Defaults <- ``base`` <- ``config`` (file, mapping or config object) <- ``overrides``,
    validated into ``model``; a :class:`ConfigError` names the file when one was given."""
    data: dict[str, Any] = dict(base or {})
    if isinstance(config, BaseModel):
        data = merge_overrides(data, config.model_dump())
    elif isinstance(config, Mapping):
        data = merge_overrides(data, dict(config))
    elif config is not None:
        data = merge_overrides(data, load_config_file(config))
    data = merge_overrides(data, dict(overrides or {}))
    try:
        return validate_config(model, data)
    except ConfigError as exc:
        if isinstance(config, str | Path):
            raise ConfigError(f"{exc} (from {config} and the options)") from None
        raise


def resolve_codec_config(
    config: ConfigSource | None = None,
    *,
    recipe: str = DEFAULT_RECIPE,
    codec: str | None = None,
    **train: Unpack[TrainerOptions],
) -> TrainCodecConfig:
    """The codec recipe ``recipe`` (shortened to ``steps``) <- ``config`` <- the options.

    ``codec`` names another registered codec (its config then starts empty); ``train`` takes the
    trainer options of :func:`train_overrides` (``steps``, ``batch_size``, ``lr``, ``device``, ...).
    """
    overrides = train_overrides(**train)
    if codec is not None:  # a spec naming another codec drops the recipe's codec config
        overrides["codec"] = {"name": codec}
    base = codec_recipe(recipe, steps=train.get("steps"))
    resolved = resolve(TrainCodecConfig, config, overrides, base=base)
    check_run_config(resolved)  # issue 23: finite, bounded, usable by every stage of the run
    return resolved


def resolve_model_config(
    config: ConfigSource | None = None,
    *,
    model: str = "calm",
    preset: str | None = None,
    head: str | None = None,
    **train: Unpack[TrainerOptions],
) -> TrainModelConfig:
    """The preset's shape and the trainer defaults (shortened to ``steps``) <- ``config`` <-
    the options; ``head`` names another registered head for CALM (its config then starts empty).
    """
    if model == "ar" and head is not None:
        raise ConfigError("head applies to CALM only; drop it for the AR model")
    overrides = train_overrides(**train)
    if head is not None:
        overrides["head"] = {"name": head}
    base = model_recipe(model, preset, steps=train.get("steps"))
    resolved = resolve(TrainModelConfig, config, overrides, base=base)
    if resolved.model != model:
        raise ConfigError(
            f"the model is {model!r} but the config says model={resolved.model!r}; make them agree"
        )
    check_run_config(resolved)  # issue 23: finite, bounded, usable by every stage of the run
    return resolved
