"""Where documents come from: local files, directories and globs, or a Hugging Face dataset.

Every reader is a generator, so a corpus larger than memory is read one document at a time.
Formats: ``.txt``/``.text``/``.md`` (one document per file), ``.jsonl`` (optionally ``.gz`` or
``.zst``; one document per line, in a ``text_field``), ``.parquet`` (one document per row of the
``text_field`` column), and with ``calm-core[datasets]`` any ``datasets`` dataset, streamed.

What is unusual: the optional readers (zstandard, pyarrow, datasets) are imported only when an
input needs them, and a missing one is reported before any work starts, naming the extra to
install. Input errors (empty input, undecodable bytes, bad JSON, a missing text field) name the
file and line.
"""

from __future__ import annotations

import glob
import gzip
import io
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = [
    "DEFAULT_TEXT_FIELD",
    "TEXT_SUFFIXES",
    "DataError",
    "Document",
    "find_input_files",
    "hf_documents",
    "iter_documents",
    "read_documents",
    "read_jsonl",
    "read_parquet",
    "require_extra",
]

TEXT_SUFFIXES = (".txt", ".text", ".md")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst")
PARQUET_SUFFIXES = (".parquet",)
DEFAULT_TEXT_FIELD = "text"
_EXTRA_OF = {"zstandard": "zstd", "pyarrow": "parquet", "datasets": "datasets"}
_PARQUET_BATCH_ROWS = 1024


class DataError(ValueError):
    """Bad input data; the message names the file (and line) and what to do."""


@dataclass(frozen=True)
class Document:
    """One document's text and where it came from (``file`` or ``file:line``)."""

    text: str
    source: str


def require_extra(module: str) -> ModuleType:
    """Import an optional reader, or say which calm-core extra provides it."""
    try:
        return import_module(module)
    except ImportError:
        extra = _EXTRA_OF[module]
        raise DataError(
            f"reading this input needs the {module!r} package; install it with "
            f"pip install 'calm-core[{extra}]'"
        ) from None


def _kind(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if path.suffix.lower() in TEXT_SUFFIXES:
        return "text"
    return None


def find_input_files(inputs: Sequence[str | Path]) -> list[Path]:
    """Expand directories (recursively, sorted) and globs to their readable files.

    A file named twice (or inside a directory also named) is read once: a repeated document could
    otherwise land in both the training and the validation split. The optional packages the
    files need are checked here, before any work starts.
    """
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and _kind(f))
            if not found:
                raise DataError(
                    f"{p}: empty input: the directory holds no .txt, .text, .md, .jsonl, "
                    ".jsonl.gz, .jsonl.zst or .parquet files"
                )
            files.extend(found)
        elif p.is_file():
            files.append(p)
        elif glob.has_magic(str(item)):
            matched = sorted(Path(m) for m in glob.glob(str(item), recursive=True))
            matched = [m for m in matched if m.is_file() and _kind(m)]
            if not matched:
                raise DataError(f"{item}: the pattern matches no readable input files")
            files.extend(matched)
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
    for f in unique:
        if f.name.lower().endswith(".zst"):
            require_extra("zstandard")
        elif _kind(f) == "parquet":
            require_extra("pyarrow")
    return unique


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


def _check_text(value: Any, where: str, field: str) -> str:
    if not isinstance(value, str):
        raise DataError(
            f"{where}: the {field!r} field must be a string, got {type(value).__name__}"
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:  # e.g. "\ud800": valid JSON, not valid text
        raise DataError(
            f"{where}: the {field!r} field holds {value[exc.start]!r} at character {exc.start}, "
            "which is not valid Unicode text (a lone surrogate escape); fix the line"
        ) from None
    return value


def _open_binary(path: Path) -> io.BufferedIOBase:
    name = path.name.lower()
    if name.endswith(".gz"):
        return gzip.open(path, "rb")
    if name.endswith(".zst"):
        zstd = require_extra("zstandard")
        # the zstd reader has no readline: a BufferedReader on top gives line iteration
        raw = open(path, "rb")  # noqa: SIM115 (the reader closes it)
        reader = zstd.ZstdDecompressor().stream_reader(raw, closefd=True)
        return io.BufferedReader(reader)
    return open(path, "rb")


def read_jsonl(path: Path, text_field: str = DEFAULT_TEXT_FIELD) -> Iterator[Document]:
    """Documents of a ``.jsonl`` file (optionally ``.gz``/``.zst`` compressed), one per line.

    Lines are split at ``\\n`` only: JSON strings may hold U+2028 and other characters that
    :meth:`str.splitlines` would break at.

    Raises:
        DataError: naming the file and line, for bad UTF-8 or JSON, a missing or non-string
            text field, or text that cannot be written as UTF-8 (lone surrogate escapes).
    """
    with _open_binary(path) as fh:
        for lineno, raw in enumerate(fh, start=1):
            line = _decode(raw, path, lineno - 1).strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: invalid JSON: {exc.msg}") from None
            if not isinstance(record, dict) or text_field not in record:
                keys = sorted(record) if isinstance(record, dict) else type(record).__name__
                raise DataError(
                    f"{path}:{lineno}: missing {text_field!r} field (found {keys}); every line of "
                    f'a .jsonl input must be an object like {{"{text_field}": "..."}} '
                    "(or pass --text-field NAME)"
                )
            text = _check_text(record[text_field], f"{path}:{lineno}", text_field)
            yield Document(text, f"{path}:{lineno}")


def read_parquet(path: Path, text_field: str = DEFAULT_TEXT_FIELD) -> Iterator[Document]:
    """Documents of a ``.parquet`` file, one per row of the ``text_field`` column, in batches."""
    pq = _parquet()
    try:
        pfile = pq.ParquetFile(str(path))
    except Exception as exc:  # pyarrow raises its own ArrowInvalid for a non-parquet file
        raise DataError(f"{path}: not a readable parquet file ({exc})") from None
    names = pfile.schema_arrow.names
    if text_field not in names:
        raise DataError(
            f"{path}: no column {text_field!r} (columns: {', '.join(names)}); "
            "pass --text-field NAME"
        )
    row = 0
    for batch in pfile.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=[text_field]):
        for value in batch.column(0).to_pylist():
            row += 1
            if value is None:
                continue
            yield Document(_check_text(value, f"{path}:row {row}", text_field), f"{path}:{row}")


