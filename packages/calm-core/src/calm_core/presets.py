"""Named model shapes as plain data, builders apart, and an analytic FLOPs-per-token count.

Presets are JSON-like dicts in the shape of :class:`~calm_core.calm.CALMConfig` /
:class:`~calm_core.ar.ARConfig` (``kind`` says which), so they can be
printed, diffed and merged with a config file. :func:`build_preset` turns one into a model.

Published shapes (SPEC.md §8, Llama-3 vocabulary of 128,256 + [PAD] = 128,257, PAD last):

* ``transformer-s`` d=768, 12 layers, FFN 2048, 16 heads (given); ``calm-m`` d=1024, 16 layers,
  FFN 2752, 16 heads, energy head with 4 blocks and noise 64, D=128, K=4 (given).
* Not given by the spec, chosen so the parameter counts land on the paper's Table 1 (our
  :func:`parameter_count` gives 282M / 465M / 847M / 372M / 735M / 1.82B for the six):
  ``transformer-m`` = calm-m's backbone; ``transformer-l`` and ``calm-l`` d=1536, 16 layers,
  FFN 4096, 16 heads; ``calm-xl`` d=2560, 16 layers, FFN 6880, 20 heads. CALM heads use a quarter
  of the backbone's layers as blocks (4). The codec is the reference's (d=512, FFN 1280, D=128).
  Context: 2048 positions (the reference's 8192-token CALM context is 2048 chunks).

CPU presets: ``calm-bench`` / ``transformer-bench`` are the BENCHMARKS.md configuration (width
256, FFN 704, 4 layers, 4 heads, vocab 4096, energy head 2 blocks, noise 32, codec D=64);
``calm-tiny`` / ``transformer-tiny`` are for tests and smoke runs. ``bench`` and ``tiny`` are
aliases of the CALM ones.

FLOPs (:func:`flops_per_token`): multiply-accumulates of every matmul, times 2, plus attention
``4 * layers * context * d`` per backbone position (``QK^T`` and ``AV`` over a full context),
divided by the tokens each backbone position produces (K for CALM, 1 for AR). A CALM step counts
the compressor, the backbone, one head sample and the codec decoder (incl. the ``K*V`` logits);
training counts 3x the forward of trainable parts (the head with its N samples) plus the frozen
codec encoder's forward. With a 2048-position context this reproduces Table 1's inference column
(4.4e8, 7.9e8, 15.0e8, 2.9e8, 4.6e8, 9.4e8) to within a few percent.

Decode weights (:func:`decode_weights_per_token`): the weights a batch-1 generation step reads
(each once), per token it produces. Where reads dominate, CALM's speed-up over an AR model with
the same backbone is the ratio ``ar / calm`` of the two figures: 4.29 for ``calm-m`` against
``transformer-m``, but 2.39 at the bench shapes, whose head and codec decoder outweigh the
backbone.
"""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

