"""Building what a recipe trains: the codec from its spec and the data, the CALM around a trained
codec (or the AR baseline), and the checks that data, codec and config fit together.

Every check runs before training starts and raises the library's own errors: a config that
cannot work is a :class:`~calm_core.config.ConfigError`, data that does not fit the model a
:class:`~calm_core.data.packing.DataError`; a codec directory that cannot be read raises what
:func:`~calm_core.model_dir.load_pretrained` raises.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from calm_core.ar import ARConfig, ARModel
from calm_core.calm import CALM
from calm_core.config import ConfigError
from calm_core.data.dataset import PackedDataset
from calm_core.data.packing import DataError
from calm_core.data.tokenizer import TOKENIZER_FILE, BPETokenizer, Tokenizer
from calm_core.hub_cache import resolve_model_dir
from calm_core.interfaces import Codec
from calm_core.model_dir import ModelLoadError, load_pretrained
from calm_core.recipes.config import TrainCodecConfig, TrainModelConfig
from calm_core.registry import codecs

__all__ = [
    "build_codec",
    "build_model",
    "check_lengths",
    "check_same_tokenizer",
    "load_codec",
]


def build_codec(
    config: TrainCodecConfig, data: PackedDataset, device: torch.device | str | None = None
) -> Codec:
    """The configured codec, taking vocab and K from the data unless the config sets them."""
    spec = config.codec.model_dump()
    cls = codecs.get(spec["name"])  # UnknownComponentError lists the installed codecs
    fields = getattr(cls.config_class, "model_fields", {})
    cfg = dict(spec["config"])
    for key, value in (("vocab_size", data.vocab_size), ("chunk_size", data.chunk_size)):
        if key in fields:
            cfg.setdefault(key, value)
    codec = codecs.build({"name": spec["name"], "config": cfg})
    if codec.vocab_size < data.vocab_size:
        fix = (
            "remove codec.config.vocab_size to take it from the data"
            if "vocab_size" in fields
            else f"{spec['name']}'s config has no 'vocab_size' field for calm to fill from the "
            "data: set its vocabulary to at least the data's in the codec config"
        )
        raise ConfigError(
            f"the codec's vocab_size {codec.vocab_size} is smaller than the data's "
            f"{data.vocab_size}; {fix}"
        )
    _check_chunks(data, codec.chunk_size)
    return codec.to(device) if device is not None else codec


def load_codec(codec_dir: str | Path, data: PackedDataset | None = None) -> Codec:
    """The trained codec in ``codec_dir``, checked against ``data`` (tokenizer, vocab, K)."""
    path = resolve_model_dir(codec_dir)  # a local directory, or a Hub id (calm-core[hub])
    if not path.exists():
        raise ModelLoadError(f"codec directory {path} does not exist")
    codec = load_pretrained(path)
    if not isinstance(codec, Codec):
        raise ModelLoadError(f"{path} holds a {type(codec).__qualname__}, not a codec")
    if data is not None:
        check_same_tokenizer(path, data.data_dir, "codec")
        if codec.vocab_size < data.vocab_size:  # larger is fine: train_codec allows it too
            raise DataError(
                f"the codec's vocab_size is {codec.vocab_size}, smaller than the data's "
                f"{data.vocab_size}; train the codec on this data directory"
            )
        _check_chunks(data, codec.chunk_size)
    return codec


def build_model(
    config: TrainModelConfig,
    data: PackedDataset,
    codec_dir: str | Path | None = None,
    device: torch.device | str | None = None,
) -> nn.Module:
    """The CALM (around the codec in ``codec_dir``) or AR model the config describes, on
    ``device`` (default: where torch builds it, the CPU)."""
    model: nn.Module
    if config.model == "ar":
        cfg = ARConfig(
            backbone=config.backbone,
            vocab_size=data.vocab_size,
            tie_embeddings=config.tie_embeddings,
            pad_id=data.pad_id,
            eos_id=data.eos_id,
        )
        model = ARModel(cfg)
    else:
        if codec_dir is None:
            raise ConfigError(
                "CALM trains around a trained codec: pass its directory as codec_dir "
                "(train one with train_codec / calm train-codec)"
            )
        codec = load_codec(codec_dir, data)
        model = CALM.from_codec(
            codec,
            backbone=config.backbone.model_dump(),
            head=config.head,
            pad_id=data.pad_id,
            eos_id=data.eos_id,
        )
    return model.to(device) if device is not None else model


def check_lengths(config: TrainModelConfig, model: nn.Module, data_chunk: int) -> None:
    """``train.seq_len`` must fit K, the data's chunks and the backbone's positions."""
    seq = config.train.seq_len
    K = int(getattr(model, "chunk_size", 1))
    if seq % K:
        raise ConfigError(f"train.seq_len ({seq}) must be a multiple of the chunk size K={K}")
    if seq % data_chunk:  # the AR model has no K, but its blocks are cut on the data's chunks
        raise ConfigError(
            f"train.seq_len ({seq}) must be a multiple of the data's chunk size K={data_chunk} "
            f"(e.g. {max(data_chunk, seq - seq % data_chunk)})"
        )
    positions = seq // K if config.model == "calm" else seq
    if positions > config.backbone.max_positions:
        raise ConfigError(
            f"train.seq_len ({seq}) needs {positions} backbone positions but "
            f"backbone.max_positions is {config.backbone.max_positions}; raise it or shorten"
        )


def check_same_tokenizer(model_dir: str | Path, data_dir: str | Path, what: str) -> None:
    """Refuse data tokenized with another tokenizer than the one saved with a model directory.

    Both directories hold the tokenizer they were made with (``calm tokenize`` writes the data's,
    the recipes copy it into the model directory); when both exist, their kinds, special ids and
    vocabularies (token -> id) must agree, else :class:`DataError`.
    """
    if not (
        (Path(model_dir) / TOKENIZER_FILE).is_file() and (Path(data_dir) / TOKENIZER_FILE).is_file()
    ):
        return
    try:
        ours, theirs = Tokenizer.load(model_dir), Tokenizer.load(data_dir)
    except Exception:  # unreadable: the data and model loaders report their own files
        return
    if _identity(ours) != _identity(theirs):
        raise DataError(
            f"{data_dir} was tokenized with another tokenizer than the {what} in {model_dir}; "
            f"re-tokenize the text with `calm tokenize ... --tokenizer {model_dir}`"
        )


def _identity(tok: Tokenizer) -> tuple[Any, ...]:
    vocab = tok.backend.get_vocab(with_added_tokens=True) if isinstance(tok, BPETokenizer) else {}
    return (tok.kind, tok.vocab_size, tok.pad_id, tok.eos_id, vocab)


def _check_chunks(data: PackedDataset, chunk_size: int) -> None:
    if data.chunk_size % chunk_size:
        raise DataError(
            f"the data is packed for K={data.chunk_size} but the codec has chunk_size "
            f"{chunk_size}; re-run `calm tokenize --chunk-size {chunk_size}`"
        )
