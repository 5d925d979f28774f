"""Reference-implementation checkpoints -> calm models (``calm convert-reference`` and parity).

A reference checkpoint directory holds the reference's Hugging Face style ``config.json`` and its
weights: ``model.safetensors``, ``pytorch_model.bin``, or shards listed in
``model.safetensors.index.json`` / ``pytorch_model.bin.index.json``. ``.bin`` files are read only
with ``torch.load(weights_only=True)``: a pickle that needs anything beyond tensors is refused.

Kinds, told apart by the config's fields (:attr:`ReferenceCheckpoint.kind`):

* autoencoder (``num_encoder_layers``) -> a codec;
* CALM with the energy head (``noise_size`` / ``num_mlp_layers`` and ``mlp_generator.*``
  weights) -> a CALM with the codec inside. The autoencoder comes from an explicit directory,
  else a path field of the config (:data:`AE_PATH_FIELDS`), else the ``ae_model.*`` tensors inside
  the checkpoint (its shape is read from those tensors, :func:`infer_ae_config`);
* a Llama causal LM (``model.*`` + ``lm_head.weight``) -> the AR baseline.

What is unusual: the key mappings of the plugins stay with them (the codec's and each head's
``from_reference`` classmethod); this module maps only what calm-core owns (the backbone, the
CALM input layers, the AR model's embeddings and LM head), drops the reference's duplicate keys,
and checks that a CALM and its autoencoder fit together. Every refusal is a
:class:`ReferenceConversionError` that names the problem and the fix.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from calm_core.ar import ARConfig, ARModel
from calm_core.backbone import BackboneConfig
from calm_core.calm import CALM
from calm_core.config import validate_config
from calm_core.hub_cache import HubError, is_hub_id, resolve_model_dir
from calm_core.interfaces import Codec
from calm_core.model_dir import load_pretrained, load_state_into, save_pretrained
from calm_core.registry import codecs, heads

__all__ = [
    "AE_PATH_FIELDS",
    "Conversion",
    "ReferenceCheckpoint",
    "ReferenceConversionError",
    "ar_from_reference",
    "backbone_config_from_reference",
    "calm_from_reference",
    "check_destination",
    "convert_checkpoint",
    "infer_ae_config",
    "read_reference_checkpoint",
    "special_ids_from_reference",
    "write_model_dir",
]

#: config fields through which a reference CALM config may name its autoencoder directory
AE_PATH_FIELDS = ("ae_path", "ae_name_or_path", "autoencoder_path")
_AE_PREFIX = "ae_model."
_HEAD_ALIAS = "generative_head."
_HEAD_PREFIX = "mlp_generator."

Kind = Literal["autoencoder", "calm-energy", "ar"]


class ReferenceConversionError(ValueError):
    """A reference checkpoint that cannot be read or converted; the message says why and how."""


# ----------------------------------------------------------------------------- reading files
class ReferenceCheckpoint:
    """A reference checkpoint directory read into memory: its config dict and tensors."""

    def __init__(self, path: Path, config: dict[str, Any], tensors: dict[str, Tensor]) -> None:
        self.path = path
        self.config = config
        self.tensors = tensors

    @property
    def kind(self) -> Kind:
        """``"autoencoder"``, ``"calm-energy"`` or ``"ar"``; raises for anything else."""
        cfg, keys = self.config, self.tensors.keys()
        if "num_encoder_layers" in cfg and "num_hidden_layers" not in cfg:
            return "autoencoder"
        if (
            "noise_size" in cfg
            or "num_mlp_layers" in cfg
            or any(k.startswith(_AE_PREFIX) for k in keys)
        ):
            if any(k.startswith((_HEAD_PREFIX, _HEAD_ALIAS)) for k in keys):
                return "calm-energy"
            found = sorted(
                {k.split(".", 1)[0] for k in keys} - {"transformer", "embed_proj", "ae_model"}
            )
            raise ReferenceConversionError(
                f"{self.path} is a reference CALM checkpoint without an energy generator "
                f"(mlp_generator.*; found top-level modules {found}); only the energy head has a "
                "reference conversion"
            )
        if "num_hidden_layers" in cfg and any(k.startswith("model.") for k in keys):
            return "ar"
        raise ReferenceConversionError(
            f"{self.path}/config.json is not a reference autoencoder, CALM or Llama config (no "
            "num_encoder_layers, noise_size or num_hidden_layers field)"
        )


def _load_bin(path: Path) -> dict[str, Tensor]:
    try:
        obj = torch.load(path, weights_only=True, map_location="cpu")
    except (RuntimeError, OSError, EOFError) as exc:
        raise ReferenceConversionError(
            f"{path} is not a readable PyTorch weights file: {exc}"
        ) from None
    except Exception as exc:  # the weights-only unpickler's refusal (an UnpicklingError)
        raise ReferenceConversionError(
            f"{path} holds objects other than tensors, which calm refuses to unpickle "
            f"(torch.load weights_only=True: {str(exc).splitlines()[0]}); re-save it as a plain "
            "state dict or as model.safetensors"
        ) from None
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ReferenceConversionError(
            f"{path} does not hold a state dict (a mapping of names to tensors)"
        )
    return {str(k): v for k, v in obj.items()}


def _load_safetensors(path: Path) -> dict[str, Tensor]:
    try:
        return dict(load_file(str(path), device="cpu"))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ReferenceConversionError(
            f"{path} is not a readable safetensors file: {exc}"
        ) from None


_LOADERS: tuple[tuple[str, str, Callable[[Path], dict[str, Tensor]]], ...] = (
    ("model.safetensors", "model.safetensors.index.json", _load_safetensors),
    ("pytorch_model.bin", "pytorch_model.bin.index.json", _load_bin),
)


def check_destination(src: str | Path, dst: str | Path, *, what: str = "SRC_DIR") -> None:
    """Refuse an output directory ``dst`` that is the input directory ``src`` or lies inside it:
    writing there (with ``--overwrite`` above all) would destroy the reference checkpoint being
    converted. ``what`` names the input in the message (``SRC_DIR``, ``--ae``)."""
    s, d = Path(src).resolve(), Path(dst).resolve()
    if d == s or s in d.parents:
        where = "is" if d == s else "lies inside"
        raise ReferenceConversionError(
            f"DST_DIR {dst} {where} {what} {src}: converting there would overwrite the "
            f"reference checkpoint; choose a DST_DIR outside {what}"
        )


def _check_shard_path(src: Path, shard: str, index_name: str) -> None:
    # absolute paths, ``..`` and links out of ``src`` are refused, so an index cannot make the
    # converter read files elsewhere
    root = src.resolve()
    if Path(shard).is_absolute() or root not in (root / shard).resolve().parents:
        raise ReferenceConversionError(
            f"{index_name} lists the shard {shard!r}, which is outside {src}; a shard index may "
            "name only files inside its own directory"
        )


def _load_weights(src: Path) -> dict[str, Tensor]:
    for single, _, loader in _LOADERS:
        if (src / single).is_file():
            return loader(src / single)
    for _, index_name, loader in _LOADERS:
        index_path = src / index_name
        if index_path.is_file():
            try:
                weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ReferenceConversionError(
                    f"{index_path} is not a shard index ({exc})"
                ) from None
            out: dict[str, Tensor] = {}
            for shard in sorted(set(weight_map.values())):
                _check_shard_path(src, str(shard), index_name)
                if not (src / shard).is_file():
                    raise ReferenceConversionError(
                        f"{index_path} lists the shard {shard}, which is missing"
                    )
                out.update(loader(src / shard))
            return out
    raise ReferenceConversionError(
        f"{src} holds no weights: expected model.safetensors or pytorch_model.bin (or a sharded "
        "*.index.json) next to config.json"
    )


def read_reference_checkpoint(src: str | Path) -> ReferenceCheckpoint:
    """Read ``config.json`` and the weights of a reference checkpoint directory.

    Raises:
        ReferenceConversionError: the directory, its config or its weights are missing or
            unreadable.
    """
    path = Path(src)
    if not path.is_dir():
        raise ReferenceConversionError(f"reference checkpoint directory {path} does not exist")
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise ReferenceConversionError(
            f"{path} has no config.json; is it a reference checkpoint directory?"
        )
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ReferenceConversionError(f"{cfg_path} is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise ReferenceConversionError(f"{cfg_path} must hold a JSON object")
    if "calm_format" in config:
        raise ReferenceConversionError(
            f"{path} is already a calm model directory; nothing to convert"
        )
    return ReferenceCheckpoint(path, config, _load_weights(path))


# ------------------------------------------------------------------------ config translation
def special_ids_from_reference(ref_config: Mapping[str, Any]) -> dict[str, int | None]:
    """``pad_id`` and ``eos_id`` from a Hugging Face config (``pad_token_id``,
    ``eos_token_id``; a list of EOS ids gives its first), None where absent or outside the
    vocabulary, so a converted model stops where the reference stops."""
    vocab = int(ref_config["vocab_size"])
    out: dict[str, int | None] = {}
    for ours, theirs in (("pad_id", "pad_token_id"), ("eos_id", "eos_token_id")):
        value = ref_config.get(theirs)
        if isinstance(value, list | tuple):
            value = value[0] if value else None
        out[ours] = int(value) if value is not None and 0 <= int(value) < vocab else None
    return out


def backbone_config_from_reference(ref_config: Mapping[str, Any]) -> BackboneConfig:
    """A :class:`BackboneConfig` from a Hugging Face ``LlamaConfig`` dict (CALM or AR)."""
    try:
        return BackboneConfig(
            hidden_size=int(ref_config["hidden_size"]),
            intermediate_size=int(ref_config["intermediate_size"]),
            num_layers=int(ref_config["num_hidden_layers"]),
            num_heads=int(ref_config["num_attention_heads"]),
            num_kv_heads=int(
                ref_config.get("num_key_value_heads") or ref_config["num_attention_heads"]
            ),
            rope_theta=float(ref_config.get("rope_theta", 10000.0)),
            rms_norm_eps=float(ref_config.get("rms_norm_eps", 1e-6)),
            max_positions=int(ref_config.get("max_position_embeddings", 2048)),
        )
    except KeyError as exc:
        raise ValueError(f"reference config lacks the field {exc.args[0]!r}") from None


def infer_ae_config(
    tensors: Mapping[str, Tensor], calm_config: Mapping[str, Any]
) -> dict[str, Any]:
    """A reference AE config dict read off the AE's tensor shapes (keys without ``ae_model.``).

    Used when a CALM checkpoint carries its autoencoder's weights but not its config. Training-only
    fields (KL weight and floor, dropout) take the reference defaults.
    """
    try:
        vocab, hidden = tensors["encoder.embed_tokens.weight"].shape
        inner = tensors["encoder.encoder_layers.0.mlp.gate_proj.weight"].shape[0]
        patch = tensors["encoder.squeeze_layer.weight"].shape[1] // hidden
        latent = tensors["encoder.hidden_to_latent.weight"].shape[0] // 2
    except KeyError as exc:
        raise ReferenceConversionError(
            f"the checkpoint's ae_model.* tensors lack {exc}; pass the autoencoder directory "
            "with --ae DIR"
        ) from None

    def depth(prefix: str) -> int:
        return len({k[len(prefix) :].split(".", 1)[0] for k in tensors if k.startswith(prefix)})

    return {
        "vocab_size": int(vocab),
        "hidden_size": int(hidden),
        "intermediate_size": int(inner),
        "patch_size": int(patch),
        "latent_size": int(latent),
        "num_encoder_layers": depth("encoder.encoder_layers."),
        "num_decoder_layers": depth("decoder.decoder_layers."),
        "rms_norm_eps": float(calm_config.get("rms_norm_eps", 1e-6)),
        "hidden_act": "silu",
        "mlp_bias": False,
        "kl_weight": 1e-3,
        "kl_clamp": 0.5,
        "ae_dropout": 0.15,
    }


# -------------------------------------------------------------------------- weight mappings
def _codec_from_reference(state: Mapping[str, Tensor], ae_config: Mapping[str, Any]) -> Codec:
    """The ``autoencoder`` codec's own mapping (calm-codecs), found through the registry."""
    try:
        cls = codecs.get("autoencoder")
    except KeyError as exc:
        raise ReferenceConversionError(
            f"{exc}; install calm-codecs to convert reference autoencoders"
        ) from None
    try:
        codec: Codec = cls.from_reference(state, ae_config)  # type: ignore[attr-defined]
    except ValueError as exc:
        raise ReferenceConversionError(f"cannot convert the reference autoencoder: {exc}") from None
    codec.registered_name = "autoencoder"  # saved (and put into a CALM) under this name
    return codec