__all__ = [
    "PRESETS",
    "build_preset",
    "decode_weights_per_token",
    "flops_per_token",
    "get_preset",
    "parameter_count",
    "preset_names",
]

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
        _backbone(256, 4, 704, 4, ctx=1024), _energy(2, 32), _codec(4096, 256, 640, 64)
    ),
    "transformer-bench": _ar(_backbone(256, 4, 704, 4, ctx=4096), 4096),
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
        import difflib

        close = difflib.get_close_matches(name, PRESETS, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise KeyError(f"unknown preset '{name}'{hint}; available: {', '.join(preset_names())}")
    return copy.deepcopy(PRESETS[name])


def build_preset(name: str, **overrides: Any) -> nn.Module:
    """Build a model (random weights) from a preset; ``overrides`` replace top-level fields.

    CALM presets need the codec (``autoencoder``) and head plugins installed. Pass ``codec=`` to
    use an existing (e.g. pretrained) codec instead of a random one.
    """
    data = get_preset(name)
    kind = data.pop("kind")
    codec = overrides.pop("codec", None)
    data.update(overrides)
    if kind == "calm":
        from calm_core.calm import CALM

        return CALM(data, codec=codec)
    from calm_core.ar import ARConfig, ARModel
    from calm_core.config import validate_config

    return ARModel(validate_config(ARConfig, data))


# ----------------------------------------------------------------------------------- counting
def _backbone_macs(b: dict[str, Any]) -> int:
    d, f, n = b["hidden_size"], b["intermediate_size"], b["num_layers"]
    heads, kv = b["num_heads"], b.get("num_kv_heads") or b["num_heads"]
    hd = d // heads
    attn = d * heads * hd * 2 + d * kv * hd * 2  # q, o + k, v
    return int(n * (attn + 3 * d * f))


def _codec_sizes(codec: dict[str, Any]) -> tuple[int, int, int, int, int]:
    """``(V, K, D, d, ffn)``: vocab, chunk, latent, width, weights of one FFN stage."""
    c = codec.get("config", {})
    V, K = c.get("vocab_size", 4096), c.get("chunk_size", 4)
    D, d, f = c.get("latent_size", 64), c.get("hidden_size", 256), c.get("intermediate_size", 640)
    return V, K, D, d, 3 * d * f * c.get("ffn_layers_per_stage", 1)


def _codec_weights(codec: dict[str, Any]) -> tuple[int, int, int]:
    """(encoder weights, decoder weights excl. the output matrix, output matrix ``V x d``)."""
    V, K, D, d, ffn = _codec_sizes(codec)
    enc = ffn + K * d * d + ffn + d * 2 * D  # token FFN, squeeze, chunk FFN, to (mean, log std)
    dec = D * d + ffn + d * K * d + ffn  # from latent, chunk FFN, expand, token FFN
    return enc, dec, V * d


def _codec_macs(codec: dict[str, Any]) -> tuple[int, int, int]:
    """(encoder MACs per chunk, decoder MACs per chunk excl. logits, logits MACs per chunk):
    the weights, with the per-token FFN and the output matrix applied at each of the K positions."""
    _, K, _, _, ffn = _codec_sizes(codec)
    enc, dec, output = _codec_weights(codec)
    return enc + (K - 1) * ffn, dec + (K - 1) * ffn, K * output


def _compressor_weights(d: int, K: int) -> int:
    """CALM's input compressor: K token embeddings (``K d``) -> ``2d`` -> ``d``."""
    return K * d * 2 * d + 2 * d * d


def _energy_macs(head: dict[str, Any], d: int, D: int) -> tuple[int, int]:
    """(MACs per sample, MACs once per position) of the energy head."""
    c = head.get("config", {})
    noise, blocks = c.get("noise_size", 64), c.get("num_blocks", 4)
    return noise * d + blocks * 6 * d * d + d * d + d * D, d * d


def parameter_count(preset: dict[str, Any] | str, *, include_codec: bool = False) -> int:
    """Analytic parameter count (weights only) of a preset, the way Table 1 counts them."""
    p = get_preset(preset) if isinstance(preset, str) else preset
    b = p["backbone"]
    d = b["hidden_size"]
    total = _backbone_macs(b)
    if p["kind"] == "ar":
        V = p["vocab_size"]
        return int(total + V * d * (1 if p.get("tie_embeddings") else 2))
    V, K, D, _, _ = _codec_sizes(p["codec"])
    per_sample, once = _energy_macs(p["head"], d, D)
    total += V * d + _compressor_weights(d, K) + per_sample + once
    if include_codec:  # its output matrix is tied to its input embedding: counted once
        enc, dec, embedding = _codec_weights(p["codec"])
        total += embedding + enc + dec
    return int(total)


def flops_per_token(
    preset: dict[str, Any] | str,
    *,
    context: int | None = None,
    training: bool = False,
    num_samples: int | None = None,
) -> float:
    """Analytic FLOPs per generated (or trained) token; formula in the module docstring.

    Args:
        preset: a preset name or preset-shaped dict (``kind``, ``backbone``, ...).
        context: attention context in backbone positions (default ``max_positions``).
        training: forward + backward (3x trainable forward) plus the frozen codec encoder.
        num_samples: head samples per position (default 1 at inference, the head's N in
            training).
    """
    p = get_preset(preset) if isinstance(preset, str) else preset
    b = p["backbone"]
    d = b["hidden_size"]
    ctx = context if context is not None else b["max_positions"]
    attention = 4 * b["num_layers"] * ctx * d
    backbone = 2 * _backbone_macs(b) + attention
    if p["kind"] == "ar":
        forward = backbone + 2 * p["vocab_size"] * d
        return float(3 * forward if training else forward)
    _, K, D, _, _ = _codec_sizes(p["codec"])
    compress = 2 * _compressor_weights(d, K)
    per_sample, once = _energy_macs(p["head"], d, D)
    enc, dec, logits = _codec_macs(p["codec"])
    if training:
        n = num_samples or p["head"].get("config", {}).get("num_samples", 8)
        trainable = backbone + compress + 2 * (n * per_sample + once)
        per_step = 3 * trainable + 2 * enc
    else:
        n = num_samples or 1
        per_step = backbone + compress + 2 * (n * per_sample + once) + 2 * (dec + logits)
    return float(per_step / K)


def decode_weights_per_token(preset: dict[str, Any] | str) -> float:
    """Weights one batch-1 generation step reads, per token it produces (norms, biases aside).

    At batch 1 every weight matrix a step uses multiplies one row (CALM's token-level decoder:
    K rows), so the step reads each of its weights once and does ~2 FLOPs per weight: where those
    reads dominate (small models on CPUs, any large model on any device) the step's time follows
    this count, not the FLOPs per token. Multiply by the element size for bytes.

    AR: one embedding row, the backbone and the output projection. CALM: K embedding rows, the
    compressor, the backbone, the head's generator for one sample and the codec's decoder with
    its ``V x d`` output matrix, divided by the K tokens the step produces. CALM's decode-speed
    advantage over an AR model with the same backbone, at equal speed per weight read, is the
    ratio ``ar / calm`` of the two per-token figures: close to K only when the head and decoder
    are small against the backbone and the AR's output projection.
    """
    p = get_preset(preset) if isinstance(preset, str) else preset
    b = p["backbone"]
    d = b["hidden_size"]
    backbone = _backbone_macs(b)
    if p["kind"] == "ar":
        return float(d + backbone + p["vocab_size"] * d)
    _, K, D, _, _ = _codec_sizes(p["codec"])
    compress = _compressor_weights(d, K)
    per_sample, once = _energy_macs(p["head"], d, D)
    _, decoder, output = _codec_weights(p["codec"])
    per_step = K * d + compress + backbone + per_sample + once + decoder + output
    return float(per_step / K)
