"""``calm train``: train CALM (around a frozen codec) or the AR baseline on a packed data directory.

Argument parsing and error translation only: the recipe is :func:`calm_core.recipes.train_model`
(:class:`~calm_core.recipes.ModelRecipe`), which a Python program calls with the same arguments.
The model shape starts from a named preset (``calm-bench`` / ``transformer-bench`` by default),
``--config FILE`` overrides any part, flags override the file; the resolved config and device are
printed to stderr before training.
"""

from __future__ import annotations

import argparse

from calm_core.cli.common import (
    CLIError,
    add_training_arguments,
    check_input_path,
    resolve_model_arg,
    run_training,
    training_options,
    usage_errors,
)
from calm_core.recipes import ModelRecipe, resolve_model_config
from calm_core.runtime import resolve_device

__all__ = ["HELP", "add_arguments", "run"]

HELP = "Train CALM (with a frozen codec) or the AR baseline (--model ar) on a data directory."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, metavar="DATA_DIR", help="packed data directory")
    parser.add_argument(
        "--codec",
        metavar="MODEL_DIR",
        help="trained codec directory or Hub id org/name (required for CALM)",
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
    options = training_options(args)
    with usage_errors():
        config = resolve_model_config(
            args.config, model=args.model, preset=args.preset, head=args.head, **options
        )
        device = resolve_device(config.train.device)
    if config.model == "calm" and args.codec is None:
        raise CLIError(
            "--codec MODEL_DIR is required for --model calm (train one: calm train-codec)"
        )
    codec_dir = None if args.codec is None else resolve_model_arg(args.codec, "codec directory")
    return run_training(
        args, config, device, "calm train",
        lambda out, callbacks: ModelRecipe(
            config, args.data, out, codec_dir=codec_dir, resume=args.resume,
            progress=not args.no_progress, callbacks=callbacks,
        ),
        f"{config.model} model",
    )  # fmt: skip
