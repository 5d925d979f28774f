"""``calm tokenize``: files, directories, globs or a Hugging Face dataset -> a data directory of
packed, K-aligned token shards, streamed on ``--workers`` processes in bounded memory.

The tokenizer is a byte-level BPE trained on the first ``--tokenizer-sample-bytes`` of the
*training* documents (the validation documents never influence it), an existing local
``tokenizer.json`` (``--tokenizer``), or the dependency-free byte tokenizer (``--byte-level``).
It is saved into the data directory.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterable
from functools import partial
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

HELP = "Tokenize text/.jsonl/.parquet files or a dataset into chunk-aligned token shards."


class TokenizeConfig(ConfigModel):
    """Settings of ``calm tokenize`` (a ``--config`` file may hold any of them)."""

    vocab_size: int = Field(4096, ge=1, description="BPE vocabulary size, PAD and EOS included.")
    chunk_size: int = Field(4, ge=1, description="K: documents are padded to a multiple of K.")
    val_docs: int = Field(0, ge=0, description="Documents held out for validation.")
    seed: int = Field(0, ge=0, description="Seed of the train/validation split.")
    tokenizer: str | None = Field(None, description="Existing tokenizer.json (or its directory).")
    byte_level: bool = Field(False, description="Use the dependency-free byte tokenizer.")
    dtype: Literal["auto", "uint16", "uint32"] = Field("auto", description="Token file dtype.")
    workers: int | None = Field(None, ge=1, description="Tokenizing processes (None: all cores).")
    tokenizer_sample_bytes: int = Field(
        256 * 2**20, ge=1, description="Text (UTF-8 bytes) a BPE is trained on, from the start."
    )
    text_field: str = Field("text", description="Field/column holding the text (.jsonl etc.).")
    shard_tokens: int = Field(2**27, ge=1, description="Tokens per shard file.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "inputs", nargs="*", metavar="INPUT", help=".txt/.md files (one document each), .jsonl, "
        ".jsonl.gz or .jsonl.zst files (one document per line, in a 'text' field), .parquet files "
        "(one per row of the 'text' column), directories or quoted globs of them"
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
    parser.add_argument("--workers", type=int, help="processes that tokenize (default: all cores)")
    parser.add_argument(
        "--tokenizer-sample-bytes", type=int, metavar="N",
        help="train the BPE on the first N bytes of training text (default 256 MiB)",
    )  # fmt: skip
    parser.add_argument(
        "--text-field", metavar="NAME", help="JSON field / parquet column of the text ('text')"
    )
    parser.add_argument("--shard-tokens", type=int, metavar="N", help="tokens per shard (2**27)")
    hf = parser.add_argument_group("Hugging Face datasets (pip install 'calm-core[datasets]')")
    hf.add_argument("--hf-dataset", metavar="NAME", help="stream this dataset instead of INPUTs")
    hf.add_argument("--hf-config", metavar="C", help="the dataset's configuration name")
    hf.add_argument("--hf-split", metavar="S", default="train", help="its split (train)")
    hf.add_argument(
        "--hf-data-files", nargs="+", metavar="FILE", help="data files (with NAME json/parquet)"
    )
    parser.add_argument("--config", metavar="FILE", help="JSON/TOML file with these settings")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    parser.add_argument("--json", action="store_true", help="print a JSON summary on stdout")


def _default_workers() -> int:
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity else os.cpu_count() or 1


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from calm_core.data.packing import (
        DataError,
        DocumentSource,
        choose_dtype,
        count_documents,
        tokenizer_sample,
        val_indices,
        write_data_dir,
    )
    from calm_core.data.sources import Document, find_input_files, hf_documents, iter_documents
    from calm_core.data.tokenizer import Tokenizer, TokenizerError

    overrides = {
        "vocab_size": args.vocab_size,
        "chunk_size": args.chunk_size,
        "val_docs": args.val_docs,
        "seed": args.seed,
        "tokenizer": args.tokenizer,
        "byte_level": args.byte_level,
        "dtype": args.dtype,
        "workers": args.workers,
        "tokenizer_sample_bytes": args.tokenizer_sample_bytes,
        "text_field": args.text_field,
        "shard_tokens": args.shard_tokens,
    }
    cfg = resolve_config(TokenizeConfig, args.config, overrides)
    if cfg.tokenizer and cfg.byte_level:
        raise CLIError("--tokenizer and --byte-level exclude each other; pick one")
    if bool(args.inputs) == bool(args.hf_dataset):
        raise CLIError("give INPUT files/directories or --hf-dataset NAME (one of the two)")
    print_resolved_config("calm tokenize config", cfg)
    t0 = time.perf_counter()
    try:
        source: DocumentSource
        if args.hf_dataset:
            names: list[str] = [f"hf:{args.hf_dataset}"]
            opened = partial(
                hf_documents, args.hf_dataset, config=args.hf_config, split=args.hf_split,
                text_field=cfg.text_field, data_files=args.hf_data_files,
            )  # fmt: skip
            next(iter(opened()), None)  # open it now: a missing extra or dataset fails early
            source = opened
        else:
            files = find_input_files(args.inputs)
            names = [str(f) for f in files]

            def source() -> Iterable[Document]:
                return iter_documents(files, cfg.text_field)

        val = val_indices(count_documents(source), cfg.val_docs, cfg.seed) if cfg.val_docs else None
        if cfg.byte_level:
            tokenizer: Tokenizer = Tokenizer.byte_level()
        elif cfg.tokenizer:
            tokenizer = Tokenizer.load(cfg.tokenizer)
        else:
            choose_dtype(cfg.vocab_size, cfg.dtype)  # refuse before training, not after
            held = val if val is not None else val_indices(1, 0, cfg.seed)
            sample = tokenizer_sample(source, held, cfg.tokenizer_sample_bytes)
            tokenizer = Tokenizer.train_bpe(sample, cfg.vocab_size)
        out = prepare_output_dir(args.out, overwrite=args.overwrite)
        with tqdm(desc="tokenize", unit=" docs", file=sys.stderr, mininterval=1.0) as bar:
            index = write_data_dir(
                out, source, tokenizer, chunk_size=cfg.chunk_size, val_docs=cfg.val_docs,
                seed=cfg.seed, dtype=cfg.dtype, sources=names,
                workers=cfg.workers or _default_workers(), shard_tokens=cfg.shard_tokens,
                val=val, progress=bar.update,
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
        "shards": sum(len(info["shards"]) for info in splits.values()),
        "seconds": round(seconds, 3),
    }
    print(
        f"wrote {out}: {summary['train_documents']} train / {summary['val_documents']} val "
        f"documents, {summary['train_tokens']} / {summary['val_tokens']} tokens in "
        f"{summary['shards']} shards ({index['tokenizer']['kind']} vocab {index['vocab_size']}, "
        f"K={index['chunk_size']}, {index['dtype']}) in {seconds:.1f} s",
        file=sys.stderr,
    )
    if args.json:
        print_json(summary)
    return 0