def _decoder_keys(
    state_dict: Mapping[str, Tensor], prefix: str, keep: Callable[[str], bool]
) -> dict[str, Tensor]:
    """A reference decoder's tensors under our names: ``{prefix}embed_tokens.weight`` ->
    ``embed_tokens.weight``, the rest of ``{prefix}*`` -> ``backbone.*``; keys that ``keep``
    accepts stay as they are, any other key is not ours and is dropped."""
    ours: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if key.endswith("rotary_emb.inv_freq"):  # recomputed from the config
            continue
        if key == f"{prefix}embed_tokens.weight":
            ours["embed_tokens.weight"] = value
        elif key.startswith(prefix):
            ours["backbone." + key[len(prefix) :]] = value
        elif keep(key):
            ours[key] = value
    return ours


def calm_from_reference(
    state_dict: Mapping[str, Tensor],
    ref_config: Mapping[str, Any],
    *,
    codec: Codec | None = None,
    codec_config: Mapping[str, Any] | None = None,
    head: str = "energy",
    **fields: Any,
) -> CALM:
    """Load a reference CALM state dict (``transformer.*``, ``embed_proj.*``, head keys).

    Args:
        state_dict: reference key names with the fixture prefix stripped. ``ae_model.*`` keys,
            if present, give the codec (with ``codec_config``, the reference AE config).
        ref_config: the reference CALM config dict (``calm_config``).
        codec: an already converted codec; otherwise built via the registry's
            ``autoencoder.from_reference``.
        codec_config: the reference AE config, needed when ``codec`` is not given.
        head: registered head whose ``from_reference`` reads the generator keys.
        **fields: further :class:`~calm_core.calm.CALMConfig` fields (``eos_id``, ...).
    """
    if codec is None:
        ae_state = {
            k[len(_AE_PREFIX) :]: v for k, v in state_dict.items() if k.startswith(_AE_PREFIX)
        }
        if not ae_state or codec_config is None:
            raise ValueError(
                "no codec: pass codec=..., or include the 'ae_model.*' weights in state_dict "
                "together with codec_config (the reference AE config)"
            )
        codec = _codec_from_reference(ae_state, codec_config)
    head_module = heads.get(head).from_reference(  # type: ignore[attr-defined]
        state_dict,
        ref_config,
        hidden_size=int(ref_config["hidden_size"]),
        latent_size=codec.latent_size,
    )
    data: dict[str, Any] = {
        "backbone": backbone_config_from_reference(ref_config).model_dump(),
        "head": {"name": head, "config": head_module.config.model_dump(mode="json")},
        "vocab_size": int(ref_config["vocab_size"]),
        "chunk_size": int(ref_config["patch_size"]),
        **special_ids_from_reference(ref_config),
    }
    data.update(fields)
    model = CALM(data, codec=codec)
    ours = _decoder_keys(state_dict, "transformer.", lambda key: key.startswith("embed_proj."))
    ours.update({f"head.{k}": v for k, v in head_module.state_dict().items()})
    ours.update({f"codec.{k}": v for k, v in codec.state_dict().items()})
    load_state_into(model, ours, "reference CALM state dict")
    return model


