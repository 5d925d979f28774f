"""The one key mapping between the reference implementation's autoencoder and ours.

The reference (shaochenze/calm, ``models/modeling_autoencoder.py``) keeps ``n_enc`` encoder layers
(the first half per token, the second half per chunk) and ``n_dec`` decoder layers (the first half
per chunk, the second half per token); its SwiGLU MLPs have separate ``gate_proj`` / ``up_proj``
matrices that we store fused as one ``gate_up`` matrix (gate rows first). Its
``decoder.lm_head_weight`` is the embedding itself (tied) and is accepted but not required.

``calm convert-reference`` and the parity tests both use :func:`autoencoder_from_reference`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from calm_codecs.autoencoder import AutoencoderConfig, ChunkAutoencoder

__all__ = [
    "autoencoder_config_from_reference",
    "autoencoder_from_reference",
    "autoencoder_to_reference",
    "reference_key_map",
]

_TIED_KEY = "decoder.lm_head_weight"


def autoencoder_config_from_reference(ref_config: Mapping[str, Any]) -> AutoencoderConfig:
    """Translate the reference's AE config dict (``ae_config``) into our config."""
    try:
        n_enc = int(ref_config["num_encoder_layers"])
        n_dec = int(ref_config["num_decoder_layers"])
        fields: dict[str, Any] = {
            "vocab_size": int(ref_config["vocab_size"]),
            "chunk_size": int(ref_config["patch_size"]),
            "latent_size": int(ref_config["latent_size"]),
            "hidden_size": int(ref_config["hidden_size"]),
            "intermediate_size": int(ref_config["intermediate_size"]),
        }
    except KeyError as exc:
        raise ValueError(f"reference AE config lacks the field {exc}") from None
    if n_enc != n_dec or n_enc % 2:
        raise ValueError(
            f"only reference autoencoders with equal, even encoder/decoder depths map onto "
            f"ChunkAutoencoder; got {n_enc} encoder and {n_dec} decoder layers"
        )
    if ref_config.get("mlp_bias", False):
        raise ValueError("reference autoencoders with mlp_bias=True are not supported")
    if ref_config.get("hidden_act", "silu") != "silu":
        raise ValueError(f"hidden_act {ref_config['hidden_act']!r} is not supported (only silu)")
    return AutoencoderConfig.model_validate(
        {
            **fields,
            "ffn_layers_per_stage": n_enc // 2,
            "rms_norm_eps": float(ref_config.get("rms_norm_eps", 1e-6)),
            "kl_weight": float(ref_config.get("kl_weight", 1e-3)),
            "kl_floor": float(ref_config.get("kl_clamp", 0.5)),
            "token_mask_rate": float(ref_config.get("ae_dropout", 0.15)),
            "latent_dropout": float(ref_config.get("ae_dropout", 0.15)),
            "mask_token": 0,
        }
    )


def reference_key_map(config: AutoencoderConfig) -> dict[str, str | tuple[str, str]]:
    """Our parameter name -> reference key, or a (gate, up) key pair for fused matrices."""
    n = config.ffn_layers_per_stage
    out: dict[str, str | tuple[str, str]] = {"embed.weight": "encoder.embed_tokens.weight"}

    def stage(ours: str, theirs: str, first: int) -> None:
        for i in range(n):
            p = f"{theirs}.{first + i}"
            out[f"{ours}.{i}.norm.weight"] = f"{p}.layernorm.weight"
            out[f"{ours}.{i}.gate_up.weight"] = (
                f"{p}.mlp.gate_proj.weight",
                f"{p}.mlp.up_proj.weight",
            )
            out[f"{ours}.{i}.down.weight"] = f"{p}.mlp.down_proj.weight"

    stage("enc_token_ffn", "encoder.encoder_layers", 0)
    stage("enc_chunk_ffn", "encoder.encoder_layers", n)
    stage("dec_chunk_ffn", "decoder.decoder_layers", 0)
    stage("dec_token_ffn", "decoder.decoder_layers", n)
    for ours, theirs in (
        ("enc_squeeze", "encoder.squeeze_layer"),
        ("to_latent", "encoder.hidden_to_latent"),
        ("from_latent", "decoder.latent_to_hidden"),
        ("dec_expand", "decoder.expand_layer"),
    ):
        out[f"{ours}.weight"] = f"{theirs}.weight"
        out[f"{ours}.bias"] = f"{theirs}.bias"
    out["enc_norm.weight"] = "encoder.norm.weight"
    out["dec_norm.weight"] = "decoder.norm.weight"
    return out


def autoencoder_from_reference(
    state_dict: Mapping[str, Tensor], ref_config: Mapping[str, Any]
) -> ChunkAutoencoder:
    """Build a :class:`ChunkAutoencoder` holding the reference AE's weights.

    Args:
        state_dict: reference key names (``encoder.embed_tokens.weight``, ...), prefix stripped.
        ref_config: the reference's AE config dict.

    Raises:
        ValueError: a key is missing or unexpected, or a shape does not match the config.
    """
    config = autoencoder_config_from_reference(ref_config)
    model = ChunkAutoencoder(config)
    mapping = reference_key_map(config)
    used: set[str] = set()
    state: dict[str, Tensor] = {}

    def take(key: str) -> Tensor:
        if key not in state_dict:
            raise ValueError(f"reference AE state dict lacks '{key}'")
        used.add(key)
        return state_dict[key]

    for ours, theirs in mapping.items():
        state[ours] = (
            torch.cat([take(k) for k in theirs]) if isinstance(theirs, tuple) else take(theirs)
        )
    if _TIED_KEY in state_dict:
        used.add(_TIED_KEY)
        if not torch.equal(state_dict[_TIED_KEY], state["embed.weight"]):
            raise ValueError(f"'{_TIED_KEY}' differs from the embedding; the reference ties them")
    unexpected = sorted(set(state_dict) - used)
    if unexpected:
        raise ValueError(
            f"reference AE state dict has unexpected keys {unexpected[:3]}"
            + (f" (and {len(unexpected) - 3} more)" if len(unexpected) > 3 else "")
            + "; is the prefix stripped and the config right?"
        )
    expected = model.state_dict()
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise ValueError(
                f"reference tensor for '{name}' has shape {tuple(tensor.shape)}, the config "
                f"implies {tuple(expected[name].shape)}"
            )
    model.load_state_dict(state, strict=True)
    return model.eval()


def autoencoder_to_reference(model: ChunkAutoencoder) -> dict[str, Tensor]:
    """The inverse of :func:`autoencoder_from_reference` (includes the tied lm_head key)."""
    if model.config.mask_token == "dedicated" or not model.config.variational:
        raise ValueError(
            "only variational autoencoders with mask_token=0 have a reference layout; this one "
            f"has mask_token={model.config.mask_token!r}, variational={model.config.variational}"
        )
    ours = model.state_dict()
    out: dict[str, Tensor] = {}
    for name, theirs in reference_key_map(model.config).items():
        if isinstance(theirs, tuple):
            gate, up = ours[name].chunk(2, dim=0)
            out[theirs[0]], out[theirs[1]] = gate.clone(), up.clone()
        else:
            out[theirs] = ours[name].clone()
    out[_TIED_KEY] = out["encoder.embed_tokens.weight"]
    return out
