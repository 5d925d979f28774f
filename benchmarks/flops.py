"""Analytic model FLOPs per token (the documented formula behind the MFU figures).

Conventions (what is unusual, and why):

* Only matrix multiplies are counted, 2 FLOPs per multiply-add; norms, activations, softmax,
  RoPE and the optimizer are not (they are small and not what a GEMM-throughput ratio measures).
  The one exception is the energy loss's pairwise distances, counted at 3 FLOPs per latent
  dimension per pair (difference, square, add), since they are a large share of a CALM step.
* Attention scores and the weighted sum cost ``4 * context * H`` per position, where ``context``
  is the number of keys a query attends to; in causal training over ``S`` positions that is the
  average ``(S + 1) / 2``.
* Training = forward + backward = 3x forward for trained modules; a frozen module (CALM's codec
  encoder, which only produces targets) costs its forward only.
* Per *token*: CALM's per-chunk costs are divided by K.

Formulas, with H width, I FFN inner width, hd head dim, kv KV heads, V vocab, D latent size:

* backbone layer, per position: ``2H(H + 2 kv hd) + 2H^2 + 6HI + 4 context H``
* AR, per token: ``layers x layer + 2HV`` (untied output projection)
* CALM compressor, per chunk: ``2(K H)(2H) + 2(2H)H``
* energy head, per position with N samples and M target draws:
  once ``2H^2 + blocks 2H^2``; per sample ``2 noise H + blocks 10H^2 + 2H^2 + 2HD``;
  loss ``3D (N M + N (N - 1))``
* codec encoder, per chunk (width d, FFN inner f, one FFN layer per stage by default):
  ``K per_token_layers 6df + 2(Kd)d + chunk_layers 6df + 2d(2D)``
* AR BrierLM evaluation of ``B x T`` tokens whose two samples always agree (every start rolls
  out ``n - 1`` steps): one teacher-forced AR forward over the ``B T`` positions plus, per step
  ``j``, one over the ``B (T - n)`` starts, start ``i`` attending ``i + 1 + j`` keys
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "BackboneShape",
    "CodecShape",
    "EnergyHeadShape",
    "ar_brier_flops",
    "ar_flops_per_token",
    "backbone_flops_per_position",
    "calm_flops_per_token",
    "causal_context",
    "codec_encoder_flops_per_chunk",
    "energy_head_flops_per_position",
]


@dataclass(frozen=True)
class BackboneShape:
    """Shape of the Llama-style decoder stack."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


@dataclass(frozen=True)
class CodecShape:
    """Shape of the chunk autoencoder's encoder."""

    hidden: int
    intermediate: int
    latent: int
    chunk: int
    layers_per_stage: int = 1


@dataclass(frozen=True)
class EnergyHeadShape:
    """Shape and training sample counts of the energy head."""

    blocks: int
    noise: int
    samples: int
    target_samples: int


def causal_context(length: int) -> float:
    """Average number of keys a query attends to under a causal mask over ``length`` positions."""
    return (length + 1) / 2


def backbone_flops_per_position(shape: BackboneShape, context: float) -> float:
    """Forward matmul FLOPs of the whole stack for one position attending ``context`` keys."""
    H, inner = shape.hidden, shape.intermediate
    kv_width = shape.kv_heads * shape.head_dim
    qkv = 2 * H * (H + 2 * kv_width)
    out = 2 * H * H
    mlp = 6 * H * inner
    attn = 4 * context * H
    return shape.layers * (qkv + out + mlp + attn)


def ar_flops_per_token(
    shape: BackboneShape, vocab: int, context: float, *, training: bool = True
) -> float:
    """AR baseline FLOPs per token: backbone + untied output projection; training is 3x."""
    fwd = backbone_flops_per_position(shape, context) + 2 * shape.hidden * vocab
    return 3 * fwd if training else fwd


def ar_brier_flops(shape: BackboneShape, vocab: int, batch: int, length: int, max_n: int) -> float:
    """Matmul FLOPs of the AR BrierLM estimator on ``batch x length`` tokens when its two samples
    always agree, so that every one of the ``length - max_n`` starts rolls out ``max_n - 1`` steps
    (the most expensive case: fewer agreements drop starts)."""
    starts = length - max_n
    total = (
        batch * length * ar_flops_per_token(shape, vocab, causal_context(length), training=False)
    )
    for step in range(1, max_n):
        context = (starts - 1) / 2 + 1 + step  # start i sees prefix 0..i and its `step` own keys
        total += batch * starts * ar_flops_per_token(shape, vocab, context, training=False)
    return total


def codec_encoder_flops_per_chunk(shape: CodecShape) -> float:
    """Forward FLOPs of encoding one chunk of K tokens to its posterior (mean, log std)."""
    d, f, K, n = shape.hidden, shape.intermediate, shape.chunk, shape.layers_per_stage
    per_token = K * n * 6 * d * f
    merge = 2 * (K * d) * d
    per_chunk = n * 6 * d * f
    to_latent = 2 * d * (2 * shape.latent)
    return per_token + merge + per_chunk + to_latent


def energy_head_flops_per_position(
    hidden: int, latent: int, head: EnergyHeadShape, *, num_samples: int | None = None
) -> float:
    """Forward FLOPs of the energy head at one position: generator x N samples + energy loss.

    With ``num_samples`` given (sampling), the loss term is left out and that many samples drawn.
    """
    H, D = hidden, latent
    n = head.samples if num_samples is None else num_samples
    once = 2 * H * H + head.blocks * 2 * H * H
    per_sample = 2 * head.noise * H + head.blocks * 10 * H * H + 2 * H * H + 2 * H * D
    gen = once + n * per_sample
    if num_samples is not None:
        return gen
    loss = 3 * D * (n * head.target_samples + n * (n - 1))
    return gen + loss


def calm_flops_per_token(
    backbone: BackboneShape,
    codec: CodecShape,
    head: EnergyHeadShape,
    context_chunks: float,
    *,
    training: bool = True,
) -> float:
    """CALM (energy head) FLOPs per token.

    Training: 3x (compressor + backbone + head with its loss) + 1x frozen codec encoder, per
    chunk, divided by K. Inference (``training=False``): compressor + backbone + one head sample,
    per chunk, divided by K (the codec decoder is not counted, like the AR softmax is).
    """
    H, K = backbone.hidden, codec.chunk
    compress = 2 * (K * H) * (2 * H) + 2 * (2 * H) * H
    core = compress + backbone_flops_per_position(backbone, context_chunks)
    if training:
        trained = core + energy_head_flops_per_position(H, codec.latent, head)
        per_chunk = 3 * trained + codec_encoder_flops_per_chunk(codec)
    else:
        per_chunk = core + energy_head_flops_per_position(H, codec.latent, head, num_samples=1)
    return per_chunk / K