def _parquet() -> Any:
    require_extra("pyarrow")
    return import_module("pyarrow.parquet")


def _file_documents(path: Path, text_field: str) -> Iterator[Document]:
    kind = _kind(path)
    if kind == "jsonl":
        try:
            yield from read_jsonl(path, text_field)
        except (OSError, EOFError) as exc:  # a damaged or mislabelled compressed file
            kind = "zstd" if path.name.lower().endswith(".zst") else "gzip"
            raise DataError(f"{path}: not a readable {kind}-compressed file ({exc})") from None
        except Exception as exc:
            if type(exc).__module__.startswith("zstd"):
                raise DataError(f"{path}: not a readable zstd-compressed file ({exc})") from None
            raise
    elif kind == "parquet":
        yield from read_parquet(path, text_field)
    else:
        text = _decode(path.read_bytes(), path)
        yield Document(text, str(path))


def iter_documents(
    files: Iterable[Path], text_field: str = DEFAULT_TEXT_FIELD
) -> Iterator[Document]:
    """Documents of every file, lazily: blank ones dropped, a file without any refused.

    Raises:
        DataError: an empty file or input, undecodable bytes, bad JSON, or a missing text field.
    """
    for path in files:
        if path.stat().st_size == 0:
            raise DataError(f"{path}: empty input: the file is empty")
        found = False
        for doc in _file_documents(path, text_field):
            if doc.text.strip():
                found = True
                yield doc
        if not found:
            raise DataError(f"{path}: empty input: no non-blank documents in the file")


def read_documents(files: Sequence[Path], text_field: str = DEFAULT_TEXT_FIELD) -> list[Document]:
    """All documents of ``files`` as a list (small corpora; use :func:`iter_documents` else)."""
    return list(iter_documents(files, text_field))


def hf_documents(
    name: str,
    *,
    config: str | None = None,
    split: str = "train",
    text_field: str = DEFAULT_TEXT_FIELD,
    data_files: Sequence[str] | None = None,
) -> Iterator[Document]:
    """Documents of a Hugging Face ``datasets`` dataset, streamed (``calm-core[datasets]``).

    ``name`` is a Hub dataset id, a local dataset directory, or a builder such as ``"json"`` or
    ``"parquet"`` with ``data_files``. Rows whose text is blank are dropped.
    """
    datasets = require_extra("datasets")
    try:
        ds = datasets.load_dataset(
            name, config, split=split, streaming=True, data_files=list(data_files or []) or None
        )
    except Exception as exc:  # datasets raises many types (FileNotFoundError, ValueError, ...)
        raise DataError(f"cannot open dataset {name!r} (split {split!r}): {exc}") from None
    columns = getattr(ds, "column_names", None)
    if columns is not None and text_field not in columns:
        raise DataError(
            f"dataset {name!r} has no column {text_field!r} (columns: {', '.join(columns)}); "
            "pass --text-field NAME"
        )
    for row, record in enumerate(ds, start=1):
        where = f"{name}[{split}]:{row}"
        if text_field not in record:
            raise DataError(f"{where}: missing {text_field!r} field; pass --text-field NAME")
        text = _check_text(record[text_field], where, text_field)
        if text.strip():
            yield Document(text, where)
