"""The streaming tokenize-and-pack pipeline (what ``calm tokenize`` runs): documents in, token
shards out, in memory that does not grow with the corpus.

Documents are read lazily, grouped into batches of about a MiB of text, tokenized and packed
(EOS, PAD to a multiple of K) on ``workers`` processes that each load the tokenizer once, and
appended in corpus order to the split's fixed-size shards (:mod:`calm_core.data.shards`). At most
two batches per worker are in flight, so a slow disk or a fast reader cannot pile up text.

What is unusual: the train/validation split is by whole documents and chosen without shuffling
the corpus: document ``i`` gets the key ``splitmix64(i ^ mix(seed))`` and the ``val_docs``
documents with the smallest keys are held out. Choosing them needs only the number of documents
(one counting pass, made only when ``val_docs > 0``) and memory for ``val_docs`` indices, and the
result depends on nothing but the inputs and the seed, so any worker count writes the same bytes.
"""

from __future__ import annotations

import gc
import json
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from multiprocessing import get_all_start_methods, get_context
from multiprocessing.pool import Pool
from pathlib import Path
from typing import Any

import numpy as np

from calm_core.data.shards import (
    DATA_FORMAT,
    DEFAULT_SHARD_TOKENS,
    INDEX_FILE,
    PackedSplit,
    ShardWriter,
    choose_dtype,
    pack_documents,
    remove_split_files,
)
from calm_core.data.sources import (
    TEXT_SUFFIXES,
    DataError,
    Document,
    find_input_files,
    read_documents,
    read_jsonl,
)
from calm_core.data.tokenizer import TOKENIZER_CONFIG_FILE, TOKENIZER_FILE, Tokenizer

__all__ = [
    "DATA_FORMAT",
    "INDEX_FILE",
    "TEXT_SUFFIXES",
    "DataError",
    "Document",
    "DocumentSource",
    "PackedSplit",
    "choose_dtype",
    "count_documents",
    "find_input_files",
    "pack_documents",
    "read_documents",
    "read_jsonl",
    "split_documents",
    "tokenizer_sample",
    "val_indices",
    "write_data_dir",
]

#: documents, re-readable: a sequence, or a function returning a fresh iterable on every call
DocumentSource = Sequence[Document] | Callable[[], Iterable[Document]]

_BATCH_CHARS = 1 << 20  # text per task: big enough to amortise the hand-off, small in memory
_BATCH_DOCS = 4096
_KEY_BLOCK = 1 << 15  # document indices hashed at a time when choosing the validation set
_M1, _M2, _GOLDEN = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB), 0x9E3779B97F4A7C15


def _open(source: DocumentSource) -> Iterable[Document]:
    return source() if callable(source) else source


def _mix(z: np.ndarray) -> np.ndarray:
    # splitmix64's finaliser: a bijection of uint64 that scatters neighbouring indices
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        out: np.ndarray = z ^ (z >> np.uint64(31))
        return out


def val_indices(num_docs: int, val_docs: int, seed: int) -> np.ndarray:
    """Sorted indices of the ``val_docs`` documents held out for validation (seeded).

    Raises:
        DataError: ``val_docs`` is negative or leaves no training documents.
    """
    if val_docs < 0:
        raise DataError(f"--val-docs must be >= 0, got {val_docs}")
    if val_docs >= num_docs:
        raise DataError(
            f"--val-docs {val_docs} leaves no training documents (the input has {num_docs}); "
            "use a smaller --val-docs"
        )
    if val_docs == 0:
        return np.zeros(0, dtype=np.int64)
    salt = _mix(np.array([seed + _GOLDEN], dtype=np.uint64))[0]
    best_keys = np.zeros(0, dtype=np.uint64)
    best_idx = np.zeros(0, dtype=np.int64)
    for start in range(0, num_docs, _KEY_BLOCK):
        idx = np.arange(start, min(num_docs, start + _KEY_BLOCK), dtype=np.int64)
        keys = np.concatenate([best_keys, _mix(idx.astype(np.uint64) ^ salt)])
        idx = np.concatenate([best_idx, idx])
        order = np.lexsort((idx, keys))[:val_docs]  # ties (never seen) broken by index
        best_keys, best_idx = keys[order], idx[order]
    return np.sort(best_idx)