def ar_from_reference(
    state_dict: Mapping[str, Tensor], ref_config: Mapping[str, Any], **fields: Any
) -> ARModel:
    """Load a Hugging Face ``LlamaForCausalLM`` state dict (``model.*``, ``lm_head.weight``).

    Args:
        state_dict: reference keys with any fixture prefix (``ar.``) already stripped.
        ref_config: the reference ``LlamaConfig`` as a dict.
        **fields: overrides for :class:`~calm_core.ar.ARConfig` fields
            (e.g. ``eos_id``).
    """
    backbone = backbone_config_from_reference(ref_config)
    tie = bool(ref_config.get("tie_word_embeddings", False)) or "lm_head.weight" not in state_dict
    data: dict[str, Any] = {
        "backbone": backbone.model_dump(),
        "vocab_size": int(ref_config["vocab_size"]),
        "tie_embeddings": tie,
        **special_ids_from_reference(ref_config),
    }
    data.update(fields)
    model = ARModel(validate_config(ARConfig, data))
    ours = _decoder_keys(state_dict, "model.", lambda key: key == "lm_head.weight")
    if tie:
        ours["lm_head.weight"] = ours["embed_tokens.weight"]
    load_state_into(model, ours, "reference LlamaForCausalLM state dict")
    return model


# ------------------------------------------------------------------------ whole checkpoints
@dataclass(frozen=True)
class Conversion:
    """A converted reference checkpoint: the model, its kind, and where its codec came from."""

    model: nn.Module
    kind: Kind
    source: Path
    autoencoder: str | None = None


