"""``calm eval-codec``: the reconstruction report of any codec directory on any packed split.

Works for every registered codec through the :class:`~calm_core.interfaces.Codec` interface, and
for a CALM model directory (its frozen codec is scored). The report is the one ``calm
train-codec`` logs: token and whole-chunk accuracy from the posterior mean, the same under
Gaussian latent noise, and the number of collapsed latent dimensions.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import torch

from calm_core.cli.common import (
    CLIError,
    add_device_argument,
    add_model_argument,
    add_split_arguments,
    check_input_path,
    check_same_tokenizer,
    load_split,
    print_json,
    resolve_model_arg,
    resolved_device,
    set_threads,
    usage_errors,
)
from calm_core.data.dataset import PackedDataset
from calm_core.interfaces import Codec
from calm_core.metrics.reconstruction import ReconstructionReport, reconstruction_report
from calm_core.model_dir import ModelLoadError, load_pretrained
from calm_core.validation import check_noise_stds

__all__ = ["HELP", "add_arguments", "codec_report", "load_codec", "run"]

#: a --config file may set any of this verb's flags (calm_core.cli.common.apply_options_file)
OPTIONS_FROM_CONFIG = True
HELP = "Report a codec's reconstruction accuracy (clean and under latent noise) on a packed split."


def load_codec(path: str, device: str | torch.device = "cpu") -> Any:
    """Load a codec directory, or the codec inside a CALM directory; CLIError otherwise."""
    try:
        model = load_pretrained(path, map_location=device)
    except ModelLoadError as exc:
        raise CLIError(str(exc)) from None
    if isinstance(model, Codec):
        return model
    codec = getattr(model, "codec", None)
    if isinstance(codec, Codec):
        return codec.eval()
    raise CLIError(
        f"{path} holds a {type(model).__name__}, which has no codec; pass a codec directory "
        "(from `calm train-codec`) or a CALM directory"
    )


def codec_report(
    codec: Codec, data: PackedDataset, args: argparse.Namespace
) -> ReconstructionReport:
    """The reconstruction report of ``codec`` on ``data`` with the flags ``--noise``,
    ``--max-chunks`` and ``--seed`` (also ``calm eval``'s); a bad input is a CLIError."""
    try:
        return reconstruction_report(
            codec, data.tokens, noise_stds=args.noise, ignore_id=data.pad_id,
            max_chunks=args.max_chunks, seed=args.seed,
        )  # fmt: skip
    except ValueError as exc:
        raise CLIError(str(exc)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser, "model", "codec (or CALM) model directory, or Hub id")
    add_split_arguments(parser)
    parser.add_argument(
        "--noise", type=float, nargs="+", default=[0.1, 0.3, 0.5], metavar="STD",
        help="latent noise stds (default: 0.1 0.3 0.5)",
    )  # fmt: skip
    parser.add_argument("--max-chunks", type=int, help="score only the first N chunks")
    parser.add_argument("--seed", type=int, default=0, help="seed of the latent noise")
    add_device_argument(parser)
    parser.add_argument("--threads", type=int, help="torch threads for this process")
    parser.add_argument("--json", action="store_true", help="print the report as JSON on stdout")


def run(args: argparse.Namespace) -> int:
    model_dir = resolve_model_arg(args.model, "model directory", revision=args.revision)
    check_input_path(args.data, "data directory")
    set_threads(args.threads)
    with usage_errors():  # issue 23: bounded noise, before any work
        check_noise_stds(args.noise)
    if args.max_chunks is not None and args.max_chunks < 1:
        raise CLIError(f"--max-chunks must be positive, got {args.max_chunks}")
    data = load_split(args)
    codec = load_codec(str(model_dir), resolved_device(args.device))
    check_same_tokenizer(model_dir, args.data, "codec")
    if codec.vocab_size < data.vocab_size:
        raise CLIError(
            f"the codec's vocabulary ({codec.vocab_size}) is smaller than the data's "
            f"({data.vocab_size}): this data was tokenized with another tokenizer"
        )
    if data.chunk_size % codec.chunk_size:
        raise CLIError(
            f"the data is packed for K={data.chunk_size}, the codec has K={codec.chunk_size}"
        )
    t0 = time.perf_counter()
    report = codec_report(codec, data, args)
    seconds = time.perf_counter() - t0
    print(
        f"{args.model} on {args.data} [{args.split}] ({seconds:.1f} s):\n{report.format()}",
        file=sys.stderr,
    )
    if args.json:
        print_json({"model": str(args.model), "split": args.split, **report.to_dict()})
    return 0
