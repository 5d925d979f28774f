"""CALM with tiny in-process components: training forward, frozen codec, generation semantics.

The head here can be made deterministic (``noise=0``), so cache/padding equivalences compare
exact token paths; the stochastic head (``noise=1``) covers seeds and temperature sampling.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from calm_core.calm import CALM
from calm_core.config import ConfigError, ConfigModel
from calm_core.interfaces import GenerativeHead, LatentPosterior
from calm_core.registry import codecs, heads
from pydantic import Field
from tiny_components import TinyCodec
from torch import Tensor, nn

V, K = 11, 2


class ScaledHeadConfig(ConfigModel):
    noise: float = Field(1.0, ge=0)


class ScaledHead(GenerativeHead):
    """sample = W h + noise * eps; counts sample calls."""

    config_class = ScaledHeadConfig

    def __init__(self, config: ScaledHeadConfig, *, hidden_size: int, latent_size: int) -> None:
        super().__init__(config, hidden_size=hidden_size, latent_size=latent_size)
        self.net = nn.Linear(hidden_size, latent_size)
        self.calls: list[int] = []

    def loss(self, hidden: Tensor, target: LatentPosterior) -> Tensor:
        return (self.net(hidden) - target.mean).pow(2).sum(-1)

    def sample(
        self, hidden: Tensor, num_samples: int = 1, generator: torch.Generator | None = None
    ) -> Tensor:
        self.calls.append(num_samples)
        mean = self.net(hidden)
        eps = torch.randn((num_samples, *mean.shape), generator=generator, dtype=mean.dtype)
        return mean + self.config.noise * eps  # type: ignore[attr-defined]


@pytest.fixture(autouse=True)
def _components() -> Iterator[None]:
    heads.register("test.scaled", ScaledHead, replace=True)
    codecs.register("test.tinycodec", TinyCodec, replace=True)
    yield
    heads.unregister("test.scaled")
    codecs.unregister("test.tinycodec")


def make(noise: float = 0.0, **fields: object) -> CALM:
    torch.manual_seed(0)
    data = {
        "backbone": dict(
            hidden_size=16, intermediate_size=32, num_layers=2, num_heads=2, max_positions=24
        ),
        "head": {"name": "test.scaled", "config": {"noise": noise}},
        "codec": {"name": "test.tinycodec", "config": {"vocab_size": V, "chunk_size": K}},
        "pad_id": 0,
        **fields,
    }
    model = CALM(data)
    for name, p in model.named_parameters():
        if p.dim() == 2 and not name.startswith("codec."):
            nn.init.normal_(p, std=0.5)
    with torch.no_grad():
        for p in model.codec.parameters():
            p.normal_(0, 1.0)
    return model.eval()


def test_training_forward_scores_next_chunks_against_frozen_codec_targets() -> None:
    model = make().train()
    tokens = torch.randint(1, V, (2, 8))
    out = model(tokens)
    chunks = tokens.view(2, 4, K)
    hidden = model.backbone(model.embed_chunks(chunks[:, :-1]))
    target = model.codec.encode(tokens[:, K:])
    expected = (model.head.net(hidden) - target.mean).pow(2).sum(-1).mean()  # type: ignore[operator]
    torch.testing.assert_close(out["loss"], expected)
    out["loss"].backward()
    assert all(p.grad is None and not p.requires_grad for p in model.codec.parameters())
    assert model.embed_tokens.weight.grad is not None
    assert not model.codec.training and model.training


def test_codec_stays_float32_and_in_eval_mode() -> None:
    model = make()
    model.train()
    assert not model.codec.training
    model.to(torch.bfloat16)
    assert model.embed_tokens.weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in model.codec.parameters())
    out = model.generate([[1, 2, 3, 4]], 4)
    assert out.shape == (1, 4)


def test_a_model_built_on_meta_materialises_with_to_empty() -> None:
    # how a large preset is built without allocating its weights, then loaded
    with torch.device("meta"):
        model = make()
    assert next(model.codec.parameters()).is_meta
    model.to_empty(device="cpu")
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert all(p.dtype == torch.float32 for p in model.codec.parameters())


def test_codec_whose_vocab_or_k_disagrees_is_refused_naming_both_values() -> None:
    codec = codecs.build({"name": "test.tinycodec", "config": {"vocab_size": V, "chunk_size": K}})
    with pytest.raises(ConfigError, match=r"vocab_size is 11 .* vocab_size=12"):
        CALM.from_codec(codec, backbone={"hidden_size": 16, "num_heads": 2}, head="test.scaled",
                        vocab_size=12)  # fmt: skip
    with pytest.raises(ConfigError, match=r"chunk_size is 2 .* chunk_size=4"):
        CALM.from_codec(codec, backbone={"hidden_size": 16, "num_heads": 2}, head="test.scaled",
                        chunk_size=4)  # fmt: skip


def test_bad_head_config_names_the_field_path() -> None:
    with pytest.raises(ConfigError, match=r"head\.config\.noise"):
        CALM({"head": {"name": "test.scaled", "config": {"noise": -1}},
              "codec": {"name": "test.tinycodec"}})  # fmt: skip


def test_cached_generation_equals_recomputing_the_full_prefix() -> None:
    model = make()
    prompt = torch.randint(1, V, (3, 4))
    out = model.generate(prompt, 10)
    seq = prompt
    with torch.no_grad():
        for _ in range(5):
            h = model.hidden_states(seq)[:, -1]
            chunk = model.codec.decode_tokens(model.head.sample(h, 1)[0])
            seq = torch.cat([seq, chunk], 1)
    assert torch.equal(out, seq[:, 4:])
    assert len(set(out.flatten().tolist())) > 2


def test_left_padded_batch_equals_each_prompt_alone() -> None:
    model = make()
    prompts = [[3, 4], [5, 6, 7, 8, 9, 10], [1, 2, 3, 4]]
    batch = model.generate(prompts, 8)
    for i, p in enumerate(prompts):
        assert torch.equal(batch[i], model.generate([p], 8)[0])


def test_prompt_not_a_multiple_of_k_is_left_padded_with_pad_inside_its_first_chunk() -> None:
    model = make()
    odd = model.generate([[3, 4, 5]], 6)
    explicit = model.generate([[0, 3, 4, 5]], 6)
    assert torch.equal(odd, explicit)
    nopad = make(pad_id=None)
    with pytest.raises(ValueError, match="no pad_id"):
        nopad.generate([[3, 4, 5]], 6)


def test_max_new_tokens_cuts_the_last_chunk_and_stream_yields_chunks() -> None:
    model = make()
    prompt = torch.randint(1, V, (2, 4))
    pieces = list(model.stream(prompt, 5))
    assert [p.shape for p in pieces] == [(2, 2), (2, 2), (2, 1)]
    assert torch.equal(torch.cat(pieces, 1), model.generate(prompt, 5))


def test_eos_inside_a_chunk_stops_that_row_only() -> None:
    model = make()
    prompt = torch.randint(1, V, (2, 4))
    free = model.generate(prompt, 8)
    eos = int(free[0, 3])
    row0 = free[0].tolist()
    cut = row0.index(eos)
    out = model.generate(prompt, 8, eos_id=eos)
    assert out[0, : cut + 1].tolist() == row0[: cut + 1]
    assert (out[0, cut + 1 :] == 0).all()
    if eos not in free[1].tolist():
        assert torch.equal(out[1], free[1])


def test_stop_at_eos_false_ignores_the_configs_eos() -> None:
    model = make()
    prompt = torch.randint(1, V, (2, 4))
    free = model.generate(prompt, 8)
    model.config.eos_id = int(free[0, 1])
    assert model.generate(prompt, 8).shape[1] <= 8
    assert (model.generate(prompt, 8)[0, 2:] == 0).all()  # stopped: pad after the EOS
    assert torch.equal(model.generate(prompt, 8, stop_at_eos=False), free)
    assert torch.equal(model.generate(prompt, 8, eos_id=None, stop_at_eos=False), free)


@pytest.mark.parametrize(
    "prompts",
    [[[1.7, 2.2]], [[True, False]], [torch.tensor([1.0, 2.0])]],
    ids=["float-list", "bool-list", "float-tensor"],
)
def test_non_integer_prompts_are_refused_not_truncated(prompts: list[object]) -> None:
    with pytest.raises(ValueError, match="must hold integer token ids"):
        make().generate(prompts, 4)  # type: ignore[arg-type]


@pytest.mark.parametrize("dtype", [torch.uint8, torch.uint16, torch.int32])
def test_prompts_of_any_integer_dtype_generate_like_int64(dtype: torch.dtype) -> None:
    model = make()
    prompt = torch.randint(1, V, (2, 4))
    g = torch.Generator()
    ref = model.generate(prompt, 4, generator=g.manual_seed(0))
    assert torch.equal(model.generate(prompt.to(dtype), 4, generator=g.manual_seed(0)), ref)


def test_temperature_one_draws_one_head_sample_per_step_and_is_seeded() -> None:
    model = make(noise=1.0)
    prompt = torch.randint(1, V, (2, 4))
    model.head.calls.clear()  # type: ignore[operator]
    a = model.generate(prompt, 8, generator=torch.Generator().manual_seed(1))
    assert model.head.calls == [1, 1, 1, 1]
    b = model.generate(prompt, 8, generator=torch.Generator().manual_seed(1))
    c = model.generate(prompt, 8, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_low_temperature_goes_through_the_samplers() -> None:
    model = make(noise=1.0)
    prompt = torch.randint(1, V, (2, 4))
    g = torch.Generator().manual_seed(0)
    model.head.calls.clear()  # type: ignore[operator]
    out = model.generate(prompt, 4, 0.5, sampling="batch", num_candidates=50, generator=g)
    assert model.head.calls == [50, 50]
    assert out.shape == (2, 4) and int(out.min()) >= 0 and int(out.max()) < V
    exact = model.generate(prompt, 4, 0.5, sampling="exact", generator=g, on_exhausted="fallback")
    assert exact.shape == (2, 4)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        model.generate(prompt, 4, 1.5)


@pytest.mark.parametrize(
    ("prompts", "kwargs", "needle"),
    [
        ([[1, V]], {}, "outside the vocabulary"),
        ([[]], {}, "empty"),
        ([[1, 2]], {"max_new_tokens": 0}, "max_new_tokens must be >= 1"),
        ([[1] * 50], {}, "prompt is too long: 25 chunks"),
        ([[1] * 40], {"max_new_tokens": 20}, "exceeds the context of 24 chunks"),
    ],
)
def test_bad_generation_input_gives_clear_errors(
    prompts: list[list[int]], kwargs: dict[str, int], needle: str
) -> None:
    model = make()
    with pytest.raises(ValueError, match=needle):
        model.generate(prompts, **{"max_new_tokens": 4, **kwargs})  # type: ignore[arg-type]


def test_save_and_load_round_trip_keeps_codec_and_outputs(tmp_path: Path) -> None:
    model = make()
    model.save_pretrained(tmp_path / "calm")
    again = CALM.from_pretrained(tmp_path / "calm")
    prompt = torch.randint(1, V, (2, 4))
    assert torch.equal(again.generate(prompt, 6), model.generate(prompt, 6))
    assert not any(p.requires_grad for p in again.codec.parameters())
    assert again.config.head.config == {"noise": 0.0}
