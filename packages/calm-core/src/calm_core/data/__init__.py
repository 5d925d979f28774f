"""Token data: sources, tokenizers, streaming packing into K-aligned shards, the packed dataset
and its loader.

Names are imported on first use, so ``calm tokenize`` (which needs no torch) starts fast.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from calm_core.data.dataset import PackedDataset
    from calm_core.data.loader import BlockLoader
    from calm_core.data.packing import pack_documents, val_indices, write_data_dir
    from calm_core.data.sources import (
        DataError,
        Document,
        find_input_files,
        hf_documents,
        iter_documents,
        read_documents,
    )
    from calm_core.data.tokenizer import BPETokenizer, ByteTokenizer, Tokenizer, TokenizerError

_LAZY: dict[str, str] = {
    "BPETokenizer": "calm_core.data.tokenizer",
    "BlockLoader": "calm_core.data.loader",
    "ByteTokenizer": "calm_core.data.tokenizer",
    "DataError": "calm_core.data.sources",
    "Document": "calm_core.data.sources",
    "PackedDataset": "calm_core.data.dataset",
    "Tokenizer": "calm_core.data.tokenizer",
    "TokenizerError": "calm_core.data.tokenizer",
    "find_input_files": "calm_core.data.sources",
    "hf_documents": "calm_core.data.sources",
    "iter_documents": "calm_core.data.sources",
    "pack_documents": "calm_core.data.packing",
    "read_documents": "calm_core.data.sources",
    "val_indices": "calm_core.data.packing",
    "write_data_dir": "calm_core.data.packing",
}

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
    "hf_documents",
    "iter_documents",
    "pack_documents",
    "read_documents",
    "val_indices",
    "write_data_dir",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'calm_core.data' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(__all__)
