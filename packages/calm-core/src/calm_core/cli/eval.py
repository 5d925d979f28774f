"""``calm eval``: BrierLM (Brier-1..4 with standard errors) of a CALM or AR model directory.

For a CALM directory the frozen codec's reconstruction report is added (token and chunk accuracy,
accuracy under latent noise); a codec directory gets only that report. The split is cut into
consecutive blocks of ``--block-len`` tokens; each block is one scored sequence. BrierLM is
reported x100 and as the raw geometric mean, and is 0 and flagged when any Brier-n is <= 0
(``brierlm_meaningful`` is false also when an interval includes 0).
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
from calm_core.cli.eval_codec import codec_report
from calm_core.interfaces import Codec
from calm_core.metrics.brier_eval import evaluate_brier, model_kind
from calm_core.model_dir import ModelLoadError, load_pretrained
from calm_core.validation import check_batch_memory, check_noise_stds

__all__ = ["HELP", "add_arguments", "run"]

#: a --config file may set any of this verb's flags (calm_core.cli.common.apply_options_file)
OPTIONS_FROM_CONFIG = True
HELP = "BrierLM (Brier-1..4 with standard errors) of a CALM or AR model, plus codec reconstruction."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser, "model", "CALM, AR (or codec) model directory, or Hub id")
    add_split_arguments(parser)
    parser.add_argument(
        "--block-len", type=int, default=512, metavar="N",
        help="tokens per scored block (a multiple of K for CALM; default 512)",
    )  # fmt: skip
    parser.add_argument(
        "--num-blocks", type=int, metavar="N", help="score only the first N blocks (default: all)"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="blocks per forward pass")
    parser.add_argument("--seed", type=int, default=0, help="seed of the estimator's sampling")
    parser.add_argument(
        "--noise", type=float, nargs="+", default=[0.1, 0.3, 0.5], metavar="STD",
        help="latent noise stds of the reconstruction report (default: 0.1 0.3 0.5)",
    )  # fmt: skip
    parser.add_argument(
        "--no-reconstruction", action="store_true", help="skip the codec reconstruction report"
    )
    parser.add_argument(
        "--max-chunks", type=int, metavar="N", help="reconstruction: score only the first N chunks"
    )
    add_device_argument(parser)
    parser.add_argument("--threads", type=int, help="torch threads for this process")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def _load(path: str, device: torch.device) -> Any:
    try:
        return load_pretrained(path, map_location=device)
    except (ModelLoadError, ValueError) as exc:
        raise CLIError(str(exc)) from None


def _format(out: dict[str, Any]) -> str:
    lines = []
    if out.get("brier") is not None:
        for n, b in out["brier"].items():
            lines.append(f"  Brier-{n}: {b:+.5f} ± {out['brier_se'][n]:.5f}")
        lines.append(f"  BrierLM: {out['brierlm']:.3f} (x100; raw {out['brierlm_raw']:.5f})")
        if out.get("warning"):
            lines.append(f"  note: {out['warning']}")
    if "token_accuracy" in out:
        lines.append(
            f"  codec: token accuracy {out['token_accuracy']:.4f}, chunk accuracy "
            f"{out['chunk_accuracy']:.4f}"
        )
        for std, acc in out["noisy_token_accuracy"].items():
            lines.append(f"    noise std {std}: token accuracy {acc:.4f}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    model_dir = resolve_model_arg(args.model, "model directory", revision=args.revision)
    check_input_path(args.data, "data directory")
    for flag in ("block_len", "batch_size", "num_blocks", "max_chunks"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise CLIError(f"--{flag.replace('_', '-')} must be positive, got {value}")
    set_threads(args.threads)
    if not args.no_reconstruction:
        with usage_errors():  # issue 23: bounded noise, before any work
            check_noise_stds(args.noise)
    data = load_split(args)
    model = _load(str(model_dir), resolved_device(args.device))
    check_same_tokenizer(model_dir, args.data, "model")
    out: dict[str, Any] = {"model": str(args.model), "split": args.split}
    codec: Codec | None = model if isinstance(model, Codec) else None
    if codec is None:
        try:
            kind = model_kind(model)
        except TypeError as exc:
            raise CLIError(str(exc)) from None
        vocab = int(getattr(model, "vocab_size", 0) or 0)
        if vocab and vocab < data.vocab_size:
            raise CLIError(
                f"the model's vocabulary ({vocab}) is smaller than the data's "
                f"({data.vocab_size}): this data was tokenized with another tokenizer"
            )
        if kind == "calm":
            K = int(model.chunk_size)
            if args.block_len % K:
                raise CLIError(f"--block-len {args.block_len} must be a multiple of K={K}")
            if data.chunk_size % K:
                raise CLIError(f"the data is packed for K={data.chunk_size}, the model has K={K}")
            codec = model.codec
        with usage_errors():  # issue 23: a batch whose logits cannot fit is refused, not killed
            check_batch_memory(
                args.batch_size * args.block_len, vocab or data.vocab_size, "--batch-size "
                f"{args.batch_size} x --block-len {args.block_len}", "lower --batch-size",
            )  # fmt: skip
        t0 = time.perf_counter()
        try:
            result = evaluate_brier(
                model, data.tokens, block_len=args.block_len, num_blocks=args.num_blocks,
                batch_size=args.batch_size, seed=args.seed, pad_id=data.pad_id, progress=True,
            )  # fmt: skip
        except ValueError as exc:
            raise CLIError(str(exc)) from None
        out["model_type"] = kind
        out.update(result.to_dict())
        out["brier_seconds"] = time.perf_counter() - t0
        out["block_len"] = args.block_len
        out["seed"] = args.seed  # part of the protocol a BrierLM is reported with
        total = len(data.tokens) // args.block_len
        out["num_blocks"] = total if args.num_blocks is None else min(args.num_blocks, total)
    else:
        out["model_type"] = "codec"
        out["brier"] = None
    if codec is not None and not args.no_reconstruction:
        out.update(codec_report(codec, data, args).to_dict())
    print(f"{args.model} on {args.data} [{args.split}]:\n{_format(out)}", file=sys.stderr)
    if args.json:
        print_json(out)
    return 0
