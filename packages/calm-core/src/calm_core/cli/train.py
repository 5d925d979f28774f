"""``calm train``: train CALM (around a frozen codec) or the AR baseline on a packed data directory.

The model shape starts from a named preset (:mod:`calm_core.presets`; ``calm-bench`` /
``transformer-bench`` by default, the BENCHMARKS.md configuration), ``--config FILE`` overrides any
part, flags override the file. Vocabulary, PAD and EOS come from the data (and, for CALM, must
agree with the codec's vocabulary and K). Both models train on the same shards with the same
trainer, so comparisons are fair.

The output directory is the run directory (``metrics.jsonl``, ``checkpoints/``) and the model
directory (``config.json`` + ``model.safetensors``, the codec's weights inside for CALM) with the
data's tokenizer, so ``calm generate OUT`` works from it alone.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from calm_core.backbone import BackboneConfig
from calm_core.cli.common import (
    CLIError,
    add_training_arguments,
    check_input_path,
    check_same_tokenizer,
    fit_trainer,
    prepare_output_dir,
    print_json,
    print_resolved_config,
    resolve_config,
    training_overrides,
)
from calm_core.config import ComponentSpec, ConfigError, ConfigModel
from calm_core.registry import PluginConflictError, UnknownComponentError
from calm_core.training.config import TrainConfig

if TYPE_CHECKING:
    from torch import nn

    from calm_core.data.dataset import PackedDataset

__all__ = ["HELP", "TrainModelConfig", "add_arguments", "build_model", "run", "train_model"]

HELP = "Train CALM (with a frozen codec) or the AR baseline (--model ar) on a data directory."

_TRAIN_DEFAULTS: dict[str, Any] = {
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


class TrainModelConfig(ConfigModel):
    """Everything ``calm train`` runs with (a ``--config`` file may hold any part)."""

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


def base_config(model: str, preset: str | None) -> dict[str, Any]:
    """Defaults for ``model`` from a preset (``calm-bench`` / ``transformer-bench``)."""
    from calm_core.presets import get_preset

    name = preset or ("calm-bench" if model == "calm" else "transformer-bench")
    try:
        data = get_preset(name)
    except KeyError as exc:
        raise CLIError(str(exc.args[0])) from None
    kind = "calm" if data["kind"] == "calm" else "ar"
    if kind != model:
        raise CLIError(f"preset '{name}' is a {data['kind']} preset but --model is {model}")
    out: dict[str, Any] = {"model": model, "backbone": data["backbone"], "train": _TRAIN_DEFAULTS}
    if model == "calm":
        out["head"] = data["head"]
    else:
        out["tie_embeddings"] = bool(data.get("tie_embeddings", False))
    return out


def build_model(
    config: TrainModelConfig, data: PackedDataset, codec_dir: str | Path | None
) -> nn.Module:
    """The CALM (around the codec in ``codec_dir``) or AR model the config describes."""
    bb = config.backbone.model_dump()
    if config.model == "ar":
        from calm_core.ar import ARConfig, ARModel

        cfg = ARConfig(
            backbone=config.backbone,
            vocab_size=data.vocab_size,
            tie_embeddings=config.tie_embeddings,
            pad_id=data.pad_id,
            eos_id=data.eos_id,
        )
        return ARModel(cfg)
    from calm_core.calm import CALM
    from calm_core.interfaces import Codec
    from calm_core.model_dir import ModelLoadError, load_pretrained

    if codec_dir is None:
        raise CLIError(
            "--codec MODEL_DIR is required for --model calm (train one: calm train-codec)"
        )
    try:
        codec = load_pretrained(check_input_path(codec_dir, "codec directory"))
    except (ModelLoadError, UnknownComponentError, PluginConflictError) as exc:
        raise CLIError(str(exc)) from None
    if not isinstance(codec, Codec):
        raise CLIError(f"{codec_dir} holds a {type(codec).__qualname__}, not a codec")
    check_same_tokenizer(codec_dir, data.data_dir, "codec")
    if codec.vocab_size < data.vocab_size:  # larger is fine: calm train-codec allows it too
        raise CLIError(
            f"the codec's vocab_size is {codec.vocab_size}, smaller than the data's "
            f"{data.vocab_size}; train the codec on this data directory"
        )
    if data.chunk_size % codec.chunk_size:
        raise CLIError(
            f"the data is packed for K={data.chunk_size} but the codec has chunk_size "
            f"{codec.chunk_size}; re-run calm tokenize --chunk-size {codec.chunk_size}"
        )
    try:
        return CALM.from_codec(
            codec,
            backbone=bb,
            head=config.head,
            pad_id=data.pad_id,
            eos_id=data.eos_id,
        )
    except (ConfigError, UnknownComponentError, PluginConflictError) as exc:
        raise CLIError(str(exc)) from None


def _check_lengths(config: TrainModelConfig, model: nn.Module, data_chunk: int) -> None:
    seq = config.train.seq_len
    K = int(getattr(model, "chunk_size", 1))
    if seq % K:
        raise CLIError(f"train.seq_len ({seq}) must be a multiple of the chunk size K={K}")
    if seq % data_chunk:  # the AR model has no K, but its blocks are cut on the data's chunks
        raise CLIError(
            f"train.seq_len ({seq}) must be a multiple of the data's chunk size K={data_chunk} "
            f"(e.g. {max(data_chunk, seq - seq % data_chunk)})"
        )
    positions = seq // K if config.model == "calm" else seq
    if positions > config.backbone.max_positions:
        raise CLIError(
            f"train.seq_len ({seq}) needs {positions} backbone positions but "
            f"backbone.max_positions is {config.backbone.max_positions}; raise it or shorten"
        )


def train_model(
    config: TrainModelConfig,
    data_dir: str | Path,
    out: str | Path,
    *,
    codec_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Train and save the model directory (with tokenizer) into ``out``; return a summary."""
    import torch

    from calm_core.data.dataset import PackedDataset
    from calm_core.data.packing import DataError
    from calm_core.training.trainer import Trainer

    try:
        train = PackedDataset(data_dir, "train")
        splits = list(train.index["splits"])
        val = PackedDataset(data_dir, "val") if "val" in splits else None
    except DataError as exc:
        raise CLIError(str(exc)) from None
    torch.manual_seed(config.train.seed)  # the initial weights follow the run's seed
    model = build_model(config, train, codec_dir)
    _check_lengths(config, model, train.chunk_size)
    out = Path(out)
    trainer = Trainer(
        model,
        config.train,
        train_data=train,
        run_dir=out,
        val_data=val,
        resume=resume,
        progress=progress,
    )
    summary = fit_trainer(trainer)
    info = getattr(trainer, "info", None)
    if info is not None and not info.is_main:  # under torchrun only rank 0 writes
        return {"out": str(out), "steps": summary["steps"], "rank": info.rank}
    model.eval()
    model.save_pretrained(out)  # type: ignore[operator]
    try:
        train.tokenizer.save(out)
    except Exception as exc:  # the model directory is still usable with ids
        print(f"calm train: could not copy the tokenizer: {exc}", file=sys.stderr)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "out": str(out),
        "model": config.model,
        "steps": summary["steps"],
        "final_loss": summary["final_loss"],
        "tokens_per_s": summary["tokens_per_s"],
        "wall_s": summary["wall_s"],
        "trainable_parameters": trainable,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, metavar="DATA_DIR", help="packed data directory")
    parser.add_argument(
        "--codec", metavar="MODEL_DIR", help="trained codec directory (required for CALM)"
    )
    parser.add_argument("--out", required=True, metavar="MODEL_DIR", help="output directory")
    parser.add_argument(
        "--model", choices=["calm", "ar"], default="calm", help="CALM or the AR baseline"
    )
    parser.add_argument("--head", metavar="NAME", help="registered head for CALM (energy)")
    parser.add_argument(
        "--preset",
        metavar="NAME",
        help="base model shape (default calm-bench / transformer-bench; see calm_core.presets)",
    )
    parser.add_argument("--config", metavar="FILE", help="JSON/TOML overriding the preset")
    add_training_arguments(parser, steps_help="optimizer steps")