def split_documents(num_docs: int, val_docs: int, seed: int) -> tuple[list[int], list[int]]:
    """Indices of train and validation documents (each in corpus order), seeded.

    Lists of every index: for corpora that fit in memory; the pipeline uses :func:`val_indices`.
    """
    val = val_indices(num_docs, val_docs, seed).tolist()
    held = set(val)
    return [i for i in range(num_docs) if i not in held], val


def count_documents(source: DocumentSource) -> int:
    """Number of documents in ``source`` (reads it once, keeping nothing)."""
    if isinstance(source, Sequence):
        return len(source)
    return sum(1 for _ in _open(source))


def tokenizer_sample(source: DocumentSource, val: np.ndarray, max_bytes: int) -> Iterator[str]:
    """Texts of the first training documents, up to ``max_bytes`` of UTF-8 (at least one).

    What a BPE is trained on: validation documents never influence the tokenizer.
    """
    held = set(val.tolist())
    total = 0
    for i, doc in enumerate(_open(source)):
        if i in held:
            continue
        size = len(doc.text.encode("utf-8"))
        if total and total + size > max_bytes:
            return
        total += size
        yield doc.text


Packed = tuple[np.ndarray, np.ndarray, int]
_worker_tokenizer: Tokenizer | None = None


def _encode_pack(
    tokenizer: Tokenizer, texts: list[str], is_val: list[bool], k: int, dtype: np.dtype[Any]
) -> tuple[Packed | None, Packed | None]:
    ids = tokenizer.encode_batch(texts)
    out: list[Packed | None] = []
    for want in (False, True):
        mine = [t for t, v in zip(ids, is_val, strict=True) if v is want]
        if not mine:
            out.append(None)
            continue
        packed = pack_documents(
            mine, chunk_size=k, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id, dtype=dtype
        )
        lengths = np.diff(np.append(packed.doc_offsets, len(packed.tokens)))
        out.append((packed.tokens, lengths, packed.content_tokens))
    return out[0], out[1]


def _worker_init(tokenizer_dir: str) -> None:
    # each worker is one core: the tokenizers library's own thread pool would oversubscribe
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    global _worker_tokenizer
    _worker_tokenizer = Tokenizer.load(tokenizer_dir)


def _worker_task(
    texts: list[str], is_val: list[bool], k: int, dtype: str
) -> tuple[Packed | None, Packed | None]:
    assert _worker_tokenizer is not None, "worker started without its tokenizer"
    return _encode_pack(_worker_tokenizer, texts, is_val, k, np.dtype(dtype))


def _start_pool(workers: int, tokenizer_dir: Path) -> Pool:
    # fork where there is one: spawn would re-run a caller's script that lacks a __main__ guard.
    # The workers never touch torch or the parent's tokenizer, only the copy they load; the env
    # variable keeps `tokenizers` from warning about its thread pool in the forked children.
    method = "fork" if "fork" in get_all_start_methods() else "spawn"
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        return get_context(method).Pool(workers, _worker_init, (str(tokenizer_dir),))
    finally:
        if before is None:
            del os.environ["TOKENIZERS_PARALLELISM"]
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = before


def _batches(
    source: DocumentSource, val: np.ndarray, val_sources: list[str]
) -> Iterator[tuple[list[str], list[bool]]]:
    held = val.tolist()
    next_val = 0  # position in the sorted held-out indices: a set would be as big, no faster
    texts: list[str] = []
    flags: list[bool] = []
    chars = 0
    for i, doc in enumerate(_open(source)):
        is_val = next_val < len(held) and held[next_val] == i
        if is_val:
            next_val += 1
            val_sources.append(doc.source)
        texts.append(doc.text)
        flags.append(is_val)
        chars += len(doc.text)
        if chars >= _BATCH_CHARS or len(texts) >= _BATCH_DOCS:
            yield texts, flags
            texts, flags, chars = [], [], 0
    if texts:
        yield texts, flags


