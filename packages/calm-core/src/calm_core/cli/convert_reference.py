"""``calm convert-reference SRC DST``: reference-implementation checkpoints -> calm model dirs.

The conversion itself (reading the reference's files, telling the kinds apart, mapping weights,
finding a CALM's autoencoder) is library code in :mod:`calm_core.reference`; this verb parses the
arguments, checks the output directory before the slow part, turns
:class:`~calm_core.reference.ReferenceConversionError` into a usage error, and reports.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import Field

from calm_core.cli.common import (
    CLIError,
    prepare_output_dir,
    print_resolved_config,
    resolve_config,
    resolve_model_arg,
)
from calm_core.config import ConfigModel

__all__ = ["HELP", "ConvertReferenceConfig", "add_arguments", "convert_reference", "run"]

HELP = (
    "Convert a reference-implementation checkpoint (autoencoder, CALM energy, or Llama AR) into "
    "a calm model directory."
)


class ConvertReferenceConfig(ConfigModel):
    """Settings of ``calm convert-reference`` besides SRC and DST (``--config`` may set them)."""

    ae: str | None = Field(
        None, description="Reference autoencoder directory for a CALM checkpoint."
    )


def convert_reference(
    src: str | Path,
    dst: str | Path,
    *,
    ae: str | Path | None = None,
    overwrite: bool = False,
    revision: str | None = None,
) -> dict[str, Any]:
    """Convert a reference checkpoint directory into a calm model directory.

    Args:
        src: reference directory (``config.json`` + weights), or its Hub id ``org/name``.
        dst: output model directory; must be empty or absent unless ``overwrite``.
        ae: reference autoencoder directory or Hub id, for CALM checkpoints.
        overwrite: replace files in a non-empty ``dst``.
        revision: branch, tag or commit of ``src`` when it is a Hub id.

    Returns:
        The summary of :func:`calm_core.reference.write_model_dir`.

    Raises:
        CLIError: unreadable input, unsupported kind, mismatched codec, unwritable output.
    """
    # imported here, not at the top: every verb module is imported to build ``calm --help``,
    # which must not pay for torch
    from calm_core.reference import (
        ReferenceConversionError,
        check_destination,
        convert_checkpoint,
        read_reference_checkpoint,
        write_model_dir,
    )

    created = not Path(dst).exists()
    try:
        src_dir = resolve_model_arg(src, "reference checkpoint directory", revision=revision)
        ae_dir = None if ae is None else resolve_model_arg(ae, "autoencoder directory")
        # DST inside an input: refused before anything is read or written
        check_destination(src_dir, dst)
        if ae_dir is not None:
            check_destination(ae_dir, dst, what="--ae")
        ckpt = read_reference_checkpoint(src_dir)
        ckpt.kind  # noqa: B018 - refuses an unknown kind before the output directory is made
        out = prepare_output_dir(dst, overwrite=overwrite)  # checked before the slow part
        try:
            conversion = convert_checkpoint(ckpt, ae=ae_dir)
        except BaseException:
            if created and out.is_dir() and not any(out.iterdir()):
                out.rmdir()  # leave no empty directory behind a failed conversion
            raise
        return write_model_dir(conversion, out)
    except ReferenceConversionError as exc:
        raise CLIError(str(exc)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "src", metavar="SRC_DIR", help="reference checkpoint directory, or its Hub id org/name"
    )
    parser.add_argument("dst", metavar="DST_DIR", help="calm model directory to write")
    parser.add_argument(
        "--ae",
        metavar="AE_DIR",
        default=None,
        help="reference autoencoder directory or Hub id for a CALM checkpoint (default: the "
        "config's ae_path field, else the checkpoint's own ae_model.* tensors)",
    )
    parser.add_argument(
        "--revision", metavar="REV", help="SRC as a Hub id: branch, tag or commit (default: main)"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the contents of a non-empty DST_DIR"
    )
    parser.add_argument("--config", metavar="FILE", help="JSON/TOML file with these settings")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")


def run(args: argparse.Namespace) -> int:
    cfg = resolve_config(ConvertReferenceConfig, args.config, {"ae": args.ae})
    print_resolved_config(
        "calm convert-reference config",
        {"src": args.src, "dst": args.dst, **cfg.model_dump(), "overwrite": args.overwrite},
    )
    summary = convert_reference(
        args.src, args.dst, ae=cfg.ae, overwrite=args.overwrite, revision=args.revision
    )
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    else:
        print(
            f"converted reference {summary['kind']} checkpoint {summary['source']} -> "
            f"{summary['destination']} ({summary['parameters']:,} parameters"
            + (f"; autoencoder from {summary['autoencoder']}" if summary["autoencoder"] else "")
            + ")"
        )
        print(
            "note: reference checkpoints do not include a calm tokenizer; pair the model with the "
            "tokenizer it was trained with (Llama-3 for the published CALM models)",
            file=sys.stderr,
        )
    return 0
