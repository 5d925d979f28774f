"""``PackedDataset``: one split of a data directory written by ``calm tokenize``, memory-mapped.

Opening a dataset reads only ``index.json``; the token file is a read-only numpy memmap, so many
processes (DDP ranks, loader workers) share the page cache instead of copying the corpus.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from calm_core.data.packing import DATA_FORMAT, INDEX_FILE, DataError
from calm_core.data.tokenizer import Tokenizer
from calm_core.validation import check_packed_split

__all__ = ["PackedDataset"]


class PackedDataset:
    """Packed token ids of one split (``"train"`` or ``"val"``) of a data directory.

    Attributes:
        tokens: 1-D read-only memmap of token ids (``uint16``/``uint32``); each document ends with
            EOS and is PAD-padded to a multiple of ``chunk_size``.
        vocab_size, chunk_size, eos_id, pad_id, num_documents, num_tokens: from the index.
        doc_offsets: start offset of every document in ``tokens``.
    """

    def __init__(self, data_dir: str | Path, split: str = "train") -> None:
        self.data_dir = Path(data_dir)
        self.split = split
        index_path = self.data_dir / INDEX_FILE
        if not index_path.is_file():
            raise DataError(
                f"{self.data_dir} is not a data directory (no {INDEX_FILE}); create one with "
                f"`calm tokenize INPUT... --out {self.data_dir}`"
            )
        try:
            index: dict[str, Any] = json.loads(index_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            msg = f"{index_path}: invalid JSON ({exc.msg}); re-run `calm tokenize`"
            raise DataError(msg) from None
        if not isinstance(index, dict) or index.get("format") != DATA_FORMAT:
            found = index.get("format") if isinstance(index, dict) else type(index).__name__
            raise DataError(
                f"{index_path}: unknown data format {found!r} (expected "
                f"{DATA_FORMAT!r}); re-run `calm tokenize`"
            )
        self.index = index
        try:  # issue 23: a hand-edited index is a DataError naming it, not a KeyError
            self._read_index(index, split, index_path)
        except DataError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise DataError(
                f"{index_path}: malformed index ({type(exc).__name__}: {exc}); re-run "
                "`calm tokenize`"
            ) from None
        info = index["splits"][split]
        path = self.data_dir / str(info["file"])
        dtype = self._dtype
        expected = self.num_tokens * dtype.itemsize
        if not path.is_file() or path.stat().st_size != expected:
            size = path.stat().st_size if path.is_file() else "missing"
            raise DataError(
                f"{path}: token file is {size} bytes, expected {expected} from {INDEX_FILE}; the "
                "data directory is incomplete or corrupt, re-run `calm tokenize`"
            )
        self.tokens: np.ndarray = np.memmap(path, dtype=dtype, mode="r", shape=(self.num_tokens,))
        # issue 23: index consistency and token ids below the vocabulary, before any use
        check_packed_split(self.tokens, index, split, str(self.data_dir))

    def _read_index(self, index: dict[str, Any], split: str, index_path: Path) -> None:
        splits = index["splits"]
        if split not in splits:
            hint = "; re-run `calm tokenize` with --val-docs N to hold documents out" * (
                split == "val"
            )
            raise DataError(
                f"{self.data_dir} has no split {split!r} (has: {', '.join(splits)}){hint}"
            )
        info = splits[split]
        self.vocab_size: int = int(index["vocab_size"])
        self.chunk_size: int = int(index["chunk_size"])
        self.eos_id: int = int(index["eos_id"])
        self.pad_id: int = int(index["pad_id"])
        self.num_documents: int = int(info["num_documents"])
        self.num_tokens: int = int(info["num_tokens"])
        self.doc_offsets: list[int] = [int(o) for o in info["doc_offsets"]]
        if self.num_tokens == 0:
            hint = " with --val-docs N" if split == "val" else ""
            raise DataError(
                f"split {split!r} of {self.data_dir} is empty; re-run `calm tokenize`{hint}"
            )
        self._dtype = np.dtype(index["dtype"])
        if self._dtype.kind != "u":
            raise DataError(
                f"{index_path}: token dtype {self._dtype} is not an unsigned integer type; "
                "re-run `calm tokenize`"
            )
        name = str(info["file"])
        if Path(name).name != name or name in ("", ".", ".."):  # a bare name in the directory
            raise DataError(
                f"{index_path}: split {split!r} names the token file {name!r}, which is "
                "not a file of the data directory; re-run `calm tokenize`"
            )

    @cached_property
    def tokenizer(self) -> Tokenizer:
        """The tokenizer saved next to the data."""
        return Tokenizer.load(self.data_dir)

    def document(self, i: int) -> np.ndarray:
        """Tokens of document ``i`` (negative counts from the end), with its EOS and padding."""
        n = self.num_documents
        if not -n <= i < n:
            raise IndexError(f"document {i} out of range: the split holds {n} documents")
        i %= n
        end = self.doc_offsets[i + 1] if i + 1 < n else self.num_tokens
        return np.asarray(self.tokens[self.doc_offsets[i] : end])

    def __len__(self) -> int:
        return self.num_tokens

    def __repr__(self) -> str:
        return (
            f"PackedDataset({str(self.data_dir)!r}, split={self.split!r}, "
            f"documents={self.num_documents}, tokens={self.num_tokens}, K={self.chunk_size})"
        )
