"""CALM with the real energy head and autoencoder codec (cross-package)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from calm_core.builders import build_preset
from calm_core.calm import CALM
from calm_core.model_dir import save_pretrained
from calm_core.presets import get_preset
from calm_core.registry import codecs

pytest.importorskip("calm_heads")
pytest.importorskip("calm_codecs")


def tiny(seed: int = 0) -> CALM:
    torch.manual_seed(seed)
    model = build_preset("calm-tiny")
    assert isinstance(model, CALM)
    # the energy head's output layer starts at zero; give it weights so samples differ
    for p in model.head.parameters():
        if p.dim() == 2:
            torch.nn.init.normal_(p, std=0.3)
    return model.eval()


def test_calm_energy_cached_generation_equals_recomputing_the_prefix() -> None:
    model = tiny()
    prompt = torch.randint(0, 128, (2, 8))
    out = model.generate(prompt, 12, generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    seq = prompt
    with torch.no_grad():
        for _ in range(3):
            h = model.hidden_states(seq)[:, -1]
            chunk = model.codec.decode_tokens(model.head.sample(h, 1, g)[0])
            seq = torch.cat([seq, chunk], 1)
    assert torch.equal(out, seq[:, 8:])


def test_calm_energy_training_steps_lower_the_loss() -> None:
    model = tiny().train()
    tokens = torch.randint(0, 128, (2, 16))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    torch.manual_seed(0)
    first = float(model(tokens)["loss"].detach())
    for _ in range(8):
        opt.zero_grad()
        model(tokens)["loss"].backward()
        opt.step()
    torch.manual_seed(0)
    assert float(model(tokens)["loss"].detach()) < first
    assert not model.codec.training


def test_calm_energy_low_temperature_and_round_trip(tmp_path: Path) -> None:
    model = tiny()
    prompt = torch.randint(0, 128, (2, 8))
    g = torch.Generator().manual_seed(0)
    batch = model.generate(prompt, 8, 0.5, sampling="batch", num_candidates=16, generator=g)
    exact = model.generate(prompt, 8, 0.5, generator=g, on_exhausted="fallback", max_draws=64)
    assert batch.shape == exact.shape == (2, 8)
    model.save_pretrained(tmp_path / "m")
    again = CALM.from_pretrained(tmp_path / "m")
    a = again.generate(prompt, 8, generator=torch.Generator().manual_seed(1))
    b = model.generate(prompt, 8, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


def test_calm_from_codec_directory_and_mismatch_errors(tmp_path: Path) -> None:
    codec = codecs.build(get_preset("calm-tiny")["codec"])
    save_pretrained(codec, tmp_path / "codec")
    model = CALM.from_codec(tmp_path / "codec", backbone={"hidden_size": 32, "num_heads": 4})
    assert model.vocab_size == codec.vocab_size and model.chunk_size == codec.chunk_size
    with pytest.raises(ValueError, match=r"chunk_size is 4 .* chunk_size=2"):
        CALM.from_codec(codec, backbone={"hidden_size": 32, "num_heads": 4}, chunk_size=2)
