"""What a model costs: parameters, FLOPs per token and weights read per generated token.

Every function takes a preset name, a preset-shaped dict (``kind``, ``backbone``, ...; see
:mod:`calm_core.presets`) or a built CALM / AR model. The backbone and CALM's compressor are
counted here; heads and codecs report their own cost (:meth:`GenerativeHead.cost
<calm_core.interfaces.GenerativeHead.cost>`, :meth:`Codec.cost <calm_core.interfaces.Codec.cost>`;
optional methods whose default estimates from the module's weights, see there). For a spec, the
head and codec are built on the ``meta`` device to ask them (no memory, no weights), or on the
CPU when their constructor computes with tensors.

Conventions (what is unusual, and why):

* Only matrix multiplies are counted, 2 FLOPs per multiply-accumulate (MAC); norms, activations,
  softmax, RoPE and the optimizer are not (small, and not what a GEMM-throughput ratio measures).
  The exception is a non-matmul term a head reports (``HeadCost.loss_flops``: the energy score's
  pairwise distances, a visible share of a CALM training step).
* Attention (``QK^T`` and ``AV``) costs ``4 * context * H`` FLOPs per position and layer, where
  ``context`` is the number of keys a query attends to: by default the full ``max_positions``
  (the paper's Table 1 convention); a training sequence of ``S`` positions attends
  :func:`causal_context` ``(S + 1) / 2`` keys on average (the benchmarks' convention).
* Training = forward + backward = 3x the forward of the trained parts; CALM's frozen codec encoder
  (it only produces targets) costs its forward once.
* Per *token*: CALM's per-chunk costs are divided by K.

Per backbone position, with H width, I FFN inner width, hd head dim, kv KV heads, V vocab:

* backbone layer MACs: ``H (H + 2 kv hd)`` (q, k, v) ``+ H^2`` (o) ``+ 3 H I`` (SwiGLU)
* AR: the backbone and the output projection ``H V`` (untied: its weights count twice in params)
* CALM compressor, per chunk: ``(K H)(2H) + (2H) H``
* CALM inference step: compressor + backbone + the head (``macs_once + n macs_per_sample``) + the
  codec decoder (its ``K V H`` logits included); training: 3x (compressor + backbone + head loss)
  + the codec encoder.

With a 2048-position context this reproduces the inference column of the paper's Table 1 to
within a few percent.

Decode weights (:func:`decode_weights_per_token`): the weights a batch-1 generation step reads
(each once, ~2 FLOPs per weight), per token it produces. Where those reads dominate (small models
on CPUs, any large model on any device) the step's time follows this count, not the FLOPs: CALM's
decode speed-up over an AR model with the same backbone is then the ratio ``ar / calm`` of the
two figures, close to K only when the head and the codec decoder are small against the backbone
and the AR's output projection.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from calm_core.ar import ARConfig, ARModel
from calm_core.backbone import BackboneConfig
from calm_core.calm import CALM
from calm_core.config import validate_config
from calm_core.interfaces import Codec, CodecCost, GenerativeHead, HeadCost
from calm_core.presets import get_preset
from calm_core.registry import codecs, heads

__all__ = [
    "ModelLike",
    "ar_brier_flops",
    "backbone_macs",
    "causal_context",
    "codec_cost",
    "decode_weights_per_token",
    "flops_per_token",
    "head_cost",
    "parameter_count",
]

#: a preset name, a preset-shaped dict, or a built model
ModelLike = str | Mapping[str, Any] | CALM | ARModel

C = TypeVar("C")


@dataclass(frozen=True)
class _Shape:
    """What the counts need of a model: the backbone, and the AR or CALM specifics."""

    kind: str  # "ar" | "calm"
    backbone: BackboneConfig
    vocab_size: int = 0  # AR
    tie_embeddings: bool = False  # AR
    chunk: int = 1  # CALM's K
    head: HeadCost | None = None
    codec: CodecCost | None = None


def causal_context(length: float) -> float:
    """Average number of keys a query attends to under a causal mask over ``length`` positions."""
    return (length + 1) / 2


def backbone_macs(backbone: BackboneConfig | Mapping[str, Any]) -> int:
    """MACs (= weight-matrix entries) of the decoder stack per position, attention scores aside."""
    b = _backbone(backbone)
    H, kv_width = b.hidden_size, b.kv_heads * b.head_dim
    return b.num_layers * (H * (H + 2 * kv_width) + H * H + 3 * H * b.intermediate_size)


def codec_cost(codec: Codec | Mapping[str, Any] | str) -> CodecCost:
    """A codec's :meth:`~calm_core.interfaces.Codec.cost`; a spec is built on ``meta`` first."""
    return _codec(codec).cost()


