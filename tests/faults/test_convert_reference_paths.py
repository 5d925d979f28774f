"""``calm convert-reference`` never writes into the checkpoint it reads: DST equal to or inside
SRC is refused before anything is written (``--overwrite`` included), and a shard index may name
only files inside SRC."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from calm_core.ar import ARConfig, ARModel
from calm_core.reference import (
    ReferenceConversionError,
    convert_checkpoint,
    read_reference_checkpoint,
    write_model_dir,
)
from safetensors.torch import save_file

RunCLI = Callable[..., tuple[int, str]]

#: a Hugging Face LlamaConfig of one small layer
LLAMA = {"model_type": "llama", "vocab_size": 40, "hidden_size": 16, "intermediate_size": 32,
         "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2,
         "max_position_embeddings": 64, "rms_norm_eps": 1e-6, "tie_word_embeddings": False}  # fmt: skip


def _llama_state() -> dict[str, torch.Tensor]:
    """Reference ``LlamaForCausalLM`` keys (``model.*``, ``lm_head.weight``) of a tiny model."""
    torch.manual_seed(0)
    backbone = {"hidden_size": 16, "intermediate_size": 32, "num_layers": 1, "num_heads": 2,
                "max_positions": 64}  # fmt: skip
    cfg = ARConfig.model_validate({"backbone": backbone, "vocab_size": 40})
    out = {}
    for key, value in ARModel(cfg).state_dict().items():
        if key == "lm_head.weight":
            out[key] = value.clone()
        elif key == "embed_tokens.weight":
            out["model.embed_tokens.weight"] = value.clone()
        elif key.startswith("backbone."):
            out["model." + key[len("backbone.") :]] = value.clone()
    return out


@pytest.fixture
def src(tmp_path: Path) -> Path:
    d = tmp_path / "llama"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(LLAMA))
    save_file(_llama_state(), str(d / "model.safetensors"))
    return d


def _digest(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*"))}


def test_dst_outside_src_converts(src: Path, tmp_path: Path, run_cli: RunCLI) -> None:
    code, err = run_cli("convert-reference", src, tmp_path / "ours")
    assert code == 0, err
    assert (tmp_path / "ours" / "model.safetensors").is_file()


@pytest.mark.parametrize("where", ["same", "inside", "inside-nested"])
def test_dst_equal_to_or_inside_src_is_refused_before_writing(
    src: Path, run_cli: RunCLI, where: str
) -> None:
    dst = {"same": src, "inside": src / "converted", "inside-nested": src / "a" / ".." / "b"}[where]
    before = _digest(src)
    code, err = run_cli("convert-reference", src, dst, "--overwrite")
    assert code == 2, err
    assert ("is SRC_DIR" if where == "same" else "lies inside SRC_DIR") in err, err
    assert "choose a DST_DIR outside SRC_DIR" in err
    assert _digest(src) == before  # the reference checkpoint is untouched, nothing added


def test_library_refuses_to_write_into_the_source(src: Path) -> None:
    conversion = convert_checkpoint(read_reference_checkpoint(src))
    before = _digest(src)
    with pytest.raises(ReferenceConversionError, match="lies inside SRC_DIR"):
        write_model_dir(conversion, src / "out")
    assert _digest(src) == before


@pytest.mark.parametrize("shard", ["../outside.safetensors", "ABSOLUTE", "link.safetensors"])
def test_shard_index_entries_outside_src_are_refused(
    src: Path, tmp_path: Path, run_cli: RunCLI, shard: str
) -> None:
    outside = tmp_path / "outside.safetensors"
    (src / "model.safetensors").rename(outside)  # a real weights file, just not inside SRC
    if shard == "ABSOLUTE":
        shard = str(outside)
    elif shard == "link.safetensors":
        (src / shard).symlink_to(outside)
    weight_map = {k: shard for k in _llama_state()}
    (src / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    code, err = run_cli("convert-reference", src, tmp_path / "ours")
    assert code == 2, err
    assert f"lists the shard {shard!r}, which is outside" in err
    assert not (tmp_path / "ours").exists()


def test_dst_inside_the_ae_directory_is_refused(src: Path, tmp_path: Path, run_cli: RunCLI) -> None:
    ae = tmp_path / "ae"
    ae.mkdir()
    (ae / "config.json").write_text("{}")
    code, err = run_cli("convert-reference", src, ae / "out", "--ae", ae)
    assert code == 2, err
    assert "lies inside --ae" in err and "choose a DST_DIR outside --ae" in err
    assert sorted(p.name for p in ae.iterdir()) == ["config.json"]
