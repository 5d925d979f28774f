"""Named model shapes as plain data: the one home of every named shape.

Presets are JSON-like dicts in the shape of :class:`~calm_core.calm.CALMConfig` /
:class:`~calm_core.ar.ARConfig` (``kind`` says which), so they can be
printed, diffed and merged with a config file. This module imports nothing of calm (config
defaults, plugins and the benchmarks read their shapes from it):
:func:`calm_core.builders.build_preset` turns a preset into a model, and :mod:`calm_core.costs`
counts its parameters, FLOPs and weights read per token.

Published shapes (SPEC.md §8, Llama-3 vocabulary of 128,256 + [PAD] = 128,257, PAD last):

* ``transformer-s`` d=768, 12 layers, FFN 2048, 16 heads (given); ``calm-m`` d=1024, 16 layers,
  FFN 2752, 16 heads, energy head with 4 blocks and noise 64, D=128, K=4 (given).
* Not given by the spec, chosen so the parameter counts land on the paper's Table 1 (within 1%,
  see :func:`calm_core.costs.parameter_count`):
  ``transformer-m`` = calm-m's backbone; ``transformer-l`` and ``calm-l`` d=1536, 16 layers,
  FFN 4096, 16 heads; ``calm-xl`` d=2560, 16 layers, FFN 6880, 20 heads. CALM heads use a quarter
  of the backbone's layers as blocks (4). The codec is the reference's (d=512, FFN 1280, D=128).
  Context: 2048 positions (the reference's 8192-token CALM context is 2048 chunks).

The benchmark shape (BENCHMARKS.md "bench": width 256, FFN 704, 4 layers, 4 heads, vocab 4096,
energy head 2 blocks, noise 32, codec width 256, FFN 640, D=64, K=4) is :data:`BENCH_BACKBONE`,
:data:`BENCH_CODEC` and :data:`BENCH_ENERGY`: the presets ``calm-bench`` / ``transformer-bench``,
the defaults of ``BackboneConfig`` and of the autoencoder's config, the demo's shape and the
benchmarks' models all read it from here. ``calm-tiny`` / ``transformer-tiny`` are for tests and
smoke runs. ``bench`` and ``tiny`` are aliases of the CALM ones.
"""

from __future__ import annotations

import copy
import difflib
from typing import Any

__all__ = [
    "BENCH_BACKBONE",
    "BENCH_CODEC",
    "BENCH_ENERGY",
    "PRESETS",
    "get_preset",
    "preset_names",
]

#: the benchmark backbone (BENCHMARKS.md "bench"); also ``BackboneConfig``'s defaults
BENCH_BACKBONE: dict[str, int] = {
    "hidden_size": 256,
    "intermediate_size": 704,
    "num_layers": 4,
    "num_heads": 4,
}
#: the benchmark codec; also the autoencoder config's defaults
BENCH_CODEC: dict[str, int] = {
    "vocab_size": 4096,
    "chunk_size": 4,
    "latent_size": 64,
    "hidden_size": 256,
    "intermediate_size": 640,
}
#: the benchmark energy head (its width is the backbone's)
BENCH_ENERGY: dict[str, int] = {"num_blocks": 2, "noise_size": 32}

_LLAMA3_VOCAB = 128_257  # 128,256 + [PAD]
_LLAMA3_PAD = 128_256
_LLAMA3_EOS = 128_001


def _backbone(d: int, layers: int, ffn: int, heads: int, ctx: int = 2048) -> dict[str, Any]:
    return {
        "hidden_size": d,
        "intermediate_size": ffn,
        "num_layers": layers,
        "num_heads": heads,
        "num_kv_heads": None,  # = num_heads, also when a config file changes num_heads
        "rope_theta": 10000.0,
        "rms_norm_eps": 1e-6,
        "max_positions": ctx,
    }


def _bench_backbone(ctx: int) -> dict[str, Any]:
    b = BENCH_BACKBONE
    return _backbone(b["hidden_size"], b["num_layers"], b["intermediate_size"], b["num_heads"], ctx)


def _codec(vocab: int, d: int, ffn: int, latent: int, k: int = 4) -> dict[str, Any]:
    return {
        "name": "autoencoder",
        "config": {
            "vocab_size": vocab,
            "chunk_size": k,
            "latent_size": latent,
            "hidden_size": d,
            "intermediate_size": ffn,
        },
    }


def _energy(blocks: int, noise: int) -> dict[str, Any]:
    return {"name": "energy", "config": {"num_blocks": blocks, "noise_size": noise}}


def _calm(
    backbone: dict[str, Any], head: dict[str, Any], codec: dict[str, Any], **ids: Any
) -> dict[str, Any]:
    return {"kind": "calm", "backbone": backbone, "head": head, "codec": codec, **ids}


def _ar(backbone: dict[str, Any], vocab: int, **ids: Any) -> dict[str, Any]:
    return {"kind": "ar", "backbone": backbone, "vocab_size": vocab, **ids}


_PUBLISHED_CODEC = _codec(_LLAMA3_VOCAB, 512, 1280, 128)
_BIG_IDS = {"pad_id": _LLAMA3_PAD, "eos_id": _LLAMA3_EOS}

#: every named preset: plain data, never mutated (``get_preset`` returns a copy)
PRESETS: dict[str, dict[str, Any]] = {
    "transformer-s": _ar(_backbone(768, 12, 2048, 16), _LLAMA3_VOCAB, **_BIG_IDS),
    "transformer-m": _ar(_backbone(1024, 16, 2752, 16), _LLAMA3_VOCAB, **_BIG_IDS),
    "transformer-l": _ar(_backbone(1536, 16, 4096, 16), _LLAMA3_VOCAB, **_BIG_IDS),
    "calm-m": _calm(_backbone(1024, 16, 2752, 16), _energy(4, 64), _PUBLISHED_CODEC, **_BIG_IDS),
    "calm-l": _calm(_backbone(1536, 16, 4096, 16), _energy(4, 64), _PUBLISHED_CODEC, **_BIG_IDS),
    "calm-xl": _calm(_backbone(2560, 16, 6880, 20), _energy(4, 64), _PUBLISHED_CODEC, **_BIG_IDS),
    "calm-bench": _calm(
        _bench_backbone(ctx=1024),
        {"name": "energy", "config": dict(BENCH_ENERGY)},
        {"name": "autoencoder", "config": dict(BENCH_CODEC)},
    ),
    "transformer-bench": _ar(_bench_backbone(ctx=4096), BENCH_CODEC["vocab_size"]),
    "calm-tiny": _calm(_backbone(32, 2, 64, 4, ctx=128), _energy(1, 8), _codec(128, 32, 64, 8)),
    "transformer-tiny": _ar(_backbone(32, 2, 64, 4, ctx=512), 128),
}
PRESETS["bench"] = PRESETS["calm-bench"]
PRESETS["tiny"] = PRESETS["calm-tiny"]


def preset_names() -> list[str]:
    """All preset names."""
    return sorted(PRESETS)


def get_preset(name: str) -> dict[str, Any]:
    """A deep copy of a preset's data (``kind`` plus the model config fields)."""
    if name not in PRESETS:
        close = difflib.get_close_matches(name, PRESETS, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise KeyError(f"unknown preset '{name}'{hint}; available: {', '.join(preset_names())}")
    return copy.deepcopy(PRESETS[name])
