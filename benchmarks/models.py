"""The benchmark configuration ("bench" of BENCHMARKS.md) as model builders and cost specs.

Every speed figure and the quality sweep build their models here. The shapes are BENCHMARKS.md's,
read from their one home, :mod:`calm_core.presets` (``BENCH_BACKBONE``, ``BENCH_CODEC``,
``BENCH_ENERGY``); the training objective's settings are spelled out below. FLOPs and weights read
come from :mod:`calm_core.costs` on :func:`preset_data`.

What is unusual: the diffusion and flow heads have no bench shape in BENCHMARKS.md; they are
given the energy head's depth (2 blocks, width = backbone width) and their SPEC.md defaults
otherwise (8 target draws; 100 sampling steps / 10 midpoint steps), so the three heads are
compared at equal network size.
"""

from __future__ import annotations

from typing import Any

import torch
from calm_core import registry
from calm_core.ar import ARConfig, ARModel
from calm_core.backbone import BackboneConfig
from calm_core.calm import CALM
from calm_core.interfaces import Codec
from calm_core.presets import BENCH_BACKBONE, BENCH_CODEC, BENCH_ENERGY

__all__ = [
    "BACKBONE",
    "CODEC",
    "ENERGY",
    "HEAD_CONFIGS",
    "PROMPT_LEN",
    "SEQ_LEN",
    "TRAIN_BATCH",
    "VOCAB",
    "MissingFigureError",
    "build_ar",
    "build_calm",
    "build_codec",
    "preset_data",
]

VOCAB = BENCH_CODEC["vocab_size"]
CHUNK = BENCH_CODEC["chunk_size"]
SEQ_LEN = 512
TRAIN_BATCH = 8
PROMPT_LEN = 32
NEW_TOKENS = 256

#: codec: width 256, FFN 640, D=64, K=4, one FFN layer per stage, KL 1e-3 (floor 0.5), mask and
#: latent dropout 0.15 (the AutoencoderConfig fields)
CODEC: dict[str, Any] = {
    **BENCH_CODEC,
    "ffn_layers_per_stage": 1,
    "kl_weight": 1e-3,
    "kl_floor": 0.5,
    "token_mask_rate": 0.15,
    "latent_dropout": 0.15,
}

#: Llama backbone shared by CALM and the AR baseline (BackboneConfig fields)
BACKBONE: dict[str, Any] = {
    **BENCH_BACKBONE,
    "num_kv_heads": BENCH_BACKBONE["num_heads"],
    "rope_theta": 10000.0,
}

#: energy head: 2 blocks, noise 32, N=8 samples, M=100 target draws, a=1
ENERGY: dict[str, Any] = {
    **BENCH_ENERGY,
    "num_samples": 8,
    "num_target_samples": 100,
    "alpha": 1.0,
}

HEAD_CONFIGS: dict[str, dict[str, Any]] = {
    "energy": ENERGY,
    "diffusion": {"num_blocks": 2},
    "flow": {"num_blocks": 2},
}


class MissingFigureError(RuntimeError):
    """A figure cannot be measured because the code it needs does not exist (yet)."""


def preset_data(kind: str, chunk: int = CHUNK) -> dict[str, Any]:
    """The bench CALM (``kind="calm"``, energy head, K = ``chunk``) or AR model as a
    preset-shaped dict, for :mod:`calm_core.costs`."""
    backbone = {**BACKBONE, "max_positions": SEQ_LEN}
    if kind == "ar":
        return {"kind": "ar", "backbone": backbone, "vocab_size": VOCAB}
    codec = {"name": "autoencoder", "config": {**CODEC, "chunk_size": chunk, "vocab_size": VOCAB}}
    head = {"name": "energy", "config": ENERGY}
    return {"kind": "calm", "backbone": backbone, "head": head, "codec": codec}


def _max_positions(context_tokens: int, chunk: int) -> int:
    return max(2048, -(-context_tokens // chunk) + 8)


def build_codec(
    *, chunk: int = CHUNK, vocab: int = VOCAB, seed: int = 0, **overrides: Any
) -> Codec:
    """The bench chunk autoencoder (registry codec ``autoencoder``), seeded, fp32."""
    if "autoencoder" not in registry.codecs:
        raise MissingFigureError("codec 'autoencoder' is not installed (package calm-codecs)")
    torch.manual_seed(seed)
    config = {**CODEC, "chunk_size": chunk, "vocab_size": vocab, **overrides}
    codec: Codec = registry.codecs.build({"name": "autoencoder", "config": config})
    return codec


def build_ar(
    *, vocab: int = VOCAB, context_tokens: int = 2048, seed: int = 0, pad_id: int | None = None
) -> ARModel:
    """The AR baseline: the bench backbone over tokens, untied input/output embeddings."""
    torch.manual_seed(seed)
    backbone = BackboneConfig.model_validate(
        {**BACKBONE, "max_positions": max(2048, context_tokens + 8)}
    )
    config = ARConfig.model_validate(
        {"backbone": backbone, "vocab_size": vocab, "tie_embeddings": False, "pad_id": pad_id}
    )
    return ARModel(config)


def build_calm(
    head: str = "energy",
    *,
    codec: Codec | None = None,
    chunk: int = CHUNK,
    vocab: int = VOCAB,
    context_tokens: int = 2048,
    seed: int = 0,
    head_overrides: dict[str, Any] | None = None,
    pad_id: int | None = None,
) -> CALM:
    """A CALM with the bench backbone, the named head and a (given or freshly built) codec."""
    if codec is None:
        codec = build_codec(chunk=chunk, vocab=vocab, seed=seed)
    torch.manual_seed(seed + 1)
    config = {
        "backbone": {**BACKBONE, "max_positions": _max_positions(context_tokens, chunk)},
        "head": {"name": head, "config": {**HEAD_CONFIGS[head], **(head_overrides or {})}},
        "pad_id": pad_id,
    }
    return CALM(config, codec=codec)