def _split_calm_state(
    ckpt: ReferenceCheckpoint,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(CALM tensors without duplicates, AE tensors without ``ae_model.``)."""
    calm: dict[str, Tensor] = {}
    ae: dict[str, Tensor] = {}
    for key, value in ckpt.tensors.items():
        if key.startswith(_AE_PREFIX):
            ae[key[len(_AE_PREFIX) :]] = value
        elif key.startswith(_HEAD_ALIAS):
            # the reference registers its generator twice (generative_head is mlp_generator)
            twin = _HEAD_PREFIX + key[len(_HEAD_ALIAS) :]
            if twin in ckpt.tensors:
                if not torch.equal(ckpt.tensors[twin], value):
                    raise ReferenceConversionError(
                        f"{ckpt.path}: '{key}' differs from '{twin}'; the reference stores one "
                        "generator under both names, so this checkpoint is inconsistent"
                    )
            else:
                calm[twin] = value
        else:
            calm[key] = value
    return calm, ae


def _ae_dir_from_config(ckpt: ReferenceCheckpoint) -> Path | None:
    for field in AE_PATH_FIELDS:
        value = ckpt.config.get(field)
        if isinstance(value, str) and value:
            p = Path(value)
            candidates = [p] if p.is_absolute() else [ckpt.path / p, Path.cwd() / p]
            for c in candidates:
                if (c / "config.json").is_file():
                    return c
            if is_hub_id(value):  # the published configs name their autoencoder by Hub id
                try:
                    return resolve_model_dir(value)
                except HubError as exc:
                    raise ReferenceConversionError(str(exc)) from None
            raise ReferenceConversionError(
                f"{ckpt.path}/config.json names its autoencoder as {field}={value!r}, which is not "
                "a directory with config.json; pass the autoencoder directory with --ae DIR"
            )
    return None


def _convert_calm(ckpt: ReferenceCheckpoint, ae_dir: Path | None) -> Conversion:
    calm_state, ae_state = _split_calm_state(ckpt)
    ae_dir = ae_dir or _ae_dir_from_config(ckpt)
    if ae_dir is not None:
        ae_ckpt = read_reference_checkpoint(ae_dir)
        if ae_ckpt.kind != "autoencoder":
            raise ReferenceConversionError(
                f"--ae {ae_dir} is a reference {ae_ckpt.kind} checkpoint, not an autoencoder"
            )
        if ae_state:
            for key, value in ae_ckpt.tensors.items():
                if key in ae_state and not torch.equal(ae_state[key], value):
                    raise ReferenceConversionError(
                        f"the autoencoder in {ae_dir} differs from the ae_model.* weights inside "
                        f"{ckpt.path} (first at '{key}'); the CALM was trained with another codec"
                    )
        codec = _codec_from_reference(ae_ckpt.tensors, ae_ckpt.config)
        ae_source = str(ae_dir)
    elif ae_state:
        codec = _codec_from_reference(ae_state, infer_ae_config(ae_state, ckpt.config))
        ae_source = f"{ckpt.path} (ae_model.* tensors)"
    else:
        raise ReferenceConversionError(
            f"{ckpt.path} does not contain its autoencoder (no ae_model.* tensors) and its "
            f"config names none ({', '.join(AE_PATH_FIELDS)}); pass the autoencoder directory "
            "with --ae DIR"
        )
    for field, ours in (
        ("patch_size", "chunk_size"),
        ("latent_size", "latent_size"),
        ("vocab_size", "vocab_size"),
    ):
        want = ckpt.config.get(field)
        have = getattr(codec, ours)
        if want is not None and int(want) != int(have):
            raise ReferenceConversionError(
                f"the autoencoder ({ae_source}) has {ours}={have} but the CALM config has "
                f"{field}={want}; they do not fit together"
            )
    try:
        model = calm_from_reference(calm_state, ckpt.config, codec=codec)
    except ValueError as exc:
        raise ReferenceConversionError(f"cannot convert the reference CALM: {exc}") from None
    return Conversion(model, "calm-energy", ckpt.path, ae_source)


def convert_checkpoint(ckpt: ReferenceCheckpoint, *, ae: str | Path | None = None) -> Conversion:
    """Convert a reference checkpoint read by :func:`read_reference_checkpoint`.

    Args:
        ckpt: the checkpoint.
        ae: reference autoencoder directory, for CALM checkpoints (see the module doc).

    Raises:
        ReferenceConversionError: unsupported kind, missing or mismatched codec, bad weights.
    """
    kind = ckpt.kind
    if kind == "autoencoder":
        if ae is not None:
            raise ReferenceConversionError(
                "--ae applies to CALM checkpoints only; SRC is an autoencoder"
            )
        return Conversion(_codec_from_reference(ckpt.tensors, ckpt.config), kind, ckpt.path)
    if kind == "calm-energy":
        return _convert_calm(ckpt, Path(ae) if ae is not None else None)
    try:
        model = ar_from_reference(ckpt.tensors, ckpt.config)
    except (ValueError, RuntimeError) as exc:
        raise ReferenceConversionError(f"cannot convert the reference Llama model: {exc}") from None
    return Conversion(model, kind, ckpt.path)


def write_model_dir(conversion: Conversion, out: Path) -> dict[str, Any]:
    """Save a conversion as a calm model directory, check it reloads, record its provenance.

    Writes ``config.json`` + ``model.safetensors`` and ``converted_from.json`` (the summary).

    Returns:
        The summary: ``kind``, ``source``, ``destination``, ``parameters``, ``autoencoder``,
        ``weights_sha256``.

    Raises:
        ReferenceConversionError: ``out`` is or lies inside the source checkpoint directory, or
            the written directory does not reload bit-identically.
    """
    check_destination(conversion.source, out)
    model = conversion.model
    save_pretrained(model.eval(), out)
    # read it back: a directory that does not reload bit-identically is not worth keeping
    reloaded = load_pretrained(out)
    ours, back = model.state_dict(), reloaded.state_dict()
    bad = [k for k in ours if k not in back or not torch.equal(ours[k], back[k])]
    if bad:
        raise ReferenceConversionError(
            f"the converted model in {out} did not reload identically (at '{bad[0]}')"
        )
    summary = {
        "kind": conversion.kind,
        "source": str(conversion.source),
        "destination": str(out),
        "parameters": sum(p.numel() for p in model.parameters()),
        "autoencoder": conversion.autoencoder,
        "weights_sha256": hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest(),
    }
    (out / "converted_from.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary
