"""Reading text corpora and packing them into K-aligned token shards (what ``calm tokenize`` does).

On disk a data directory holds, per split, one raw token file (``train.bin``, ``val.bin``; a
numpy memmap of ``uint16`` when the vocab fits, else ``uint32``), the tokenizer
(``tokenizer.json`` + ``tokenizer_config.json``) and ``index.json``: tokenizer metadata, chunk
size K, dtype, counts, and each document's start offset.

What is unusual: every document ends with EOS and is then padded with PAD up to a multiple of K,
so a K-token chunk never spans two documents and every block of a multiple of K tokens starts on
a chunk boundary. The train/validation split is by whole documents, chosen by a seeded
permutation. Input errors (empty input, undecodable bytes, bad JSON, a missing ``text`` field, a
vocab that does not fit the dtype) name the file and line.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from calm_core.data.tokenizer import Tokenizer

__all__ = [
    "DATA_FORMAT",
    "INDEX_FILE",
    "TEXT_SUFFIXES",
    "DataError",
    "Document",
    "PackedSplit",
    "choose_dtype",
    "find_input_files",
    "pack_documents",
    "read_documents",
    "read_jsonl",
    "split_documents",
    "write_data_dir",
]

INDEX_FILE = "index.json"
DATA_FORMAT = "calm-packed-tokens/1"
TEXT_SUFFIXES = (".txt", ".text", ".md")
JSONL_SUFFIXES = (".jsonl",)


class DataError(ValueError):
    """Bad input data; the message names the file (and line) and what to do."""


@dataclass(frozen=True)
class Document:
    """One document's text and where it came from (``file`` or ``file:line``)."""

    text: str
    source: str


@dataclass
class PackedSplit:
    """Packed tokens of one split and each document's start offset within them."""

    tokens: np.ndarray
    doc_offsets: list[int]
    content_tokens: int


def find_input_files(inputs: Sequence[str | Path]) -> list[Path]:
    """Expand directories (recursively, sorted) to their ``.txt``/``.md``/``.jsonl`` files.

    A file named twice (or inside a directory also named) is read once: a repeated document could
    otherwise land in both the training and the validation split.
    """
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(
                f
                for f in p.rglob("*")
                if f.is_file() and (f.suffix.lower() in TEXT_SUFFIXES or _is_jsonl(f))
            )
            if not found:
                raise DataError(
                    f"{p}: empty input: the directory holds no .txt, .text, .md, .jsonl or "
                    ".jsonl.gz files"
                )
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"{p}: input does not exist")
    if not files:
        raise DataError("empty input: no input files given")
    seen: set[Path] = set()
    unique = []
    for f in files:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


def _is_jsonl(path: Path) -> bool:
    name = path.name.lower()
    return path.suffix.lower() in JSONL_SUFFIXES or name.endswith(".jsonl.gz")


def _decode(raw: bytes, path: Path, line_offset: int = 0) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = line_offset + raw.count(b"\n", 0, exc.start) + 1
        col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise DataError(
            f"{path}:{line}: undecodable bytes: byte 0x{raw[exc.start]:02x} at column {col} is "
            "not valid UTF-8; re-encode the file as UTF-8"
        ) from None


def read_jsonl(path: Path) -> Iterator[Document]:
    """Documents of a ``.jsonl`` file (or a gzip-compressed ``.jsonl.gz``), one per line.

    Lines are split at ``\\n`` only: JSON strings may hold U+2028 and other characters that
    :meth:`str.splitlines` would break at.

    Raises:
        DataError: naming the file and line, for bad UTF-8 or JSON, a missing or non-string
            ``text`` field, or text that cannot be written as UTF-8 (lone surrogate escapes).
    """
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            line = _decode(raw, path, lineno - 1).strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: invalid JSON: {exc.msg}") from None
            if not isinstance(record, dict) or "text" not in record:
                keys = sorted(record) if isinstance(record, dict) else type(record).__name__
                raise DataError(
                    f"{path}:{lineno}: missing 'text' field (found {keys}); every line of a "
                    '.jsonl input must be an object like {"text": "..."}'
                )
            text = record["text"]
            if not isinstance(text, str):
                raise DataError(
                    f"{path}:{lineno}: the 'text' field must be a string, got {type(text).__name__}"
                )
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:  # e.g. "\ud800": valid JSON, not valid text
                raise DataError(
                    f"{path}:{lineno}: the 'text' field holds {text[exc.start]!r} at character "
                    f"{exc.start}, which is not valid Unicode text (a lone surrogate escape); "
                    "fix the line"
                ) from None
            yield Document(text, f"{path}:{lineno}")


def read_documents(files: Sequence[Path]) -> list[Document]:
    """Documents of every file: one per ``.jsonl`` line, one per text file; blank ones dropped.

    Raises:
        DataError: an empty file or input, undecodable bytes, bad JSON, or a missing ``text``.
    """
    docs: list[Document] = []
    for path in files:
        if path.stat().st_size == 0:
            raise DataError(f"{path}: empty input: the file is empty")
        if _is_jsonl(path):
            try:
                found = [d for d in read_jsonl(path) if d.text.strip()]
            except (OSError, EOFError) as exc:  # a damaged or mislabelled .gz
                raise DataError(f"{path}: not a readable gzip-compressed file ({exc})") from None
        else:
            text = _decode(path.read_bytes(), path)
            found = [Document(text, str(path))] if text.strip() else []
        if not found:
            raise DataError(f"{path}: empty input: no non-blank documents in the file")
        docs.extend(found)
    return docs


