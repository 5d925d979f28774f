"""GenerationOptions and the LanguageModel protocol: one options object for CALM and the AR model."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
import torch
from calm_core.ar import ARConfig, ARModel
from calm_core.backbone import BackboneConfig
from calm_core.calm import CALM
from calm_core.generation import (
    GenerationKwargs,
    GenerationOptions,
    LanguageModel,
    resolve_options,
)
from calm_core.registry import codecs, heads
from tiny_components import TinyCodec, TinyHead

V = 11


@pytest.fixture(autouse=True)
def _components() -> Iterator[None]:
    heads.register("test.opts_head", TinyHead, replace=True)
    codecs.register("test.opts_codec", TinyCodec, replace=True)
    yield
    heads.unregister("test.opts_head")
    codecs.unregister("test.opts_codec")


def _backbone() -> dict[str, int]:
    return dict(hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2, max_positions=32)


def _calm() -> CALM:
    torch.manual_seed(0)
    return CALM(
        {
            "backbone": _backbone(),
            "head": {"name": "test.opts_head"},
            "codec": {"name": "test.opts_codec", "config": {"vocab_size": V, "chunk_size": 2}},
            "pad_id": 0,
        }
    ).eval()


def _ar() -> ARModel:
    torch.manual_seed(0)
    config = ARConfig(backbone=BackboneConfig(**_backbone()), vocab_size=V, pad_id=0)
    return ARModel(config).eval()


def test_keyword_fields_are_the_dataclass_fields() -> None:
    """GenerationKwargs (for type checkers) names exactly the options besides the two leading
    positional ones, so the keyword style and ``options=`` cannot drift apart."""
    names = [f.name for f in dataclasses.fields(GenerationOptions)]
    assert names[:2] == ["max_new_tokens", "temperature"]
    assert list(GenerationKwargs.__annotations__) == names[2:]


def test_options_validate_on_construction() -> None:
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        GenerationOptions(max_new_tokens=0)
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        GenerationOptions(max_new_tokens=1, temperature=-0.5)
    with pytest.raises(ValueError, match="num_candidates must be >= 1"):
        GenerationOptions(max_new_tokens=1, num_candidates=0)
    with pytest.raises(ValueError, match="on_exhausted must be"):
        GenerationOptions(max_new_tokens=1, on_exhausted="skip")  # type: ignore[arg-type]
    with pytest.raises(dataclasses.FrozenInstanceError):
        GenerationOptions(max_new_tokens=1).temperature = 0.5  # type: ignore[misc]


def test_keywords_override_given_options() -> None:
    base = GenerationOptions(max_new_tokens=8, temperature=0.5, num_candidates=7)
    got = resolve_options(base, None, 0.25, {"stop_at_eos": False})
    assert (got.max_new_tokens, got.temperature, got.num_candidates) == (8, 0.25, 7)
    assert got.stop_at_eos is False and base.stop_at_eos is True
    assert resolve_options(None, 3, None, {}) == GenerationOptions(max_new_tokens=3)
    with pytest.raises(TypeError, match="needs max_new_tokens"):
        resolve_options(None, None, 0.5, {})
    with pytest.raises(TypeError, match="unexpected keyword"):
        resolve_options(None, 3, None, {"top_k": 5})  # type: ignore[typeddict-unknown-key]


@pytest.mark.parametrize("build", [_calm, _ar])
def test_options_and_keywords_generate_the_same(build: object) -> None:
    model = build()  # type: ignore[operator]
    assert isinstance(model, LanguageModel)
    prompt = [[1, 2, 3, 4]]

    def gen(seed: int) -> torch.Generator:
        return torch.Generator().manual_seed(seed)

    by_kw = model.generate(prompt, 6, 1.0, generator=gen(3))
    by_opts = model.generate(prompt, options=GenerationOptions(max_new_tokens=6, generator=gen(3)))
    assert torch.equal(by_kw, by_opts) and by_kw.shape == (1, 6)
    streamed = torch.cat(
        list(model.stream(prompt, options=GenerationOptions(6, generator=gen(3)))), 1
    )
    assert torch.equal(streamed, by_kw)
    other = model.generate(prompt, 6, generator=gen(4))
    overridden = model.generate(
        prompt, options=GenerationOptions(6, generator=gen(3)), generator=gen(4)
    )
    assert torch.equal(overridden, other)


def test_ar_model_refuses_calm_sampler_knobs() -> None:
    model = _ar()
    with pytest.raises(ValueError, match="CALM's likelihood-free temperature sampler"):
        model.generate([[1, 2]], 2, sampling="batch")
    with pytest.raises(ValueError, match="CALM's likelihood-free temperature sampler"):
        model.generate([[1, 2]], options=GenerationOptions(2, num_candidates=5))


def test_calm_batch_sampler_through_options() -> None:
    model = _calm()
    opts = GenerationOptions(4, 0.5, generator=torch.Generator().manual_seed(0), sampling="batch")
    out = model.generate([[1, 2]], options=opts)
    assert out.shape == (1, 4) and int(out.max()) < V
    with pytest.raises(ValueError, match=r"CALM temperature must be in \(0, 1\]"):
        model.generate([[1, 2]], options=GenerationOptions(4, temperature=0.0))


def test_a_codec_is_not_a_language_model() -> None:
    codec = codecs.build({"name": "test.opts_codec"})
    assert not isinstance(codec, LanguageModel)
