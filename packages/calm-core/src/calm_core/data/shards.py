"""The on-disk token layout: K-aligned packing, fixed-size token shards and binary offsets.

A data directory holds, per split, token shards ``train-00000.bin``, ``train-00001.bin``, ... (raw
``uint16`` when the vocab fits, else ``uint32``; every shard but the last holds exactly
``shard_tokens`` tokens, so a document may continue in the next shard), the start offset of every
document in ``train.offsets.npy`` (``int64``, into the split's token stream), the tokenizer and a
small ``index.json`` (format, tokenizer metadata, K, dtype, counts, shard list).

What is unusual: every document ends with EOS and is then padded with PAD up to a multiple of K,
so a K-token chunk never spans two documents. :class:`ShardWriter` appends documents as they
come and holds only the current batch in memory; files are written under temporary names and
renamed when the split is complete, so a crash never leaves a torn data directory. Format 1 (one
``train.bin`` per split, offsets inside ``index.json``) is still read.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from calm_core.data.sources import DataError

__all__ = [
    "DATA_FORMAT",
    "DEFAULT_SHARD_TOKENS",
    "INDEX_FILE",
    "LEGACY_FORMAT",
    "PackedSplit",
    "ShardWriter",
    "choose_dtype",
    "pack_documents",
]

INDEX_FILE = "index.json"
DATA_FORMAT = "calm-packed-tokens/2"
#: one token file per split, offsets in index.json (calm-core 0.1)
LEGACY_FORMAT = "calm-packed-tokens/1"
#: tokens per shard file (256 MiB of uint16): large enough for few files, small enough to copy
DEFAULT_SHARD_TOKENS = 2**27


@dataclass
class PackedSplit:
    """Packed tokens of some documents and each document's start offset within them."""

    tokens: np.ndarray
    doc_offsets: list[int]
    content_tokens: int


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
    lengths = np.fromiter((len(t) + 1 for t in token_lists), np.int64, len(token_lists))
    padded = -(-lengths // chunk_size) * chunk_size
    offsets = np.zeros(len(token_lists) + 1, dtype=np.int64)
    np.cumsum(padded, out=offsets[1:])
    out = np.full(int(offsets[-1]), pad_id, dtype=dtype)
    for start, ids in zip(offsets.tolist(), token_lists, strict=False):
        out[start : start + len(ids)] = ids
        out[start + len(ids)] = eos_id
    return PackedSplit(out, offsets[:-1].tolist(), int(lengths.sum()))


def shard_name(split: str, number: int) -> str:
    return f"{split}-{number:05d}.bin"


def offsets_name(split: str) -> str:
    return f"{split}.offsets.npy"


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp")


class ShardWriter:
    """Appends packed documents of one split to fixed-size shards; :meth:`close` publishes them.

    Args:
        out_dir: the data directory.
        split: ``"train"`` or ``"val"``.
        dtype: token dtype.
        shard_tokens: tokens per shard (every shard but the last is full).
    """

    def __init__(self, out_dir: Path, split: str, dtype: np.dtype[Any], shard_tokens: int) -> None:
        if shard_tokens < 1:
            raise DataError(f"shard size must be >= 1 token, got {shard_tokens}")
        self.out_dir, self.split, self.dtype = out_dir, split, dtype
        self.shard_tokens = shard_tokens
        self.num_tokens = 0
        self.num_documents = 0
        self.content_tokens = 0
        self.shards: list[int] = []  # tokens in each shard written so far
        self._shard: IO[bytes] | None = None
        self._offsets = open(out_dir / f".{split}.offsets.raw", "wb")  # noqa: SIM115 (closed in close)

    def add(self, tokens: np.ndarray, doc_lengths: np.ndarray, content_tokens: int) -> None:
        """Append packed ``tokens`` holding documents of (padded) ``doc_lengths``."""
        starts = self.num_tokens + np.concatenate([[0], np.cumsum(doc_lengths)[:-1]])
        self._offsets.write(np.ascontiguousarray(starts, dtype=np.int64).data)
        self.num_documents += len(doc_lengths)
        self.content_tokens += content_tokens
        data = np.ascontiguousarray(tokens, dtype=self.dtype)
        pos = 0
        while pos < len(data):
            if self._shard is None or self.shards[-1] == self.shard_tokens:
                self._next_shard()
            assert self._shard is not None
            take = min(len(data) - pos, self.shard_tokens - self.shards[-1])
            self._shard.write(data[pos : pos + take].data)  # a view: no copy of the tokens
            self.shards[-1] += take
            pos += take
        self.num_tokens += len(data)

    def _next_shard(self) -> None:
        if self._shard is not None:
            self._shard.close()
        path = _tmp(self.out_dir / shard_name(self.split, len(self.shards)))
        self._shard = open(path, "wb")  # noqa: SIM115 (closed by the next shard or close)
        self.shards.append(0)

    def close(self) -> dict[str, Any] | None:
        """Publish the split's files; its index entry, or None (and no files) when it is empty."""
        if self._shard is not None:
            self._shard.close()
        self._offsets.close()
        raw = Path(self._offsets.name)
        if self.num_documents == 0:
            raw.unlink()
            return None
        # the .npy header needs the count, known only now: header, then the raw offsets copied
        final = self.out_dir / offsets_name(self.split)
        with open(_tmp(final), "wb") as out, open(raw, "rb") as src:
            header = {"descr": "<i8", "fortran_order": False, "shape": (self.num_documents,)}
            np.lib.format.write_array_header_1_0(out, header)
            shutil.copyfileobj(src, out, 1 << 20)
        raw.unlink()
        _tmp(final).replace(final)
        for i in range(len(self.shards)):
            path = self.out_dir / shard_name(self.split, i)
            _tmp(path).replace(path)
        return {
            "shards": [
                {"file": shard_name(self.split, i), "num_tokens": n}
                for i, n in enumerate(self.shards)
            ],
            "offsets": offsets_name(self.split),
            "num_documents": self.num_documents,
            "num_tokens": self.num_tokens,
            "content_tokens": self.content_tokens,
        }

    def abort(self) -> None:
        """Remove the temporary files (after an error)."""
        for fh in (self._shard, self._offsets):
            if fh is not None:
                fh.close()
        Path(self._offsets.name).unlink(missing_ok=True)
        for i in range(len(self.shards)):
            _tmp(self.out_dir / shard_name(self.split, i)).unlink(missing_ok=True)


def remove_split_files(out_dir: Path, split: str) -> None:
    """Delete a split's files from an earlier run (any format), before writing new ones."""
    for path in (out_dir / f"{split}.bin", out_dir / offsets_name(split)):
        path.unlink(missing_ok=True)
    for path in out_dir.glob(f"{split}-[0-9][0-9][0-9][0-9][0-9].bin"):
        path.unlink()
