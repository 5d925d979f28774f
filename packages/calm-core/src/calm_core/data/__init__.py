"""Token data: tokenizers, packing into K-aligned shards, the packed dataset and its loader."""

from __future__ import annotations

from calm_core.data.dataset import PackedDataset
from calm_core.data.loader import BlockLoader
from calm_core.data.packing import (
    DataError,
    Document,
    find_input_files,
    pack_documents,
    read_documents,
    write_data_dir,
)
from calm_core.data.tokenizer import BPETokenizer, ByteTokenizer, Tokenizer, TokenizerError

__all__ = [
    "BPETokenizer",
    "BlockLoader",
    "ByteTokenizer",
    "DataError",
    "Document",
    "PackedDataset",
    "Tokenizer",
    "TokenizerError",
    "find_input_files",
    "pack_documents",
    "read_documents",
    "write_data_dir",
]
