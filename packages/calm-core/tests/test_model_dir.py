"""Model directories: bitwise round trip, tied weights, and the error for every broken case."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import calm_core
import pytest
import torch
from calm_core.model_dir import (
    ComponentNotInstalledError,
    ModelLoadError,
    load_pretrained,
    read_config,
    save_pretrained,
)
from calm_core.registry import codecs, heads
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tiny_components import TinyCodec, TinyCodecConfig, TinyHead, TinyHeadConfig


class OtherCodec(TinyCodec):
    """Another codec class, to register under another name."""


@pytest.fixture
def registered() -> Iterator[None]:
    heads.register("test.tiny", TinyHead)
    codecs.register("test.codec", TinyCodec)
    yield
    heads.unregister("test.tiny")
    codecs.unregister("test.codec")


def _codec() -> TinyCodec:
    torch.manual_seed(0)
    codec = codecs.build({"name": "test.codec", "config": {"vocab_size": 13}})
    assert isinstance(codec, TinyCodec)
    return codec


def test_codec_round_trip_is_bitwise_and_keeps_ties(registered: None, tmp_path: Path) -> None:
    codec = _codec()
    save_pretrained(codec, tmp_path / "m")
    record = read_config(tmp_path / "m")
    assert record["type"] == "codec" and record["library_version"] == calm_core.__version__
    assert record["component"]["name"] == "test.codec"
    assert record["component"]["distribution"] == "<in-process>"
    assert record["config"] == {"vocab_size": 13, "chunk_size": 2, "latent_size": 4}
    stored = load_file(str(tmp_path / "m" / "model.safetensors"))
    assert "out.weight" not in stored, "tied weight stored twice"
    loaded = load_pretrained(tmp_path / "m", expected=TinyCodec)
    assert not loaded.training and loaded.registered_name == "test.codec"
    for k, v in codec.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    assert loaded.out.weight is loaded.embed.weight or torch.equal(
        loaded.out.weight, loaded.embed.weight
    )


def test_head_round_trip_records_context(registered: None, tmp_path: Path) -> None:
    torch.manual_seed(0)
    head = heads.build({"name": "test.tiny", "config": {"width": 3}}, hidden_size=5, latent_size=2)
    save_pretrained(head, tmp_path / "h")
    assert read_config(tmp_path / "h")["context"] == {"hidden_size": 5, "latent_size": 2}
    loaded = load_pretrained(tmp_path / "h")
    assert isinstance(loaded, TinyHead) and loaded.hidden_size == 5
    for k, v in head.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])
    with pytest.raises(TypeError, match="holds a TinyHead, not a TinyCodec"):
        load_pretrained(tmp_path / "h", expected=TinyCodec)


def test_saving_uses_the_name_the_registry_built_under(registered: None, tmp_path: Path) -> None:
    # one class under two names (a plugin re-exporting a built-in): the name it was built under
    # is the one saved, never a reverse lookup of the class
    codecs.register("test.alias", TinyCodec)
    try:
        codec = codecs.build({"name": "test.alias", "config": {"vocab_size": 13}})
        assert codec.registered_name == "test.alias"
        save_pretrained(codec, tmp_path / "m")
        assert read_config(tmp_path / "m")["component"]["name"] == "test.alias"
        assert load_pretrained(tmp_path / "m").registered_name == "test.alias"
    finally:
        codecs.unregister("test.alias")


def test_a_component_constructed_directly_needs_a_name(registered: None, tmp_path: Path) -> None:
    codec = TinyCodec(TinyCodecConfig(vocab_size=13))
    with pytest.raises(TypeError, match=r"constructed directly.*codecs\.build.*name="):
        save_pretrained(codec, tmp_path / "m")
    assert not (tmp_path / "m").exists(), "refused before writing anything"
    save_pretrained(codec, tmp_path / "m", name="test.codec")
    assert read_config(tmp_path / "m")["component"]["name"] == "test.codec"
    codecs.register("test.other", OtherCodec)
    try:
        with pytest.raises(TypeError, match=r"codec 'test.other' is .*OtherCodec, not this "):
            save_pretrained(codec, tmp_path / "x", name="test.other")
    finally:
        codecs.unregister("test.other")
    with pytest.raises(KeyError, match="no codec named 'test.nope'"):
        save_pretrained(codec, tmp_path / "x", name="test.nope")
    head = TinyHead(TinyHeadConfig(width=3), hidden_size=5, latent_size=2)
    save_pretrained(head, tmp_path / "h", name="test.tiny")
    assert load_pretrained(tmp_path / "h").registered_name == "test.tiny"


def test_missing_provider_names_distribution(registered: None, tmp_path: Path) -> None:
    save_pretrained(_codec(), tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["component"].update(name="acme.codec", distribution="acme-calm-codecs", version="2.0.1")
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ComponentNotInstalledError) as err:
        load_pretrained(tmp_path / "m")
    msg = str(err.value)
    assert "codec 'acme.codec'" in msg and "pip install 'acme-calm-codecs==2.0.1'" in msg


def test_every_missing_component_is_named_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from calm_core.model_dir import ensure_installed

    head = {"group": "calm.heads", "name": "acme.head", "distribution": "acme-h", "version": "1"}
    codec = {"group": "calm.codecs", "name": "acme.codec", "distribution": "acme-c", "version": ""}
    with pytest.raises(ComponentNotInstalledError) as err:
        ensure_installed(head, codec)
    msg = str(err.value)
    assert "pip install 'acme-h==1'" in msg and "pip install 'acme-c'" in msg
    assert "discovery is off" not in msg
    monkeypatch.setenv("CALM_DISABLE_PLUGINS", "1")
    with pytest.raises(ComponentNotInstalledError, match="Third-party discovery is off"):
        ensure_installed(head)


def test_truncated_weights(registered: None, tmp_path: Path) -> None:
    save_pretrained(_codec(), tmp_path / "m")
    w = tmp_path / "m" / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match=r"model.safetensors is corrupted or truncated"):
        load_pretrained(tmp_path / "m")


def test_garbage_weights(registered: None, tmp_path: Path) -> None:
    save_pretrained(_codec(), tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ModelLoadError, match="corrupted or truncated"):
        load_pretrained(tmp_path / "m")


@pytest.mark.parametrize(
    ("device", "needle"),
    [
        ("bogus", "'bogus' is not a torch device"),
        ("meta", "cannot be loaded onto the 'meta' device"),
        pytest.param(
            "cuda",
            "device 'cuda' is not available",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present"),
        ),
    ],
)
def test_a_bad_device_is_named_not_blamed_on_the_file(
    registered: None, tmp_path: Path, device: str, needle: str
) -> None:
    save_pretrained(_codec(), tmp_path / "m")
    with pytest.raises(ModelLoadError, match=needle) as err:
        load_pretrained(tmp_path / "m", map_location=device)
    assert "corrupted" not in str(err.value)


def test_missing_and_misshapen_tensor(registered: None, tmp_path: Path) -> None:
    save_pretrained(_codec(), tmp_path / "m")
    w = tmp_path / "m" / "model.safetensors"
    state = load_file(str(w))
    with safe_open(str(w), framework="pt") as f:
        meta = f.metadata()
    del state["enc.bias"]
    save_file(state, str(w), metadata=meta)
    with pytest.raises(ModelLoadError, match=r"model.safetensors lacks tensor 'enc.bias'"):
        load_pretrained(tmp_path / "m")
    state["enc.bias"] = torch.zeros(3)
    save_file(state, str(w), metadata=meta)
    with pytest.raises(ModelLoadError, match=r"tensor 'enc.bias' has shape \(3,\).*expects \(8,\)"):
        load_pretrained(tmp_path / "m")


def test_not_a_model_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_pretrained(tmp_path / "nope")
    (tmp_path / "ref").mkdir()
    (tmp_path / "ref" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ModelLoadError, match="calm convert-reference"):
        load_pretrained(tmp_path / "ref")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="config.json is missing"):
        load_pretrained(tmp_path / "empty")


def test_unregistered_component_cannot_be_saved(tmp_path: Path) -> None:
    codecs.register("test.codec", TinyCodec)
    codec = _codec()
    codecs.unregister("test.codec")  # its name no longer resolves: nothing could load it
    with pytest.raises(KeyError, match="no codec named 'test.codec'"):
        save_pretrained(codec, tmp_path / "m")
    with pytest.raises(TypeError, match="constructed directly"):
        save_pretrained(TinyCodec(TinyCodecConfig(vocab_size=13)), tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_files_of_two_saves_are_refused_not_paired(registered: None, tmp_path: Path) -> None:
    # a crash between the two renames: the new weights land, the old config.json stays
    save_pretrained(_codec(), tmp_path / "m")
    old_config = (tmp_path / "m" / "config.json").read_text()
    save_pretrained(_codec(), tmp_path / "m")
    assert json.loads(old_config)["save_id"] != read_config(tmp_path / "m")["save_id"]
    load_pretrained(tmp_path / "m")  # one save: fine
    (tmp_path / "m" / "config.json").write_text(old_config)
    with pytest.raises(ModelLoadError, match="come from two different saves"):
        load_pretrained(tmp_path / "m")
    # directories written before save ids existed still load
    record = json.loads(old_config)
    del record["save_id"]
    (tmp_path / "m" / "config.json").write_text(json.dumps(record))
    load_pretrained(tmp_path / "m")


def test_saved_files_follow_the_umask_and_leave_no_temporaries(
    registered: None, tmp_path: Path
) -> None:
    import os
    import stat

    d = tmp_path / "m"
    d.mkdir()
    (d / ".model.safetensors.tmp").write_bytes(b"left by a killed save")
    old = os.umask(0o022)
    try:
        save_pretrained(_codec(), d)
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in d.iterdir()}
    assert modes == {"config.json": 0o644, "model.safetensors": 0o644}
