"""``calm generate``: continue a text prompt with a trained CALM or AR model directory.

The tokenizer is read from the model directory (``calm train`` copies it there) or from
``--tokenizer DIR``. Text is printed as it is produced (streaming); ``--json`` prints one object
with the prompt ids, the new ids and the text instead.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from calm_core.cli.common import (
    CLIError,
    add_device_argument,
    add_model_argument,
    check_input_path,
    print_json,
    resolve_model_arg,
    resolved_device,
    usage_errors,
)
from calm_core.validation import check_batch_memory

__all__ = ["HELP", "add_arguments", "run"]

#: a --config file may set any of this verb's flags (calm_core.cli.common.apply_options_file)
OPTIONS_FROM_CONFIG = True
HELP = "Generate a continuation of a text prompt with a trained CALM or AR model directory."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser, "model_dir", "model directory (calm train) or Hub id org/name")
    parser.add_argument("--prompt", required=True, metavar="TEXT", help="the text to continue")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate")
    parser.add_argument(
        "--temperature",
        type=float,
        default=1.0,
        help="CALM: in (0, 1]; AR: >= 0 (0 = greedy). Default 1",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--sampling",
        choices=["exact", "batch"],
        default="exact",
        help="CALM below T=1: exact rejection sampler or the batch approximation",
    )
    parser.add_argument(
        "--num-candidates", type=int, default=200, help="CALM batch sampler: candidates per step"
    )
    parser.add_argument(
        "--tokenizer", metavar="DIR", help="tokenizer directory (default MODEL_DIR)"
    )
    parser.add_argument(
        "--no-eos-stop", action="store_true", help="keep generating after the EOS token"
    )
    add_device_argument(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def run(args: argparse.Namespace) -> int:
    import torch

    from calm_core.calm import CALM
    from calm_core.data.tokenizer import Tokenizer
    from calm_core.generation import GenerationOptions, LanguageModel
    from calm_core.model_dir import ModelLoadError, load_pretrained
    from calm_core.sampling import TemperatureSamplingError

    model_dir = resolve_model_arg(args.model_dir, "model directory", revision=args.revision)
    if args.max_new_tokens < 1:
        raise CLIError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if args.num_candidates < 1:
        raise CLIError(f"--num-candidates must be >= 1, got {args.num_candidates}")
    device = resolved_device(args.device)
    try:
        model = load_pretrained(model_dir, map_location=device)
    except ModelLoadError as exc:
        raise CLIError(str(exc)) from None
    if not isinstance(model, LanguageModel):
        raise CLIError(
            f"{model_dir} holds a {type(model).__qualname__}; calm generate needs a CALM or AR "
            "model directory (written by calm train)"
        )
    if isinstance(model, CALM) and args.sampling == "batch":
        with usage_errors():  # issue 23: candidates whose logits cannot fit are refused
            check_batch_memory(
                args.num_candidates * model.chunk_size, model.codec.vocab_size,
                f"--num-candidates {args.num_candidates}", "lower --num-candidates",
            )  # fmt: skip
    tok_dir = check_input_path(args.tokenizer or model_dir, "tokenizer directory")
    try:
        tokenizer = Tokenizer.load(tok_dir)
    except Exception as exc:
        raise CLIError(
            f"cannot load a tokenizer from {tok_dir} ({exc}); pass --tokenizer DATA_DIR"
        ) from None
    ids = tokenizer.encode(args.prompt)
    if not ids:
        raise CLIError("the prompt encodes to no tokens; give some text")
    eos = None if args.no_eos_stop else model.config.eos_id
    calm_sampler: dict[str, Any] = {}
    if isinstance(model, CALM):
        calm_sampler = {"sampling": args.sampling, "num_candidates": args.num_candidates}
    try:
        options = GenerationOptions(
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            generator=torch.Generator(device=device).manual_seed(args.seed),
            stop_at_eos=not args.no_eos_stop,
            **calm_sampler,
        )
        stream = model.stream([ids], options=options)
        new: list[int] = []
        shown = ""
        for step, piece in enumerate(stream):
            if step == 0 and not args.json:  # after the first step: input errors come first
                sys.stdout.write(args.prompt)
            row = piece[0].tolist()
            if eos is not None and eos in row:
                row = row[: row.index(eos) + 1]
            new.extend(row)
            if not args.json:
                shown = _write_stable(tokenizer.decode(new), shown)
            if eos is not None and eos in row:
                break
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    except TemperatureSamplingError as exc:
        what = str(exc).split(";")[0]  # the rest names library arguments, not flags
        raise CLIError(f"{what}; use --sampling batch, or a higher --temperature") from None
    if args.json:
        print_json({"prompt_ids": ids, "new_ids": new, "text": tokenizer.decode(new)})
    else:
        text = tokenizer.decode(new)  # whatever was held back, even an unfinished character
        sys.stdout.write(text[len(shown) :] + "\n")
    return 0


def _write_stable(text: str, shown: str) -> str:
    """Print the part of ``text`` past ``shown`` that later tokens cannot change; return what is
    shown now. A character whose bytes are split across steps decodes to U+FFFD until its last
    byte arrives, so trailing replacement characters are held back."""
    stable = text.rstrip("\ufffd")
    if len(stable) > len(shown):
        sys.stdout.write(stable[len(shown) :])
        sys.stdout.flush()
        return stable
    return shown
