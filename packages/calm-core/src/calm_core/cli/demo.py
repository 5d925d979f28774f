"""``calm demo``: tokenize, train a codec, train CALM and an AR baseline, evaluate, generate.

Runs :func:`calm_core.demo.run_demo` (the same library functions the separate verbs use) and
prints the comparison table and how to continue. Defaults fit ~10 minutes on 2 CPU cores;
``--quick`` is a ~1-minute smoke test whose numbers mean nothing.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from calm_core.cli.common import (
    CLIError,
    add_device_argument,
    check_input_path,
    prepare_output_dir,
    print_json,
    print_resolved_config,
    resolve_config,
    resolved_device,
    usage_errors,
)
from calm_core.config import merge_overrides
from calm_core.demo import QUICK_OVERRIDES, DemoConfig, next_steps, run_demo, summary_table
from calm_core.registry import codecs, heads
from calm_core.runlock import run_lock

__all__ = ["HELP", "add_arguments", "run"]

HELP = (
    "Run the whole workflow on a small corpus (bundled WikiText-103 test articles by default): "
    "tokenize, codec, CALM + AR baseline, BrierLM, samples, report."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", default="calm-demo", metavar="DIR", help="output directory (default: calm-demo)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny smoke-test sizes (~1 minute; numbers mean nothing)",
    )
    parser.add_argument(
        "--corpus",
        metavar="PATH",
        help="train on this .txt/.md/.jsonl file or directory instead of the bundled articles",
    )
    parser.add_argument(
        "--config", metavar="FILE", help="JSON/TOML file with demo settings (see calm_core.demo)"
    )
    parser.add_argument("--seed", type=int, help="seed of the split, data order and models (0)")
    parser.add_argument("--vocab-size", type=int, help="BPE vocabulary size")
    parser.add_argument("--val-docs", type=int, help="held-out documents")
    add_device_argument(parser, default=None)  # None: the config's device (auto)
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    parser.add_argument(
        "--json", action="store_true", help="print results.json's content as one JSON object"
    )


def run(args: argparse.Namespace) -> int:
    if args.corpus is not None:
        check_input_path(args.corpus, "corpus")
    _check_components()
    base: dict[str, Any] = merge_overrides({}, QUICK_OVERRIDES) if args.quick else {}
    overrides = {
        "seed": args.seed, "vocab_size": args.vocab_size, "val_docs": args.val_docs,
        "device": args.device,
    }  # fmt: skip
    cfg = resolve_config(DemoConfig, args.config, overrides, base=base)
    device = resolved_device(cfg.device)
    print_resolved_config("calm demo config" + (" (--quick)" if args.quick else ""), cfg, device)
    with usage_errors(), run_lock(args.out):  # issue 23: one run per --out, before any write
        out = prepare_output_dir(args.out, overwrite=args.overwrite)
        result = run_demo(cfg, out, corpus=args.corpus, quick=args.quick)
    if args.json:
        print_json(result.to_dict())
        return 0
    print()
    print(summary_table(result))
    print(f"\nEverything is in {out}/: report.md (read this first), results.json, metrics.jsonl,")
    print("training_curves.png, and the data/, codec/, calm/ and ar/ model directories.")
    for note in result.notes:
        print(f"note: {note}")
    print("\nContinue with:")
    print(next_steps(result))
    sys.stdout.flush()
    return 0


def _check_components() -> None:
    """The demo trains the ``energy`` head and the ``autoencoder`` codec: say what to install
    before minutes of tokenizing, not after."""
    needed = ((heads, "energy", "calm-heads"), (codecs, "autoencoder", "calm-codecs"))
    missing = [dist for registry, name, dist in needed if name not in registry]
    if missing:
        raise CLIError(
            "calm demo trains the 'energy' head and the 'autoencoder' codec; install them: "
            f"pip install {' '.join(missing)}"
        )
