"""Presets are plain data; analytic sizes and FLOPs reproduce the paper's Table 1."""

from __future__ import annotations

import json

import pytest
import torch
from calm_core.ar import ARModel
from calm_core.presets import (
    PRESETS,
    build_preset,
    decode_weights_per_token,
    flops_per_token,
    get_preset,
    parameter_count,
    preset_names,
)

#: paper Table 1: parameters and inference FLOPs per token
TABLE1 = {
    "transformer-s": (281e6, 4.4e8),
    "transformer-m": (465e6, 7.9e8),
    "transformer-l": (849e6, 15.0e8),
    "calm-m": (371e6, 2.9e8),
    "calm-l": (735e6, 4.6e8),
    "calm-xl": (1.82e9, 9.4e8),
}


@pytest.mark.parametrize("name", sorted(TABLE1))
def test_published_presets_match_table_1(name: str) -> None:
    params, flops = TABLE1[name]
    assert abs(parameter_count(name) / params - 1) < 0.01
    assert abs(flops_per_token(name) / flops - 1) < 0.05


def test_spec_shapes_are_exact() -> None:
    m = get_preset("calm-m")
    assert m["backbone"]["hidden_size"] == 1024 and m["backbone"]["num_layers"] == 16
    assert m["backbone"]["intermediate_size"] == 2752 and m["backbone"]["num_heads"] == 16
    assert m["head"] == {"name": "energy", "config": {"num_blocks": 4, "noise_size": 64}}
    assert m["codec"]["config"]["latent_size"] == 128 and m["codec"]["config"]["chunk_size"] == 4
    s = get_preset("transformer-s")["backbone"]
    assert (s["hidden_size"], s["num_layers"], s["intermediate_size"], s["num_heads"]) == (
        768, 12, 2048, 16,
    )  # fmt: skip
    bench = get_preset("bench")
    assert bench["backbone"]["hidden_size"] == 256 and bench["backbone"]["intermediate_size"] == 704
    assert bench["head"]["config"] == {"num_blocks": 2, "noise_size": 32}


def test_presets_are_plain_json_data_and_copies() -> None:
    for name in preset_names():
        assert json.loads(json.dumps(PRESETS[name])) == PRESETS[name]
    a = get_preset("calm-m")
    a["backbone"]["hidden_size"] = 1
    assert get_preset("calm-m")["backbone"]["hidden_size"] == 1024


def test_unknown_preset_suggests_close_names() -> None:
    with pytest.raises(KeyError, match="did you mean calm-m"):
        get_preset("calm-mm")


def test_training_flops_count_the_heads_samples_and_calm_is_cheaper_per_token() -> None:
    # CALM-M trains at ~0.31x the FLOPs of Transformer-M per token (3.7e20 / 11.9e20)
    ratio = flops_per_token("calm-m", training=True) / flops_per_token(
        "transformer-m", training=True
    )
    assert abs(ratio - 3.7 / 11.9) < 0.03
    assert flops_per_token("calm-m", training=True, num_samples=16) > flops_per_token(
        "calm-m", training=True
    )


def test_build_ar_preset_and_count_parameters() -> None:
    torch.manual_seed(0)
    model = build_preset("transformer-tiny")
    assert isinstance(model, ARModel)
    weights = sum(p.numel() for n, p in model.named_parameters() if "norm" not in n)
    assert weights == parameter_count("transformer-tiny")
    out = model(torch.randint(0, 128, (2, 16)))
    assert torch.isfinite(out["loss"])


def _weights(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.dim() >= 2)


def test_codec_parameter_count_matches_the_built_codec() -> None:
    torch.manual_seed(0)
    model = build_preset("calm-tiny")
    codec = parameter_count("calm-tiny", include_codec=True) - parameter_count("calm-tiny")
    assert codec == _weights(model.codec)  # the per-token FFNs are shared by the K positions


def test_decode_weights_count_what_one_generation_step_multiplies() -> None:
    torch.manual_seed(0)
    calm = build_preset("calm-tiny")
    K, d = 4, 32
    codec = calm.codec
    decoder = sum(
        _weights(getattr(codec, n))
        for n in ("from_latent", "dec_chunk_ffn", "dec_expand", "dec_token_ffn")
    )
    step = K * d + _weights(calm.embed_proj) + _weights(calm.backbone) + _weights(calm.head)
    step += decoder + codec.output_embedding().numel()
    assert decode_weights_per_token("calm-tiny") == step / K
    ar = build_preset("transformer-tiny")
    assert decode_weights_per_token("transformer-tiny") == d + _weights(ar.backbone) + _weights(
        ar.lm_head
    )


def test_calm_decodes_k_times_fewer_weights_only_at_published_scale() -> None:
    # at batch 1 a step reads every weight it uses once: CALM's advantage per weight read
    bench = decode_weights_per_token("transformer-bench") / decode_weights_per_token("calm-bench")
    assert bench == pytest.approx(2.393, abs=1e-3)  # 4 x 17.0 MB / 28.5 MB in fp32
    published = decode_weights_per_token("transformer-m") / decode_weights_per_token("calm-m")
    assert 4.2 < published < 4.4  # the codec's output matrix is at width 512, the AR's at 1024
