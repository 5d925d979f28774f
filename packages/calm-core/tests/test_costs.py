"""Costs: analytic sizes and FLOPs reproduce the paper's Table 1 and match the built modules;
hand-computed FLOPs at tiny shapes pin the conventions (causal context, loss term, codec once)."""

from __future__ import annotations

import pytest
import torch
from calm_core.ar import ARModel
from calm_core.builders import build_preset
from calm_core.costs import (
    ar_brier_flops,
    causal_context,
    codec_cost,
    decode_weights_per_token,
    flops_per_token,
    head_cost,
    parameter_count,
)
from calm_core.interfaces import Codec, GenerativeHead, LatentPosterior, weight_count
from torch.utils.flop_counter import FlopCounterMode

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


# ------------------------------------------------------------------ conventions, hand computed
def _ar(hidden: int = 4, kv: int = 1) -> dict[str, object]:
    backbone = {"hidden_size": hidden, "intermediate_size": 8, "num_layers": 1, "num_heads": 2,
                "num_kv_heads": kv, "max_positions": 64}  # fmt: skip
    return {"kind": "ar", "backbone": backbone, "vocab_size": 10}


def test_backbone_and_ar_flops_hand_computed() -> None:
    # H=4, I=8, 1 layer, 2 heads (hd 2), 1 KV head: qkv 2*4*(4+4)=64, o 32, mlp 6*4*8=192,
    # attention 4*ctx*H = 4*3*4 = 48 -> 336; the AR adds the output projection 2*H*V = 80
    assert flops_per_token(_ar(), context=3) == 336 + 80
    assert flops_per_token(_ar(), context=3, training=True) == 3 * (336 + 80)
    # by default a query attends the full context (Table 1's convention)
    assert flops_per_token(_ar()) == 336 - 48 + 4 * 64 * 4 + 80


def test_ar_brier_flops_counts_every_query_with_its_keys() -> None:
    # batch 2, 7 tokens, 4-grams: 7 teacher-forced positions seeing 1..7 keys, then 3 starts
    # (i = 0, 1, 2) rolled out 3 steps, start i at step j seeing i + 1 + j keys
    per = [flops_per_token(_ar(), context=keys) for keys in range(1, 8)]
    per += [flops_per_token(_ar(), context=i + 1 + j) for j in (1, 2, 3) for i in range(3)]
    assert ar_brier_flops(_ar(), batch=2, length=7, max_n=4) == pytest.approx(2 * sum(per))
    with pytest.raises(TypeError, match="AR model"):
        ar_brier_flops("calm-tiny", batch=1, length=8)


def test_causal_context_is_average_keys() -> None:
    assert causal_context(1) == 1
    assert causal_context(512) == pytest.approx(sum(range(1, 513)) / 512)


def test_calm_training_flops_count_codec_once_and_divide_by_k() -> None:
    backbone = {"hidden_size": 4, "intermediate_size": 8, "num_layers": 1, "num_heads": 2}
    codec = {"vocab_size": 10, "hidden_size": 4, "intermediate_size": 8, "latent_size": 2,
             "chunk_size": 2}  # fmt: skip
    head = {"num_blocks": 1, "noise_size": 3, "num_samples": 2, "num_target_samples": 5}
    spec = {"kind": "calm", "backbone": backbone, "head": {"name": "energy", "config": head},
            "codec": {"name": "autoencoder", "config": codec}}  # fmt: skip
    compress = 2 * 8 * 8 + 2 * 8 * 4
    core = compress + 2 * 4 * (4 + 8) + 32 + 192 + 4 * 2 * 4  # backbone at context 2
    # head: once 2*16 + 1*2*16 = 64; per sample 2*3*4 + 10*16 + 2*16 + 2*4*2 = 232;
    # energy loss 3*2*(2*5 + 2*1) = 72
    head_fwd = 64 + 2 * 232 + 72
    # encoder: K token FFNs 2*6*4*8, squeeze 2*(2*4)*4, chunk FFN 6*4*8, to (mean, log std) 2*4*4
    encoder = 2 * 6 * 4 * 8 + 2 * 8 * 4 + 6 * 4 * 8 + 2 * 4 * 4
    expected = (3 * (core + head_fwd) + encoder) / 2
    assert flops_per_token(spec, context=2, training=True) == pytest.approx(expected)


