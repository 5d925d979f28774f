"""``calm tokenize``: text / ``.jsonl`` files or directories -> a packed, K-aligned data directory.

The tokenizer is a byte-level BPE trained on the *training* documents only (the validation
documents never influence it), an existing local ``tokenizer.json`` (``--tokenizer``), or the
dependency-free byte tokenizer (``--byte-level``). It is saved into the data directory.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Literal

from pydantic import Field

from calm_core.cli.common import (
    CLIError,
    prepare_output_dir,
    print_json,
    print_resolved_config,
    resolve_config,
)
from calm_core.config import ConfigModel

__all__ = ["HELP", "TokenizeConfig", "add_arguments", "run"]

HELP = "Tokenize text/.jsonl files into packed, chunk-aligned token shards with a train/val split."


class TokenizeConfig(ConfigModel):
    """Settings of ``calm tokenize`` (a ``--config`` file may hold any of them)."""

    vocab_size: int = Field(4096, ge=1, description="BPE vocabulary size, PAD and EOS included.")
    chunk_size: int = Field(4, ge=1, description="K: documents are padded to a multiple of K.")
    val_docs: int = Field(0, ge=0, description="Documents held out for validation.")
    seed: int = Field(0, ge=0, description="Seed of the train/validation split.")
    tokenizer: str | None = Field(None, description="Existing tokenizer.json (or its directory).")
    byte_level: bool = Field(False, description="Use the dependency-free byte tokenizer.")
    dtype: Literal["auto", "uint16", "uint32"] = Field("auto", description="Token file dtype.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "inputs", nargs="+", metavar="INPUT", help=".txt/.md files (one document each), .jsonl "
        "or .jsonl.gz files (one document per line, in a 'text' field), or directories of them"
    )  # fmt: skip
    parser.add_argument("--out", required=True, metavar="DATA_DIR", help="output data directory")
    parser.add_argument("--vocab-size", type=int, help="BPE vocabulary size (default 4096)")
    parser.add_argument("--chunk-size", type=int, help="K, the chunk size to align to (default 4)")
    parser.add_argument("--val-docs", type=int, help="documents held out for validation (0)")
    parser.add_argument("--seed", type=int, help="seed of the train/validation split (0)")
    parser.add_argument(
        "--tokenizer", metavar="PATH", help="use this local tokenizer.json instead of training one"
    )
    parser.add_argument(
        "--byte-level", action="store_true", default=None,
        help="use the dependency-free byte tokenizer (258 ids) instead of BPE",
    )  # fmt: skip
    parser.add_argument(
        "--dtype",
        choices=["auto", "uint16", "uint32"],
        help="token dtype (auto: uint16 if ids fit)",
    )
    parser.add_argument("--config", metavar="FILE", help="JSON/TOML file with these settings")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    parser.add_argument("--json", action="store_true", help="print a JSON summary on stdout")


def run(args: argparse.Namespace) -> int:
    from calm_core.data.packing import (
        DataError,
        choose_dtype,
        find_input_files,
        read_documents,
        split_documents,
        write_data_dir,
    )
    from calm_core.data.tokenizer import Tokenizer, TokenizerError

    overrides = {
        "vocab_size": args.vocab_size,
        "chunk_size": args.chunk_size,
        "val_docs": args.val_docs,
        "seed": args.seed,
        "tokenizer": args.tokenizer,
        "byte_level": args.byte_level,
        "dtype": args.dtype,
    }
    cfg = resolve_config(TokenizeConfig, args.config, overrides)
    if cfg.tokenizer and cfg.byte_level:
        raise CLIError("--tokenizer and --byte-level exclude each other; pick one")
    print_resolved_config("calm tokenize config", cfg)
    t0 = time.perf_counter()
    try:
        files = find_input_files(args.inputs)
        docs = read_documents(files)
        train_idx, _ = split_documents(len(docs), cfg.val_docs, cfg.seed)
        if cfg.byte_level:
            tokenizer: Tokenizer = Tokenizer.byte_level()
        elif cfg.tokenizer:
            tokenizer = Tokenizer.load(cfg.tokenizer)
        else:
            choose_dtype(cfg.vocab_size, cfg.dtype)  # refuse before training, not after
            tokenizer = Tokenizer.train_bpe((docs[i].text for i in train_idx), cfg.vocab_size)
        out = prepare_output_dir(args.out, overwrite=args.overwrite)
        index = write_data_dir(
            out, docs, tokenizer, chunk_size=cfg.chunk_size, val_docs=cfg.val_docs,
            seed=cfg.seed, dtype=cfg.dtype, sources=files,
        )  # fmt: skip
    except (DataError, TokenizerError) as exc:
        raise CLIError(str(exc)) from None
    seconds = time.perf_counter() - t0
    splits = index["splits"]
    summary = {
        "out": str(out),
        "tokenizer": index["tokenizer"]["kind"],
        "vocab_size": index["vocab_size"],
        "chunk_size": index["chunk_size"],
        "dtype": index["dtype"],
        **{f"{s}_documents": splits.get(s, {}).get("num_documents", 0) for s in ("train", "val")},
        **{f"{s}_tokens": splits.get(s, {}).get("num_tokens", 0) for s in ("train", "val")},
        "seconds": round(seconds, 3),
    }
    print(
        f"wrote {out}: {summary['train_documents']} train / {summary['val_documents']} val "
        f"documents, {summary['train_tokens']} / {summary['val_tokens']} tokens "
        f"({index['tokenizer']['kind']} vocab {index['vocab_size']}, K={index['chunk_size']}, "
        f"{index['dtype']}) in {seconds:.1f} s",
        file=sys.stderr,
    )
    if args.json:
        print_json(summary)
    return 0