def run(args: argparse.Namespace) -> int:
    check_input_path(args.data, "data directory")
    if args.model == "ar" and args.head:
        raise CLIError("--head applies to CALM only; drop it for --model ar")
    base = base_config(args.model, args.preset)
    if args.steps is not None:
        if args.steps < 1:
            raise CLIError(f"--steps must be positive, got {args.steps}")
        train = dict(base["train"])
        train["warmup_steps"] = min(train["warmup_steps"], max(0, args.steps // 10))
        for key in ("eval_every", "checkpoint_every", "log_every"):
            train[key] = max(1, min(train[key], args.steps))
        base["train"] = train
    overrides = training_overrides(args)
    if args.head is not None:  # a spec naming another head drops the old head's config
        overrides["head"] = {"name": args.head}
    config = resolve_config(TrainModelConfig, args.config, overrides, base=base)
    if config.model != args.model:
        raise CLIError(
            f"--model {args.model} but the config file says model={config.model!r}; make them agree"
        )
    print_resolved_config("calm train config", config)
    out = prepare_output_dir(args.out, overwrite=args.overwrite, resume=args.resume, resumable=True)
    result = train_model(
        config,
        args.data,
        out,
        codec_dir=args.codec,
        resume=args.resume,
        progress=not args.no_progress,
    )
    if result.get("rank", 0):  # a non-main torchrun rank: rank 0 writes and reports
        return 0
    print(f"wrote {config.model} model to {out}", file=sys.stderr)
    if args.json:
        print_json(result)
    return 0
