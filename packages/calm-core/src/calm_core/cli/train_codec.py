"""``calm train-codec``: train a registered codec on a packed data directory.

The recipe is data (:data:`RECIPES`): a codec spec plus :class:`~calm_core.training.TrainConfig`
fields. ``--config FILE`` overrides any part of it, flags override the file. The codec's
``vocab_size`` and ``chunk_size`` come from the data directory unless the config sets them.

The output directory is both the run directory (``metrics.jsonl``, ``checkpoints/``) and the codec
model directory (``config.json`` + ``model.safetensors``, loadable with ``load_pretrained``); the
data's tokenizer and the final reconstruction report (``reconstruction.json``) are written next to
them. Evaluation on the validation split reports the reconstruction metrics of
:mod:`calm_core.metrics.reconstruction`.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from calm_core.cli.common import (
    CLIError,
    add_training_arguments,
    check_input_path,
    fit_trainer,
    prepare_output_dir,
    print_json,
    print_resolved_config,
    resolve_config,
    training_overrides,
)
from calm_core.config import ComponentSpec, ConfigError, ConfigModel
from calm_core.model_dir import save_pretrained
from calm_core.training.config import TrainConfig

if TYPE_CHECKING:
    from calm_core.data.dataset import PackedDataset
    from calm_core.interfaces import Codec

__all__ = [
    "DEFAULT_RECIPE",
    "HELP",
    "RECIPES",
    "REPORT_NAME",
    "TrainCodecConfig",
    "add_arguments",
    "build_codec",
    "recipe",
    "run",
    "train_codec",
]

HELP = "Train a chunk codec (default: the robust autoencoder) on a packed data directory."
REPORT_NAME = "reconstruction.json"
DEFAULT_RECIPE = "default"

_TRAIN_BASE: dict[str, Any] = {
    "batch_size": 8,
    "seq_len": 512,
    "betas": (0.9, 0.95),
    "weight_decay": 0.1,
    "grad_clip": 1.0,
    "log_every": 25,
    "eval_every": 250,
    "checkpoint_every": 500,
}

#: named recipes: codec spec + trainer fields. "default" is the tuned one (see calm-codecs README).
RECIPES: dict[str, dict[str, Any]] = {
    "default": {
        # random-token replacement trains every vocabulary row (rare and unseen tokens were
        # all of the held-out errors without it); see the calm-codecs README
        "codec": {"name": "autoencoder", "config": {"random_token_rate": 0.1}},
        "train": {
            **_TRAIN_BASE,
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
        "train": {**_TRAIN_BASE, "steps": 2000, "lr": 3e-4, "warmup_steps": 200,
                  "schedule": "constant"},
    },
}  # fmt: skip


class TrainCodecConfig(ConfigModel):
    """Everything ``calm train-codec`` runs with (a ``--config`` file may hold any part)."""

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


def recipe(name: str = DEFAULT_RECIPE, *, steps: int | None = None) -> dict[str, Any]:
    """A deep copy of a named recipe as a config dict; ``steps`` shortens it proportionally.

    Shortening scales the warm-up and caps the eval/checkpoint intervals at ``steps``, so
    ``calm demo`` can reuse the default recipe with fewer steps.
    """
    if name not in RECIPES:
        raise CLIError(f"unknown codec recipe {name!r}; known recipes: {', '.join(RECIPES)}")
    out = copy.deepcopy(RECIPES[name])
    if steps is not None:
        if steps < 1:
            raise CLIError(f"--steps must be positive, got {steps}")
        train = out["train"]
        train["warmup_steps"] = min(
            train["warmup_steps"], round(train["warmup_steps"] * steps / train["steps"])
        )
        train["steps"] = steps
        for key in ("eval_every", "checkpoint_every", "log_every"):
            if train.get(key):
                train[key] = max(1, min(train[key], steps))
    return out


def build_codec(config: TrainCodecConfig, data: PackedDataset) -> Codec:
    """Build the configured codec, taking vocab and K from the data unless the config sets them."""
    from calm_core.registry import PluginConflictError, UnknownComponentError, codecs

    spec = config.codec.model_dump()
    try:
        cls = codecs.get(spec["name"])
    except (UnknownComponentError, PluginConflictError) as exc:
        raise CLIError(str(exc)) from None
    fields = getattr(cls.config_class, "model_fields", {})
    cfg = dict(spec["config"])
    for key, value in (("vocab_size", data.vocab_size), ("chunk_size", data.chunk_size)):
        if key in fields:
            cfg.setdefault(key, value)
    try:
        codec = codecs.build({"name": spec["name"], "config": cfg})
    except ConfigError as exc:
        raise CLIError(str(exc)) from None
    if codec.vocab_size < data.vocab_size:
        fix = (
            "remove codec.config.vocab_size to take it from the data"
            if "vocab_size" in fields
            else f"{spec['name']}'s config has no 'vocab_size' field for calm to fill from the "
            "data: set its vocabulary to at least the data's in the codec config"
        )
        raise CLIError(
            f"the codec's vocab_size {codec.vocab_size} is smaller than the data's "
            f"{data.vocab_size}; {fix}"
        )
    if data.chunk_size % codec.chunk_size:
        raise CLIError(
            f"the data is packed for K={data.chunk_size} but the codec has chunk_size "
            f"{codec.chunk_size}; re-run `calm tokenize --chunk-size {codec.chunk_size}`"
        )
    return codec


def make_evaluator(val: PackedDataset, noise_stds: list[float], max_chunks: int | None) -> Any:
    """The trainer's evaluation: the reconstruction report on the validation split."""
    from calm_core.metrics.reconstruction import reconstruction_report

    def evaluate(model: Any) -> dict[str, float]:
        report = reconstruction_report(
            model, val.tokens, noise_stds=noise_stds, ignore_id=val.pad_id, max_chunks=max_chunks
        )
        return report.flat_metrics()

    return evaluate