# ------------------------------------------------------------------- components report exactly
def _measured_flops(fn: object) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()  # type: ignore[operator]
    return int(counter.get_total_flops())


def test_energy_head_cost_is_what_its_matmuls_do() -> None:
    torch.manual_seed(0)
    spec = {"name": "energy", "config": {"num_blocks": 2, "noise_size": 5, "num_samples": 3}}
    head = build_preset("calm-tiny", head=spec).head
    cost = head.cost()
    assert cost.exact and cost.params == weight_count(head)
    hidden = torch.randn(1, head.hidden_size)
    with torch.no_grad():
        sampled = _measured_flops(lambda: head.sample(hidden, 4))
    assert sampled == 2 * (cost.macs_once + 4 * cost.macs_per_sample)
    noise = head.draw_noise(3, 1, hidden, None)
    with torch.no_grad():
        generated = _measured_flops(lambda: head.generate(hidden, noise))
    assert generated == 2 * cost.loss_macs  # the loss's N = 3 samples
    # the same head as a spec (built on meta) reports the same
    again = head_cost(spec, hidden_size=head.hidden_size, latent_size=head.latent_size)
    assert again == cost


def test_autoencoder_cost_is_what_its_matmuls_do() -> None:
    torch.manual_seed(0)
    codec = build_preset("calm-tiny").codec
    cost = codec.cost()
    assert cost.exact and cost.params == weight_count(codec)
    tokens = torch.randint(0, codec.vocab_size, (1, codec.chunk_size))
    with torch.no_grad():
        assert _measured_flops(lambda: codec.encode(tokens)) == 2 * cost.encoder_macs
        latent = torch.randn(1, codec.latent_size)
        assert _measured_flops(lambda: codec.decode(latent)) == 2 * cost.decoder_macs
    spec = build_preset("calm-tiny").config.codec.model_dump()
    assert codec_cost(spec) == cost


def test_the_default_cost_of_a_component_is_a_marked_estimate() -> None:
    torch.manual_seed(0)
    head = build_preset("calm-tiny").head
    default = GenerativeHead.cost(head, 3)  # what a head without its own cost() reports
    assert not default.exact and default.params == weight_count(head)
    assert default.macs_per_sample == default.params and default.loss_macs == 3 * default.params
    assert default.macs_once == 0 and default.loss_flops == 0
    codec = build_preset("calm-tiny").codec
    estimate = Codec.cost(codec)
    assert not estimate.exact and estimate.params == weight_count(codec)
    assert estimate.encoder_macs == estimate.decoder_macs == codec.chunk_size * estimate.params
    assert estimate.encoder_macs >= codec.cost().encoder_macs  # an upper bound here


@pytest.mark.parametrize(
    ("name", "config"),
    [
        ("diffusion", {"num_blocks": 2, "sampling_steps": 5, "num_target_samples": 3}),
        ("flow", {"num_blocks": 2, "steps": 3, "num_target_samples": 3}),
    ],
)
def test_network_heads_cost_is_what_their_matmuls_do(name: str, config: dict[str, int]) -> None:
    torch.manual_seed(0)
    built = build_preset("calm-tiny", head={"name": name, "config": config}).head
    cost = built.cost()
    assert cost.exact and cost.calls_per_sample == built.network_calls_per_sample
    hidden = torch.randn(1, built.hidden_size)
    with torch.no_grad():
        sampled = _measured_flops(lambda: built.sample(hidden, 2))
    assert sampled == 2 * (cost.macs_once + 2 * cost.macs_per_sample)
    mean = torch.zeros(1, built.latent_size)
    with torch.no_grad():
        loss = _measured_flops(lambda: built.loss(hidden, LatentPosterior(mean, mean + 1)))
    assert loss == 2 * cost.loss_macs
    spec = {"name": name, "config": config}
    assert head_cost(spec, hidden_size=32, latent_size=built.latent_size) == cost
