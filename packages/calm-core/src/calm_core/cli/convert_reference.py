"""``calm convert-reference SRC DST``: reference-implementation checkpoints -> calm model dirs.

A reference checkpoint directory holds the reference's Hugging Face style ``config.json`` and its
weights: ``model.safetensors``, ``pytorch_model.bin``, or shards listed in
``model.safetensors.index.json`` / ``pytorch_model.bin.index.json``. ``.bin`` files are read only
with ``torch.load(weights_only=True)``: a pickle that needs anything beyond tensors is refused.

What is unusual: this module holds no key mapping of its own. Each kind is handed to the one
``from_reference`` classmethod that owns its mapping (the autoencoder codec's, the CALM model's,
the AR baseline's); here we only read files, pick the kind, resolve the autoencoder a CALM
checkpoint was trained with, drop the reference's duplicate keys, and write the model directory.

Kinds, told apart by the config's fields:

* autoencoder (``num_encoder_layers``) -> a codec model directory;
* CALM with the energy head (``noise_size`` / ``num_mlp_layers`` and ``mlp_generator.*``
  weights) -> a CALM model directory with the codec inside. The autoencoder comes from
  ``--ae DIR``, else a path field of the config (``ae_path``, ``ae_name_or_path``), else the
  ``ae_model.*`` tensors inside the checkpoint (its shape is read from those tensors);
* a Llama causal LM (``model.*`` + ``lm_head.weight``) -> the AR baseline.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from calm_core.cli.common import (
    CLIError,
    prepare_output_dir,
    print_resolved_config,
    resolve_config,
    usage_errors,
)
from calm_core.config import ConfigModel
from calm_core.validation import check_convert_paths, check_shard_path

if TYPE_CHECKING:  # torch is imported only when a conversion runs (``calm --help`` stays fast)
    from torch import Tensor, nn

    from calm_core.interfaces import Codec

__all__ = [
    "AE_PATH_FIELDS",
    "HELP",
    "ConvertReferenceConfig",
    "ReferenceCheckpoint",
    "add_arguments",
    "convert_reference",
    "infer_ae_config",
    "read_reference_checkpoint",
    "run",
]

HELP = (
    "Convert a reference-implementation checkpoint (autoencoder, CALM energy, or Llama AR) into "
    "a calm model directory."
)

#: config fields through which a reference CALM config may name its autoencoder directory
AE_PATH_FIELDS = ("ae_path", "ae_name_or_path", "autoencoder_path")
_AE_PREFIX = "ae_model."
_HEAD_ALIAS = "generative_head."
_HEAD_PREFIX = "mlp_generator."


class ConvertReferenceConfig(ConfigModel):
    """Settings of ``calm convert-reference`` besides SRC and DST (``--config`` may set them)."""

    ae: str | None = Field(
        None, description="Reference autoencoder directory for a CALM checkpoint."
    )


class ReferenceCheckpoint:
    """A reference checkpoint directory read into memory: its config dict and tensors."""

    def __init__(self, path: Path, config: dict[str, Any], tensors: dict[str, Tensor]) -> None:
        self.path = path
        self.config = config
        self.tensors = tensors

    @property
    def kind(self) -> str:
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
            heads = sorted(
                {k.split(".", 1)[0] for k in keys} - {"transformer", "embed_proj", "ae_model"}
            )
            raise CLIError(
                f"{self.path} is a reference CALM checkpoint without an energy generator "
                f"(mlp_generator.*; found top-level modules {heads}); only the energy head has a "
                "reference conversion"
            )
        if "num_hidden_layers" in cfg and any(k.startswith("model.") for k in keys):
            return "ar"
        raise CLIError(
            f"{self.path}/config.json is not a reference autoencoder, CALM or Llama config (no "
            "num_encoder_layers, noise_size or num_hidden_layers field)"
        )


def _load_bin(path: Path) -> dict[str, Tensor]:
    import torch

    try:
        obj = torch.load(path, weights_only=True, map_location="cpu")
    except (RuntimeError, OSError, EOFError) as exc:
        raise CLIError(f"{path} is not a readable PyTorch weights file: {exc}") from None
    except Exception as exc:  # the weights-only unpickler's refusal (an UnpicklingError)
        raise CLIError(
            f"{path} holds objects other than tensors, which calm refuses to unpickle "
            f"(torch.load weights_only=True: {str(exc).splitlines()[0]}); re-save it as a plain "
            "state dict or as model.safetensors"
        ) from None
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CLIError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return {str(k): v for k, v in obj.items()}


def _load_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return dict(load_file(str(path), device="cpu"))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CLIError(f"{path} is not a readable safetensors file: {exc}") from None


def _load_weights(src: Path) -> dict[str, Tensor]:
    for single, loader in (
        ("model.safetensors", _load_safetensors),
        ("pytorch_model.bin", _load_bin),
    ):
        if (src / single).is_file():
            return loader(src / single)
    for index_name, loader in (
        ("model.safetensors.index.json", _load_safetensors),
        ("pytorch_model.bin.index.json", _load_bin),
    ):
        index_path = src / index_name
        if index_path.is_file():
            try:
                weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise CLIError(f"{index_path} is not a shard index ({exc})") from None
            out: dict[str, Tensor] = {}
            for shard in sorted(set(weight_map.values())):
                with usage_errors():  # issue 23 hook: shards inside SRC only
                    check_shard_path(src, str(shard), index_name)
                if not (src / shard).is_file():
                    raise CLIError(f"{index_path} lists the shard {shard}, which is missing")
                out.update(loader(src / shard))
            return out
    raise CLIError(
        f"{src} holds no weights: expected model.safetensors or pytorch_model.bin (or a sharded "
        "*.index.json) next to config.json"
    )


def read_reference_checkpoint(src: str | Path) -> ReferenceCheckpoint:
    """Read ``config.json`` and the weights of a reference checkpoint directory.

    Raises:
        CLIError: the directory, its config or its weights are missing or unreadable.
    """
    path = Path(src)
    if not path.is_dir():
        raise CLIError(f"reference checkpoint directory {path} does not exist")
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise CLIError(f"{path} has no config.json; is it a reference checkpoint directory?")
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CLIError(f"{cfg_path} is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise CLIError(f"{cfg_path} must hold a JSON object")
    if "calm_format" in config:
        raise CLIError(f"{path} is already a calm model directory; nothing to convert")
    return ReferenceCheckpoint(path, config, _load_weights(path))


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
        raise CLIError(
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


def _ae_dir_from_config(ckpt: ReferenceCheckpoint) -> Path | None:
    for field in AE_PATH_FIELDS:
        value = ckpt.config.get(field)
        if isinstance(value, str) and value:
            p = Path(value)
            candidates = [p] if p.is_absolute() else [ckpt.path / p, Path.cwd() / p]
            for c in candidates:
                if (c / "config.json").is_file():
                    return c
            raise CLIError(
                f"{ckpt.path}/config.json names its autoencoder as {field}={value!r}, which is not "
                "a directory with config.json; pass the autoencoder directory with --ae DIR"
            )
    return None


def _build_codec(state: Mapping[str, Tensor], ae_config: Mapping[str, Any]) -> Codec:
    from calm_core.registry import codecs

    try:
        cls = codecs.get("autoencoder")
    except KeyError as exc:
        raise CLIError(f"{exc}; install calm-codecs to convert reference autoencoders") from None
    try:
        return cls.from_reference(state, ae_config)  # type: ignore[attr-defined,no-any-return]
    except ValueError as exc:
        raise CLIError(f"cannot convert the reference autoencoder: {exc}") from None


def _split_calm_state(
    ckpt: ReferenceCheckpoint,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(CALM tensors without duplicates, AE tensors without ``ae_model.``)."""
    import torch

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
                    raise CLIError(
                        f"{ckpt.path}: '{key}' differs from '{twin}'; the reference stores one "
                        "generator under both names, so this checkpoint is inconsistent"
                    )
            else:
                calm[twin] = value
        else:
            calm[key] = value
    return calm, ae


