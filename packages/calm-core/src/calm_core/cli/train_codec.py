"""``calm train-codec``: train a registered codec on a packed data directory.

Argument parsing and error translation only: the recipe is :func:`calm_core.recipes.train_codec`
(:class:`~calm_core.recipes.CodecRecipe`), which a Python program calls with the same arguments.
``--recipe`` names the base recipe (:data:`calm_core.recipes.RECIPES`), ``--config FILE``
overrides any part of it, flags override the file; the resolved config and device are printed to
stderr before training.
"""

from __future__ import annotations

import argparse

from calm_core.cli.common import (
    add_training_arguments,
    check_input_path,
    run_training,
    training_options,
    usage_errors,
)
from calm_core.recipes import DEFAULT_RECIPE, RECIPES, CodecRecipe, resolve_codec_config
from calm_core.runtime import resolve_device

__all__ = ["HELP", "add_arguments", "run"]

HELP = "Train a chunk codec (default: the robust autoencoder) on a packed data directory."


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
    options = training_options(args)
    with usage_errors():
        config = resolve_codec_config(args.config, recipe=args.recipe, codec=args.codec, **options)
        device = resolve_device(config.train.device)
    return run_training(
        args, config, device, "calm train-codec",
        lambda out, callbacks: CodecRecipe(
            config, args.data, out, resume=args.resume, progress=not args.no_progress,
            callbacks=callbacks,
        ),
        "codec",
    )  # fmt: skip
