"""The bundled demo corpus: the 62 WikiText-103 test articles, shipped as package data.

What is unusual: the data file is gzip-compressed package data (``wikitext103-test-docs.jsonl.gz``,
~450 KB) read through :mod:`importlib.resources`, so ``calm demo`` works from a wheel with no
download. The text is CC BY-SA 3.0 (see ``LICENSE`` and ``README.md`` next to it); the code is MIT.

:func:`load_corpus` is what ``calm demo --corpus`` uses: no path gives the bundled articles, a path
(files or directories of ``.txt``/``.md``/``.jsonl``/``.jsonl.gz``) gives the user's.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from importlib import resources
from pathlib import Path

from calm_core.data.packing import DataError, Document, find_input_files, read_documents

__all__ = [
    "BUNDLED_CORPUS",
    "BUNDLED_LICENSE",
    "BUNDLED_NUM_DOCUMENTS",
    "BUNDLED_SHA256",
    "bundled_corpus_bytes",
    "load_bundled_corpus",
    "load_corpus",
]

#: file name of the bundled corpus inside this package
BUNDLED_CORPUS = "wikitext103-test-docs.jsonl.gz"
#: licence of the bundled text
BUNDLED_LICENSE = "CC BY-SA 3.0 (text from Wikipedia via WikiText-103, Merity et al. 2016)"
#: articles in the bundled corpus
BUNDLED_NUM_DOCUMENTS = 62
#: SHA-256 of the uncompressed JSONL, recorded so a damaged install is reported, not trained on
BUNDLED_SHA256 = "fdfcbf31feb34e593804b2c3c86da67a894412acac49f1f1c8e87a578957790b"


def bundled_corpus_bytes() -> bytes:
    """The uncompressed JSONL bytes of the bundled corpus, checked against :data:`BUNDLED_SHA256`.

    Raises:
        DataError: the package data is missing or damaged (reinstall calm-core).
    """
    ref = resources.files(__name__).joinpath(BUNDLED_CORPUS)
    try:
        raw = gzip.decompress(ref.read_bytes())
    except (OSError, EOFError) as exc:
        raise DataError(
            f"the bundled corpus {BUNDLED_CORPUS} is missing or damaged ({exc}); reinstall "
            "calm-core, or pass your own text with --corpus PATH"
        ) from None
    if hashlib.sha256(raw).hexdigest() != BUNDLED_SHA256:
        raise DataError(
            f"the bundled corpus {BUNDLED_CORPUS} does not match its recorded checksum; reinstall "
            "calm-core, or pass your own text with --corpus PATH"
        )
    return raw


def load_bundled_corpus() -> list[Document]:
    """The 62 WikiText-103 test articles as documents (``source`` is ``name:line``)."""
    docs = []
    # split at "\n" only, as every JSONL reader here does (str.splitlines also breaks at U+2028)
    for lineno, line in enumerate(bundled_corpus_bytes().split(b"\n"), start=1):
        if line.strip():
            text = json.loads(line.decode("utf-8"))["text"]
            docs.append(Document(text, f"{BUNDLED_CORPUS}:{lineno}"))
    return docs


def load_corpus(path: str | Path | None = None) -> list[Document]:
    """Documents to train the demo on: the bundled corpus, or the user's files.

    Args:
        path: None for the bundled WikiText-103 test articles; otherwise a file or directory
            (``.txt``, ``.md``, ``.jsonl``, ``.jsonl.gz``).

    Raises:
        DataError: the path does not exist, holds no usable text, or is malformed.
    """
    if path is None:
        return load_bundled_corpus()
    p = Path(path)
    if not p.exists():
        raise DataError(f"corpus {p} does not exist; pass a .txt/.md/.jsonl file or a directory")
    return read_documents(find_input_files([p]))