def choose_dtype(vocab_size: int, dtype: str = "auto") -> np.dtype[Any]:
    """``uint16`` when every id fits (vocab <= 65536), else ``uint32``; a forced one is checked."""
    limits = {"uint16": 2**16, "uint32": 2**32}
    if dtype == "auto":
        dtype = "uint16" if vocab_size <= limits["uint16"] else "uint32"
    if dtype not in limits:
        raise DataError(f"unknown token dtype {dtype!r}; choose auto, uint16 or uint32")
    if vocab_size > limits[dtype]:
        raise DataError(
            f"vocab size {vocab_size} does not fit {dtype} (at most {limits[dtype]} ids); "
            "use dtype uint32 or auto"
        )
    return np.dtype(dtype)


def pack_documents(
    token_lists: Sequence[Sequence[int]],
    *,
    chunk_size: int,
    eos_id: int,
    pad_id: int,
    dtype: np.dtype[Any],
) -> PackedSplit:
    """Append EOS to each document, pad it with PAD to a multiple of K, and concatenate."""
    if chunk_size < 1:
        raise DataError(f"chunk size must be >= 1, got {chunk_size}")
    lengths = np.array([len(t) + 1 for t in token_lists], dtype=np.int64)
    padded = -(-lengths // chunk_size) * chunk_size
    offsets = np.concatenate([[0], np.cumsum(padded)]).astype(np.int64)
    out = np.full(int(offsets[-1]), pad_id, dtype=dtype)
    for i, ids in enumerate(token_lists):
        start = int(offsets[i])
        out[start : start + len(ids)] = ids
        out[start + len(ids)] = eos_id
    return PackedSplit(out, [int(o) for o in offsets[:-1]], int(lengths.sum()))


def split_documents(num_docs: int, val_docs: int, seed: int) -> tuple[list[int], list[int]]:
    """Indices of train and validation documents (each kept in corpus order), seeded."""
    if val_docs < 0:
        raise DataError(f"--val-docs must be >= 0, got {val_docs}")
    if val_docs >= num_docs:
        raise DataError(
            f"--val-docs {val_docs} leaves no training documents (the input has {num_docs}); "
            "use a smaller --val-docs"
        )
    perm = np.random.default_rng(seed).permutation(num_docs)
    val = sorted(int(i) for i in perm[:val_docs])
    held = set(val)
    return [i for i in range(num_docs) if i not in held], val


def write_data_dir(
    out_dir: Path,
    docs: Sequence[Document],
    tokenizer: Tokenizer,
    *,
    chunk_size: int,
    val_docs: int,
    seed: int,
    dtype: str = "auto",
    sources: Sequence[Path] = (),
) -> dict[str, Any]:
    """Tokenize, split and pack ``docs`` into ``out_dir``; returns the index written."""
    if not docs:
        raise DataError("empty input: no documents to tokenize")
    np_dtype = choose_dtype(tokenizer.vocab_size, dtype)
    token_lists = tokenizer.encode_batch([d.text for d in docs])
    train_idx, val_idx = split_documents(len(docs), val_docs, seed)
    tokenizer.save(out_dir)
    index: dict[str, Any] = {
        "format": DATA_FORMAT,
        "tokenizer": tokenizer.config(),
        "vocab_size": tokenizer.vocab_size,
        "eos_id": tokenizer.eos_id,
        "pad_id": tokenizer.pad_id,
        "chunk_size": chunk_size,
        "dtype": np_dtype.name,
        "seed": seed,
        "sources": [str(s) for s in sources],
        "splits": {},
    }
    # a split without documents is left out of the index (and gets no file)
    for split, idx in (("train", train_idx), ("val", val_idx)):
        if not idx:
            (out_dir / f"{split}.bin").unlink(missing_ok=True)  # stale, from an overwritten run
            continue
        packed = pack_documents(
            [token_lists[i] for i in idx],
            chunk_size=chunk_size,
            eos_id=tokenizer.eos_id,
            pad_id=tokenizer.pad_id,
            dtype=np_dtype,
        )
        filename = f"{split}.bin"
        tmp = out_dir / f".{filename}.tmp"
        packed.tokens.tofile(tmp)
        tmp.replace(out_dir / filename)
        index["splits"][split] = {
            "file": filename,
            "num_documents": len(idx),
            "num_tokens": len(packed.tokens),
            "content_tokens": packed.content_tokens,
            "doc_offsets": packed.doc_offsets,
            "doc_sources": [docs[i].source for i in idx],
        }
    tmp_index = out_dir / f".{INDEX_FILE}.tmp"
    tmp_index.write_text(json.dumps(index, indent=1) + "\n")
    tmp_index.replace(out_dir / INDEX_FILE)
    return index