def _convert_calm(ckpt: ReferenceCheckpoint, ae_dir: Path | None) -> tuple[nn.Module, str]:
    import torch

    calm_state, ae_state = _split_calm_state(ckpt)
    ae_dir = ae_dir or _ae_dir_from_config(ckpt)
    if ae_dir is not None:
        ae_ckpt = read_reference_checkpoint(ae_dir)
        if ae_ckpt.kind != "autoencoder":
            raise CLIError(
                f"--ae {ae_dir} is a reference {ae_ckpt.kind} checkpoint, not an autoencoder"
            )
        if ae_state:
            for key, value in ae_ckpt.tensors.items():
                if key in ae_state and not torch.equal(ae_state[key], value):
                    raise CLIError(
                        f"the autoencoder in {ae_dir} differs from the ae_model.* weights inside "
                        f"{ckpt.path} (first at '{key}'); the CALM was trained with another codec"
                    )
        codec = _build_codec(ae_ckpt.tensors, ae_ckpt.config)
        ae_source = str(ae_dir)
    elif ae_state:
        codec = _build_codec(ae_state, infer_ae_config(ae_state, ckpt.config))
        ae_source = f"{ckpt.path} (ae_model.* tensors)"
    else:
        raise CLIError(
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
            raise CLIError(
                f"the autoencoder ({ae_source}) has {ours}={have} but the CALM config has "
                f"{field}={want}; they do not fit together"
            )
    from calm_core.calm import CALM

    try:
        model = CALM.from_reference(calm_state, ckpt.config, codec=codec)
    except ValueError as exc:
        raise CLIError(f"cannot convert the reference CALM: {exc}") from None
    return model, ae_source


def _convert_ar(ckpt: ReferenceCheckpoint) -> nn.Module:
    from calm_core.transformer_lm import TransformerLM

    try:
        return TransformerLM.from_reference(ckpt.tensors, ckpt.config)
    except (ValueError, RuntimeError) as exc:
        raise CLIError(f"cannot convert the reference Llama model: {exc}") from None


def convert_reference(
    src: str | Path, dst: str | Path, *, ae: str | Path | None = None, overwrite: bool = False
) -> dict[str, Any]:
    """Convert a reference checkpoint directory into a calm model directory.

    Args:
        src: reference directory (``config.json`` + weights).
        dst: output model directory; must be empty or absent unless ``overwrite``.
        ae: reference autoencoder directory, for CALM checkpoints (optional, see module doc).
        overwrite: replace files in a non-empty ``dst``.

    Returns:
        A summary: ``kind``, ``source``, ``destination``, ``parameters``, ``autoencoder``.

    Raises:
        CLIError: unreadable input, unsupported kind, mismatched codec, unwritable output.
    """
    import torch

    with usage_errors():  # issue 23 hook: DST equal to / inside SRC, before anything is touched
        check_convert_paths(src, dst)
    ckpt = read_reference_checkpoint(src)
    kind = ckpt.kind
    created = not Path(dst).exists()
    out = prepare_output_dir(dst, overwrite=overwrite)  # checked before the slow part
    ae_source: str | None = None
    model: nn.Module
    try:
        if kind == "autoencoder":
            if ae is not None:
                raise CLIError("--ae applies to CALM checkpoints only; SRC is an autoencoder")
            model = _build_codec(ckpt.tensors, ckpt.config)
        elif kind == "calm-energy":
            model, ae_source = _convert_calm(ckpt, Path(ae) if ae is not None else None)
        else:
            model = _convert_ar(ckpt)
    except BaseException:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # leave no empty directory behind a failed conversion
        raise
    from calm_core.model_dir import load_pretrained, save_pretrained

    save_pretrained(model.eval(), out)
    # read it back: a directory that does not reload bit-identically is not worth keeping
    reloaded = load_pretrained(out)
    ours, back = model.state_dict(), reloaded.state_dict()
    bad = [k for k in ours if k not in back or not torch.equal(ours[k], back[k])]
    if bad:
        raise CLIError(f"the converted model in {out} did not reload identically (at '{bad[0]}')")
    summary = {
        "kind": kind,
        "source": str(ckpt.path),
        "destination": str(out),
        "parameters": sum(p.numel() for p in model.parameters()),
        "autoencoder": ae_source,
        "weights_sha256": hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest(),
    }
    (out / "converted_from.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", metavar="SRC_DIR", help="reference checkpoint directory")
    parser.add_argument("dst", metavar="DST_DIR", help="calm model directory to write")
    parser.add_argument(
        "--ae",
        metavar="AE_DIR",
        default=None,
        help="reference autoencoder directory for a CALM checkpoint (default: the config's "
        "ae_path field, else the checkpoint's own ae_model.* tensors)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the contents of a non-empty DST_DIR"
    )
    parser.add_argument("--config", metavar="FILE", help="JSON/TOML file with these settings")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")


def run(args: argparse.Namespace) -> int:
    cfg = resolve_config(ConvertReferenceConfig, args.config, {"ae": args.ae})
    print_resolved_config(
        "calm convert-reference config",
        {"src": args.src, "dst": args.dst, **cfg.model_dump(), "overwrite": args.overwrite},
    )
    summary = convert_reference(args.src, args.dst, ae=cfg.ae, overwrite=args.overwrite)
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    else:
        print(
            f"converted reference {summary['kind']} checkpoint {summary['source']} -> "
            f"{summary['destination']} ({summary['parameters']:,} parameters"
            + (f"; autoencoder from {summary['autoencoder']}" if summary["autoencoder"] else "")
            + ")"
        )
        print(
            "note: reference checkpoints do not include a calm tokenizer; pair the model with the "
            "tokenizer it was trained with (Llama-3 for the published CALM models)",
            file=sys.stderr,
        )
    return 0
