"""The analytic FLOP formulas of benchmarks/flops.py, checked against hand-computed counts."""

from __future__ import annotations

import pytest

from benchmarks import flops as F


def test_backbone_flops_hand_computed() -> None:
    # H=4, I=8, 1 layer, 2 heads (hd 2), 1 KV head: qkv 2*4*(4+4)=64, o 32, mlp 6*4*8=192,
    # attention 4*ctx*H = 4*3*4 = 48 -> 336
    shape = F.BackboneShape(hidden=4, intermediate=8, layers=1, heads=2, kv_heads=1)
    assert F.backbone_flops_per_position(shape, context=3) == 336
    # AR adds the untied output projection 2*H*V and triples for training
    assert F.ar_flops_per_token(shape, vocab=10, context=3, training=False) == 336 + 80
    assert F.ar_flops_per_token(shape, vocab=10, context=3) == 3 * (336 + 80)


def test_ar_brier_flops_counts_every_query_with_its_keys() -> None:
    # batch 2, 7 tokens, 4-grams: 7 teacher-forced positions seeing 1..7 keys, then 3 starts
    # (i = 0, 1, 2) rolled out 3 steps, start i at step j seeing i + 1 + j keys
    shape = F.BackboneShape(hidden=4, intermediate=8, layers=1, heads=2, kv_heads=1)
    per = [F.ar_flops_per_token(shape, 10, keys, training=False) for keys in range(1, 8)]
    per += [
        F.ar_flops_per_token(shape, 10, i + 1 + j, training=False)
        for j in (1, 2, 3)
        for i in range(3)
    ]
    assert F.ar_brier_flops(shape, 10, batch=2, length=7, max_n=4) == pytest.approx(2 * sum(per))


def test_causal_context_is_average_keys() -> None:
    assert F.causal_context(1) == 1
    assert F.causal_context(512) == pytest.approx(sum(range(1, 513)) / 512)


def test_calm_flops_count_codec_once_and_divide_by_k() -> None:
    bb = F.BackboneShape(hidden=4, intermediate=8, layers=1, heads=2, kv_heads=2)
    codec = F.CodecShape(hidden=4, intermediate=8, latent=2, chunk=2)
    head = F.EnergyHeadShape(blocks=1, noise=3, samples=2, target_samples=5)
    compress = 2 * 8 * 8 + 2 * 8 * 4
    core = compress + F.backbone_flops_per_position(bb, 2)
    head_fwd = F.energy_head_flops_per_position(4, 2, head)
    # generator: once 2*16 + 1*2*16 = 64; per sample 2*3*4 + 10*16 + 2*16 + 2*4*2 = 232;
    # loss 3*2*(2*5 + 2*1) = 72
    assert head_fwd == 64 + 2 * 232 + 72
    expected = (3 * (core + head_fwd) + F.codec_encoder_flops_per_chunk(codec)) / 2
    assert F.calm_flops_per_token(bb, codec, head, 2) == pytest.approx(expected)