def write_data_dir(
    out_dir: Path,
    docs: DocumentSource,
    tokenizer: Tokenizer,
    *,
    chunk_size: int,
    val_docs: int,
    seed: int,
    dtype: str = "auto",
    sources: Sequence[str | Path] = (),
    workers: int = 1,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    val: np.ndarray | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Tokenize, split and pack ``docs`` into shards in ``out_dir``; returns the index written.

    Args:
        docs: the documents; a function returning a fresh iterable is read lazily (twice when
            ``val_docs > 0``: once to count).
        workers: processes that tokenize (1: a thread of this process, which any tokenizer
            allows; more need one that :meth:`Tokenizer.load` reads back from ``out_dir``,
            i.e. a built-in one).
        shard_tokens: tokens per shard file.
        val: the held-out indices, when already chosen with :func:`val_indices`.
        progress: called with the number of documents of every batch written.
    """
    if chunk_size < 1:
        raise DataError(f"chunk size must be >= 1, got {chunk_size}")
    if workers < 1:
        raise DataError(f"--workers must be >= 1, got {workers}")
    np_dtype = choose_dtype(tokenizer.vocab_size, dtype)
    if val is None:
        val = val_indices(count_documents(docs), val_docs, seed) if val_docs else np.zeros(0)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save(out_dir)
    if workers > 1 and type(Tokenizer.load(out_dir)) is not type(tokenizer):
        # the workers load what was saved: a subclass would come back as its base class
        raise DataError(
            f"workers={workers} needs a tokenizer that loads back from its files (BPETokenizer "
            f"or ByteTokenizer), not {type(tokenizer).__name__}; use workers=1"
        )
    writers = {s: ShardWriter(out_dir, s, np_dtype, shard_tokens) for s in ("train", "val")}
    val_sources: list[str] = []
    pool: Pool | None = None
    # one worker: a thread encodes (the tokenizers library releases the GIL and may use several
    # cores itself) while this thread reads the next batch and writes the previous one
    thread = ThreadPoolExecutor(1) if workers == 1 else None
    try:
        if workers > 1:
            # frozen objects are skipped by the garbage collector, here and in the forked
            # workers: a full collection writes into every object, which copies each page
            # shared since the fork, and memory would grow with the corpus as pages un-share
            gc.freeze()
            pool = _start_pool(workers, out_dir)

        def consume(result: tuple[Packed | None, Packed | None]) -> None:
            for split, packed in zip(("train", "val"), result, strict=True):
                if packed is not None:
                    writers[split].add(*packed)
            if progress is not None:
                progress(sum(len(p[1]) for p in result if p is not None))

        pending: deque[Callable[[], tuple[Packed | None, Packed | None]]] = deque()
        for texts, flags in _batches(docs, val, val_sources):
            if thread is not None:
                job = (tokenizer, texts, flags, chunk_size, np_dtype)
                pending.append(thread.submit(_encode_pack, *job).result)
            else:
                assert pool is not None
                args = (texts, flags, chunk_size, np_dtype.name)
                pending.append(pool.apply_async(_worker_task, args).get)
            if len(pending) >= 2 * workers:
                consume(pending.popleft()())
        while pending:
            consume(pending.popleft()())
    except BaseException:
        for w in writers.values():
            w.abort()
        if not (out_dir / INDEX_FILE).exists():  # a new directory is left as it was: empty
            for name in (TOKENIZER_FILE, TOKENIZER_CONFIG_FILE):
                (out_dir / name).unlink(missing_ok=True)
        raise
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        if workers > 1:
            gc.unfreeze()
        if thread is not None:
            thread.shutdown(cancel_futures=True)
    if writers["train"].num_documents == 0 and writers["val"].num_documents == 0:
        for w in writers.values():
            w.abort()
        raise DataError("empty input: no documents to tokenize")
    index: dict[str, Any] = {
        "format": DATA_FORMAT,
        "tokenizer": tokenizer.config(),
        "vocab_size": tokenizer.vocab_size,
        "eos_id": tokenizer.eos_id,
        "pad_id": tokenizer.pad_id,
        "chunk_size": chunk_size,
        "dtype": np_dtype.name,
        "seed": seed,
        "shard_tokens": shard_tokens,
        "sources": [str(s) for s in sources],
        "splits": {},
    }
    # a split without documents is left out of the index (and gets no files)
    for split, writer in writers.items():
        remove_split_files(out_dir, split)  # stale, from an overwritten run
        info = writer.close()
        if info is not None:
            index["splits"][split] = info
    if "val" in index["splits"]:  # bounded by --val-docs: names the held-out documents
        index["splits"]["val"]["doc_sources"] = val_sources
    tmp_index = out_dir / f".{INDEX_FILE}.tmp"
    tmp_index.write_text(json.dumps(index, indent=1) + "\n")
    tmp_index.replace(out_dir / INDEX_FILE)
    return index
