"""The shared decoder: causality, rotary positions, GQA, masks, and both KV caches."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from calm_core.backbone import (
    Backbone,
    BackboneConfig,
    KVCache,
    RMSNorm,
    StaticKVCache,
    causal_mask,
)
from calm_core.config import ConfigError, validate_config

CFG = dict(hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, max_positions=64)


def make(**kw: object) -> Backbone:
    torch.manual_seed(0)
    model = Backbone(BackboneConfig.model_validate({**CFG, **kw}))
    # larger weights than the 0.02 init, so that every layer visibly matters
    for p in model.parameters():
        if p.dim() == 2:
            torch.nn.init.normal_(p, std=0.3)
    return model.eval()


def test_rmsnorm_matches_formula() -> None:
    norm = RMSNorm(8, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 1.5, 8))
    x = torch.randn(3, 8)
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * norm.weight
    torch.testing.assert_close(norm(x), expected)
    xb = x.to(torch.bfloat16)
    assert norm.to(torch.bfloat16)(xb).dtype == torch.bfloat16


def test_attention_equals_plain_softmax_reference() -> None:
    """One layer against a hand-written softmax(QK^T/sqrt(d))V with rotate-half RoPE."""
    model = make(num_layers=1)
    layer = model.layers[0]
    x = torch.randn(2, 7, 32)
    h = layer.input_layernorm(x)
    att = layer.self_attn
    B, T, hd = 2, 7, 8
    q = att.q_proj(h).view(B, T, 4, hd).transpose(1, 2)
    k = att.k_proj(h).view(B, T, 4, hd).transpose(1, 2)
    v = att.v_proj(h).view(B, T, 4, hd).transpose(1, 2)
    inv = 1.0 / (10000.0 ** (torch.arange(0, hd, 2).float() / hd))
    ang = torch.arange(T).float()[:, None] * inv[None]
    cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()

    def rot(t: torch.Tensor) -> torch.Tensor:
        return t * cos + torch.cat([-t[..., hd // 2 :], t[..., : hd // 2]], -1) * sin

    scores = rot(q) @ rot(k).transpose(-1, -2) / math.sqrt(hd)
    scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    a = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, 32)
    y = x + att.o_proj(a)
    y = y + layer.mlp(layer.post_attention_layernorm(y))
    torch.testing.assert_close(model(x), model.norm(y), rtol=1e-5, atol=1e-5)


def test_causal_future_inputs_do_not_change_the_past() -> None:
    model = make()
    x = torch.randn(2, 10, 32)
    y = x.clone()
    y[:, 6:] = torch.randn(2, 4, 32)
    a, b = model(x), model(y)
    torch.testing.assert_close(a[:, :6], b[:, :6])
    assert (a[:, 6:] - b[:, 6:]).abs().max() > 1e-3


def test_rotary_makes_attention_depend_on_relative_positions_only() -> None:
    model = make()
    x = torch.randn(1, 9, 32)
    shifted = model(x, positions=torch.arange(9) + 17)
    torch.testing.assert_close(model(x), shifted, rtol=1e-4, atol=1e-4)
    # but a non-uniform change of positions changes the output
    other = model(x, positions=torch.tensor([0, 1, 2, 3, 4, 9, 10, 11, 12]))
    assert (other - shifted).abs().max() > 1e-3


@pytest.mark.parametrize("cache_kind", ["static", "dynamic"])
def test_cache_prefill_then_steps_equals_full_forward(cache_kind: str) -> None:
    model = make(num_kv_heads=2)
    x = torch.randn(3, 12, 32)
    full = model(x)
    cache = StaticKVCache.for_module(model, 3, 16) if cache_kind == "static" else KVCache(2)
    parts = [model(x[:, :5], cache=cache)]
    parts.append(model(x[:, 5:8], cache=cache))  # multi-position chunk on a warm cache
    for t in range(8, 12):
        parts.append(model(x[:, t : t + 1], cache=cache))
    assert cache.seq_len == 12
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=1e-5, atol=1e-5)


def test_static_cache_writes_in_place_and_crops() -> None:
    model = make()
    cache = StaticKVCache.for_module(model, 1, 8)
    storage = cache.k.data_ptr()
    x = torch.randn(1, 6, 32)
    model(x[:, :4], cache=cache)
    first = model(x[:, 4:5], cache=cache)
    assert cache.k.data_ptr() == storage
    cache.crop(4)
    again = model(x[:, 4:5], cache=cache)
    torch.testing.assert_close(first, again)
    with pytest.raises(ValueError, match="overflow"):
        model(torch.randn(1, 5, 32), cache=cache)


def test_gqa_equals_full_attention_with_repeated_kv_weights() -> None:
    gqa = make(num_kv_heads=2)
    full = make(num_kv_heads=4)
    state = {}
    for name, p in gqa.state_dict().items():
        if name.endswith(("k_proj.weight", "v_proj.weight")):
            p = p.view(2, 8, 32).repeat_interleave(2, dim=0).reshape(32, 32)
        state[name] = p
    full.load_state_dict(state)
    x = torch.randn(2, 6, 32)
    torch.testing.assert_close(gqa(x), full(x), rtol=1e-5, atol=1e-5)


def test_left_padded_row_with_mask_and_positions_equals_row_alone() -> None:
    model = make()
    x = torch.randn(1, 5, 32)
    pad = 3
    xp = torch.cat([torch.randn(1, pad, 32), x], 1)
    valid = torch.tensor([[False] * pad + [True] * 5])
    positions = (valid.long().cumsum(1) - 1).clamp(min=0)
    mask = (valid[:, None, None, :] & causal_mask(8, 8)) | torch.eye(8, dtype=torch.bool)
    out = model(xp, positions=positions, attn_mask=mask)
    torch.testing.assert_close(out[:, pad:], model(x), rtol=1e-5, atol=1e-5)
    assert torch.isfinite(out).all()


def test_context_length_and_input_shape_errors() -> None:
    model = make(max_positions=8)
    with pytest.raises(ValueError, match="max_positions=8"):
        model(torch.randn(1, 9, 32))
    with pytest.raises(ValueError, match=r"\[B, T, 32\]"):
        model(torch.randn(1, 4, 31))


@pytest.mark.parametrize(
    ("bad", "needle"),
    [
        ({"num_heads": 5}, "divisible by num_heads"),
        ({"num_kv_heads": 3}, "multiple of num_kv_heads"),
        ({"hidden_size": 0}, "hidden_size"),
    ],
)
def test_config_errors_name_the_problem(bad: dict[str, int], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        validate_config(BackboneConfig, {**CFG, **bad})


def test_backbone_gradients_reach_every_parameter() -> None:
    model = make().train()
    model(torch.randn(2, 5, 32)).pow(2).mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_bf16_forward_follows_input_dtype_and_stays_close_to_fp32() -> None:
    x = torch.randn(1, 4, 32)
    ref = make()(x)
    out = make().to(torch.bfloat16)(x.to(torch.bfloat16))
    assert ref.dtype == torch.float32 and out.dtype == torch.bfloat16
    assert F.cosine_similarity(out.float().flatten(), ref.flatten(), dim=0) > 0.99
