"""The ``calm`` command: one verb per step of the workflow.

Each verb lives in its own module of this package, listed in :data:`VERBS`, and exposes
``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib import import_module

from calm_core.cli.common import (
    CalmArgumentParser,
    CLIError,
    apply_options_file,
    print_resolved_config,
)

__all__ = ["VERBS", "main"]

#: verb name -> module (inside calm_core.cli) implementing it, in workflow order
VERBS: dict[str, str] = {
    "tokenize": "tokenize",
    "train-codec": "train_codec",
    "eval-codec": "eval_codec",
    "train": "train",
    "eval": "eval",
    "generate": "generate",
    "plugins": "plugins",
    "convert-reference": "convert_reference",
    "demo": "demo",
}


def build_parser() -> CalmArgumentParser:
    from calm_core import __version__

    parser = CalmArgumentParser(
        prog="calm",
        description="Continuous Autoregressive Language Models: tokenize, train a codec, train "
        "CALM or an AR baseline, evaluate with BrierLM, generate.",
    )
    parser.add_argument("--version", action="version", version=f"calm {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=CalmArgumentParser)
    for verb, module_name in VERBS.items():
        module = import_module(f"calm_core.cli.{module_name}")
        p = sub.add_parser(verb, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        if getattr(module, "OPTIONS_FROM_CONFIG", False):
            p.add_argument(
                "--config",
                metavar="FILE",
                help="JSON/TOML file setting any of these options (flags override it)",
            )
        p.set_defaults(_run=module.run)
    return parser


def _options_file(parser: CalmArgumentParser, argv: list[str]) -> str | None:
    """For verbs whose options are plain flags (``OPTIONS_FROM_CONFIG``): apply ``--config``."""
    if not argv or argv[0] not in VERBS:
        return None
    module = import_module(f"calm_core.cli.{VERBS[argv[0]]}")
    if not getattr(module, "OPTIONS_FROM_CONFIG", False):
        return None
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv[1:])
    if known.config is None:
        return None
    apply_options_file(parser.verb_parsers()[argv[0]], known.config)
    return str(known.config)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``calm`` console script; returns the exit status."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        options_file = _options_file(parser, argv)
    except CLIError as exc:
        print(f"calm {argv[0]}: error: {exc}", file=sys.stderr)
        return exc.code
    args, extra = parser.parse_known_args(argv)
    if extra:  # report unknown flags from the verb's own parser, which knows its options
        verb_parser = parser.verb_parsers().get(getattr(args, "verb", None) or "", parser)
        verb_parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    from calm_core.runtime import tune_malloc

    tune_malloc()  # reuse large freed buffers instead of page-faulting them in every step
    if options_file is not None:
        shown = {k: v for k, v in vars(args).items() if not k.startswith("_") and k != "verb"}
        print_resolved_config(f"calm {args.verb} options", shown)
    try:
        return int(args._run(args) or 0)
    except CLIError as exc:
        print(f"calm {args.verb}: error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print(f"calm {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