def head_cost(
    head: GenerativeHead | Mapping[str, Any] | str,
    *,
    hidden_size: int | None = None,
    latent_size: int | None = None,
    num_samples: int | None = None,
) -> HeadCost:
    """A head's :meth:`~calm_core.interfaces.GenerativeHead.cost`; a spec is built on ``meta``
    with ``hidden_size`` and ``latent_size`` first."""
    if not isinstance(head, GenerativeHead):
        if hidden_size is None or latent_size is None:
            raise TypeError("a head spec needs hidden_size and latent_size to be costed")
        spec = head
        head = _on_meta(lambda: heads.build(spec, hidden_size=hidden_size, latent_size=latent_size))
    return head.cost(num_samples)


def parameter_count(model: ModelLike, *, include_codec: bool = False) -> int:
    """Weight-matrix entries of a model, the way the paper's Table 1 counts them (biases and norm
    gains aside; CALM's frozen codec only with ``include_codec``)."""
    s = _shape(model)
    H = s.backbone.hidden_size
    total = backbone_macs(s.backbone)
    if s.kind == "ar":
        return total + s.vocab_size * H * (1 if s.tie_embeddings else 2)
    assert s.head is not None and s.codec is not None
    total += s.vocab_size * H + _compressor_macs(H, s.chunk) + s.head.params
    return total + (s.codec.params if include_codec else 0)


def flops_per_token(
    model: ModelLike,
    *,
    context: float | None = None,
    training: bool = False,
    num_samples: int | None = None,
) -> float:
    """Matmul FLOPs per generated (or trained) token; conventions in the module docstring.

    Args:
        model: a preset name, a preset-shaped dict or a built CALM / AR model.
        context: keys each backbone position attends to (default ``max_positions``; use
            :func:`causal_context` for the average over a training sequence).
        training: forward + backward (3x the trained forward) plus the frozen codec encoder.
        num_samples: head samples per position (default 1 at inference, the head's own number in
            training).
    """
    s = _shape(model, num_samples=num_samples if training else None)
    b, H = s.backbone, s.backbone.hidden_size
    ctx = float(context) if context is not None else float(b.max_positions)
    backbone = 2 * backbone_macs(b) + 4 * b.num_layers * ctx * H
    if s.kind == "ar":
        forward = backbone + 2 * s.vocab_size * H
        return float(3 * forward if training else forward)
    assert s.head is not None and s.codec is not None
    core = backbone + 2 * _compressor_macs(H, s.chunk)
    if training:
        head = 2 * s.head.loss_macs + s.head.loss_flops
        per_step = 3 * (core + head) + 2 * s.codec.encoder_macs
    else:
        n = num_samples or 1
        head = 2 * (s.head.macs_once + n * s.head.macs_per_sample)
        per_step = core + head + 2 * s.codec.decoder_macs
    return float(per_step / s.chunk)