def train_codec(
    config: TrainCodecConfig,
    data_dir: str | Path,
    out: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Train, save the codec model directory into ``out`` and return a summary with the report."""
    import torch

    from calm_core.data.dataset import PackedDataset
    from calm_core.data.packing import DataError
    from calm_core.metrics.reconstruction import reconstruction_report
    from calm_core.training.trainer import Trainer

    try:
        train = PackedDataset(data_dir, "train")
        val = PackedDataset(data_dir, "val") if "val" in _splits(data_dir) else None
    except DataError as exc:
        raise CLIError(str(exc)) from None
    if val is not None and val.num_tokens == 0:  # tokenized without --val-docs
        val = None
    torch.manual_seed(config.train.seed)  # the initial weights follow the run's seed
    codec = build_codec(config, train)
    out = Path(out)
    evaluate = (
        make_evaluator(val, config.noise_stds, config.eval_max_chunks) if val is not None else None
    )
    trainer = Trainer(
        codec, config.train, train_data=train, run_dir=out, evaluate=evaluate, resume=resume,
        progress=progress,
    )  # fmt: skip
    if not resume:  # a fresh run: no report of an earlier codec may outlive it
        (out / REPORT_NAME).unlink(missing_ok=True)
    summary = fit_trainer(trainer)
    info = getattr(trainer, "info", None)
    if info is not None and not info.is_main:  # under torchrun only rank 0 writes
        return {"out": str(out), "steps": summary["steps"], "rank": info.rank}
    codec.eval()
    save_pretrained(codec, out)
    try:
        train.tokenizer.save(out)
    except Exception as exc:  # a codec directory is still usable without the tokenizer
        print(f"calm train-codec: could not copy the tokenizer: {exc}", file=sys.stderr)
    result: dict[str, Any] = {
        "out": str(out),
        "steps": summary["steps"],
        "final_loss": summary["final_loss"],
        "tokens_per_s": summary["tokens_per_s"],
        "train_s": summary["train_s"],
        "wall_s": summary["wall_s"],
        "parameters": sum(p.numel() for p in codec.parameters()),
    }
    if val is not None:
        report = reconstruction_report(
            codec, val.tokens, noise_stds=config.noise_stds, ignore_id=val.pad_id
        )
        (out / REPORT_NAME).write_text(
            json.dumps({"split": "val", **report.to_dict()}, indent=2) + "\n", encoding="utf-8"
        )
        result["report"] = report.to_dict()
        print(f"validation reconstruction:\n{report.format()}", file=sys.stderr)
    return result


def _splits(data_dir: str | Path) -> list[str]:
    from calm_core.data.dataset import PackedDataset

    return list(PackedDataset(data_dir, "train").index["splits"])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, metavar="DATA_DIR", help="packed data directory")
    parser.add_argument("--out", required=True, metavar="MODEL_DIR", help="output directory")
    parser.add_argument(
        "--recipe", default=DEFAULT_RECIPE, choices=sorted(RECIPES),
        help=f"base recipe ({DEFAULT_RECIPE}: the tuned one; reference: the paper code's)",
    )  # fmt: skip
    parser.add_argument("--config", metavar="FILE", help="JSON/TOML overriding the recipe")
    parser.add_argument("--codec", metavar="NAME", help="registered codec name (autoencoder)")
    add_training_arguments(parser, steps_help="optimizer steps (shortens the schedule)")


def run(args: argparse.Namespace) -> int:
    check_input_path(args.data, "data directory")
    base = recipe(args.recipe, steps=args.steps)
    overrides = training_overrides(args)
    if args.codec is not None:  # a spec naming another codec drops the recipe's codec config
        overrides["codec"] = {"name": args.codec}
    config = resolve_config(TrainCodecConfig, args.config, overrides, base=base)
    print_resolved_config("calm train-codec config", config)
    out = prepare_output_dir(args.out, overwrite=args.overwrite, resume=args.resume, resumable=True)
    result = train_codec(config, args.data, out, resume=args.resume, progress=not args.no_progress)
    if result.get("rank", 0):  # a non-main torchrun rank: rank 0 writes and reports
        return 0
    print(f"wrote codec to {out}", file=sys.stderr)
    if args.json:
        print_json(result)
    return 0
