"""``PackedDataset``: one split of a data directory written by ``calm tokenize``, memory-mapped.

Opening a dataset reads only ``index.json``; token shards and document offsets are read-only numpy
memmaps, so many processes (DDP ranks, loader workers) share the page cache instead of copying the
corpus. :meth:`PackedDataset.read` takes any range of the split's token stream, across shard
boundaries. Data directories of format 1 (one ``train.bin``, offsets in ``index.json``) load too.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from calm_core.data.shards import DATA_FORMAT, INDEX_FILE, LEGACY_FORMAT
from calm_core.data.sources import DataError
from calm_core.data.tokenizer import Tokenizer
from calm_core.validation import check_packed_split

__all__ = ["PackedDataset"]


class PackedDataset:
    """Packed token ids of one split (``"train"`` or ``"val"``) of a data directory.

    Attributes:
        tokens: 1-D token ids (``uint16``/``uint32``); each document ends with EOS and is
            PAD-padded to a multiple of ``chunk_size`` (see :attr:`tokens` and :meth:`read`).
        shards: the split's token files, each a read-only memmap.
        vocab_size, chunk_size, eos_id, pad_id, num_documents, num_tokens: from the index.
        doc_offsets: start offset of every document in ``tokens`` (``int64`` array).
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
        if not isinstance(index, dict) or index.get("format") not in (DATA_FORMAT, LEGACY_FORMAT):
            found = index.get("format") if isinstance(index, dict) else type(index).__name__
            raise DataError(
                f"{index_path}: unknown data format {found!r} (expected "
                f"{DATA_FORMAT!r}); re-run `calm tokenize`"
            )
        self.index = index
        try:  # issue 23: a hand-edited index is a DataError naming it, not a KeyError
            files = self._read_index(index, split, index_path)
        except DataError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise DataError(
                f"{index_path}: malformed index ({type(exc).__name__}: {exc}); re-run "
                "`calm tokenize`"
            ) from None
        info = index["splits"][split]
        self.shards: list[np.ndarray] = [self._map(name, n, self._dtype) for name, n in files]
        self._starts = np.cumsum([0] + [len(s) for s in self.shards])
        if self._starts[-1] != self.num_tokens:
            raise DataError(
                f"{index_path}: the shards of split {split!r} hold {self._starts[-1]} tokens, not "
                f"{self.num_tokens}; the data directory is corrupt, re-run `calm tokenize`"
            )
        legacy = index["format"] == LEGACY_FORMAT
        self.doc_offsets: np.ndarray = (
            np.asarray([int(o) for o in info["doc_offsets"]], dtype=np.int64)
            if legacy
            else self._offsets(info)
        )
        # issue 23: index consistency and token ids below the vocabulary, before any use
        check_packed_split(self.shards, self.doc_offsets, index, split, str(self.data_dir))

    def _read_index(
        self, index: dict[str, Any], split: str, index_path: Path
    ) -> list[tuple[str, int]]:
        """Read the split's metadata into attributes; its token files and their lengths."""
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
        if index["format"] == LEGACY_FORMAT:
            files = [(str(info["file"]), self.num_tokens)]
        else:
            files = [(str(s["file"]), int(s["num_tokens"])) for s in info["shards"]]
            files.append((str(info["offsets"]), 0))  # checked like the token files' names
        for name, _ in files:
            if Path(name).name != name or name in ("", ".", ".."):  # a bare name in the dir
                raise DataError(
                    f"{index_path}: split {split!r} names the file {name!r}, which is "
                    "not a file of the data directory; re-run `calm tokenize`"
                )
        return files if index["format"] == LEGACY_FORMAT else files[:-1]

    def _map(self, name: str, num_tokens: int, dtype: np.dtype[Any]) -> np.ndarray:
        path = self.data_dir / name
        expected = num_tokens * dtype.itemsize
        if not path.is_file() or path.stat().st_size != expected:
            size = path.stat().st_size if path.is_file() else "missing"
            raise DataError(
                f"{path}: token file is {size} bytes, expected {expected} from {INDEX_FILE}; the "
                "data directory is incomplete or corrupt, re-run `calm tokenize`"
            )
        return np.memmap(path, dtype=dtype, mode="r", shape=(num_tokens,))

    def _offsets(self, info: dict[str, Any]) -> np.ndarray:
        path = self.data_dir / info["offsets"]
        try:
            offsets: np.ndarray = np.load(path, mmap_mode="r", allow_pickle=False)
            return offsets
        except (OSError, ValueError) as exc:
            raise DataError(
                f"{path}: unreadable document offsets ({exc}); re-run `calm tokenize`"
            ) from None

    @cached_property
    def tokens(self) -> np.ndarray:
        """The split's whole token stream as one 1-D array.

        A memmap when the split is one shard (the usual case below 2**27 tokens); a split of
        several shards is copied into memory here, so large ones are better read with
        :meth:`read` (as :class:`~calm_core.data.BlockLoader` does).
        """
        if len(self.shards) == 1:
            return self.shards[0]
        return self.read(0, self.num_tokens)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Tokens ``[start, stop)`` of the split's stream (a view when inside one shard)."""
        start, stop = max(0, start), min(stop, self.num_tokens)
        if stop <= start:
            return self.shards[0][:0]
        first = int(np.searchsorted(self._starts, start, side="right")) - 1
        base = int(self._starts[first])
        if stop - base <= len(self.shards[first]):
            return self.shards[first][start - base : stop - base]
        parts = []
        pos, shard = start, first
        while pos < stop:
            base = int(self._starts[shard])
            end = min(stop, base + len(self.shards[shard]))
            parts.append(self.shards[shard][pos - base : end - base])
            pos, shard = end, shard + 1
        return np.concatenate(parts)

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
        end = int(self.doc_offsets[i + 1]) if i + 1 < n else self.num_tokens
        return np.asarray(self.read(int(self.doc_offsets[i]), end))

    def __len__(self) -> int:
        return self.num_tokens

    def __repr__(self) -> str:
        return (
            f"PackedDataset({str(self.data_dir)!r}, split={self.split!r}, "
            f"documents={self.num_documents}, tokens={self.num_tokens}, K={self.chunk_size})"
        )