def decode_weights_per_token(model: ModelLike) -> float:
    """Weights one batch-1 generation step reads, per token it produces (norms, biases aside).

    At batch 1 every weight matrix a step uses multiplies one row (CALM's token-level decoder:
    K rows), so the step reads each of its weights once. Multiply by the element size for bytes.
    AR: one embedding row, the backbone and the output projection. CALM: K embedding rows, the
    compressor, the backbone, the head's weights once per network call of one sample and the
    codec's decoder with its ``V x H`` output matrix, divided by the K tokens of the step.
    """
    s = _shape(model)
    H = s.backbone.hidden_size
    backbone = backbone_macs(s.backbone)
    if s.kind == "ar":
        return float(H + backbone + s.vocab_size * H)
    assert s.head is not None and s.codec is not None
    head = s.head.params * s.head.calls_per_sample
    per_step = s.chunk * H + _compressor_macs(H, s.chunk) + backbone + head
    return float((per_step + s.codec.decoder_params) / s.chunk)


def ar_brier_flops(model: ModelLike, *, batch: int, length: int, max_n: int = 4) -> float:
    """Matmul FLOPs of the AR BrierLM estimator on ``batch x length`` tokens when its two samples
    always agree, so that every one of the ``length - max_n`` starts rolls out ``max_n - 1``
    steps (the most expensive case: fewer agreements drop starts).

    One teacher-forced forward over the ``batch x length`` positions, then per step ``j`` one
    over the starts, start ``i`` attending ``i + 1 + j`` keys (their average is used).
    """
    if _shape(model).kind != "ar":
        raise TypeError("ar_brier_flops counts an AR model; pass an AR model")
    starts = length - max_n
    total = batch * length * flops_per_token(model, context=causal_context(length))
    for step in range(1, max_n):
        context = (starts - 1) / 2 + 1 + step  # start i sees prefix 0..i and its `step` own keys
        total += batch * starts * flops_per_token(model, context=context)
    return total


# ----------------------------------------------------------------------------------- internals
def _compressor_macs(H: int, K: int) -> int:
    """CALM's input compressor: K token embeddings (``K H``) -> ``2H`` -> ``H``."""
    return K * H * 2 * H + 2 * H * H


def _backbone(backbone: BackboneConfig | Mapping[str, Any]) -> BackboneConfig:
    if isinstance(backbone, BackboneConfig):
        return backbone
    return validate_config(BackboneConfig, dict(backbone), path="backbone")


def _codec(codec: Codec | Mapping[str, Any] | str) -> Codec:
    if isinstance(codec, Codec):
        return codec
    return _on_meta(lambda: codecs.build(codec))


def _on_meta(build: Callable[[], C]) -> C:
    """Build on the ``meta`` device (no memory); a component whose constructor computes with
    tensors (e.g. a noise schedule) cannot be, and is built on the CPU instead."""
    try:
        with torch.device("meta"):
            return build()
    except (NotImplementedError, RuntimeError):
        return build()


def _shape(model: ModelLike, *, num_samples: int | None = None) -> _Shape:
    if isinstance(model, ARModel):
        c = model.config
        return _Shape("ar", c.backbone, c.vocab_size, c.tie_embeddings)
    if isinstance(model, CALM):
        head = model.head.cost(num_samples)
        codec = model.codec.cost()
        backbone = model.config.backbone
        return _Shape("calm", backbone, model.vocab_size, False, model.chunk_size, head, codec)
    p = get_preset(model) if isinstance(model, str) else model
    kind = p.get("kind")
    fields = {k: v for k, v in p.items() if k != "kind"}
    if kind == "ar":
        c = validate_config(ARConfig, fields)
        return _Shape("ar", c.backbone, c.vocab_size, c.tie_embeddings)
    if kind != "calm":
        raise ValueError(f"kind must be 'calm' or 'transformer_lm', got {kind!r}")
    backbone = _backbone(fields.get("backbone", {}))
    codec_module = _codec(fields.get("codec", "autoencoder"))
    hc = head_cost(
        fields.get("head", "energy"),
        hidden_size=backbone.hidden_size,
        latent_size=codec_module.latent_size,
        num_samples=num_samples,
    )
    return _Shape(
        "calm",
        backbone,
        codec_module.vocab_size,
        False,
        codec_module.chunk_size,
        hc,
        codec_module.cost(),
    )
