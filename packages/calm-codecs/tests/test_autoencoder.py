"""Unit tests of the chunk autoencoder: contract, objective, variants, errors."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
import torch
import torch.nn.functional as F
from calm_codecs import AutoencoderConfig, ChunkAutoencoder, TrainingDraws
from calm_codecs.autoencoder import FEW_ROWS
from calm_core.config import ConfigError
from calm_core.registry import codecs
from calm_core.testing import CodecConformance

TINY: dict[str, Any] = {
    "vocab_size": 50,
    "chunk_size": 4,
    "latent_size": 8,
    "hidden_size": 16,
    "intermediate_size": 24,
}


class TestAutoencoderConformance(CodecConformance):
    codec_name = "autoencoder"
    codec_config: ClassVar[dict[str, Any]] = dict(TINY)


class TestDeterministicConformance(CodecConformance):
    codec_name = "autoencoder"
    codec_config: ClassVar[dict[str, Any]] = {**TINY, "variational": False, "chunk_size": 2}


class TestDedicatedMaskConformance(CodecConformance):
    codec_name = "autoencoder"
    codec_config: ClassVar[dict[str, Any]] = {
        **TINY,
        "mask_token": "dedicated",
        "ffn_layers_per_stage": 2,
    }


def make(**over: Any) -> ChunkAutoencoder:
    torch.manual_seed(0)
    model = ChunkAutoencoder(AutoencoderConfig(**{**TINY, **over}))
    with torch.no_grad():  # larger weights than the init, so outputs are far from trivial
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


def tokens(model: ChunkAutoencoder, b: int = 2, chunks: int = 3, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.vocab_size, (b, chunks * model.chunk_size), generator=g)


def test_registered_class_is_ours() -> None:
    assert codecs.get("autoencoder") is ChunkAutoencoder
    built = codecs.build({"name": "autoencoder", "config": TINY})
    assert isinstance(built, ChunkAutoencoder) and built.latent_size == 8


def test_encode_is_deterministic_in_train_mode() -> None:
    model = make().train()
    x = tokens(model)
    a, b = model.encode(x), model.encode(x)
    assert torch.equal(a.mean, b.mean) and torch.equal(a.std, b.std)


def test_chunks_are_encoded_independently() -> None:
    model = make().eval()
    x = tokens(model, b=1, chunks=3)
    y = x.clone()
    y[0, :4] = (y[0, :4] + 1) % model.vocab_size  # change only chunk 0
    a, b = model.encode(x).mean, model.encode(y).mean
    assert not torch.allclose(a[0, 0], b[0, 0])
    assert torch.equal(a[0, 1:], b[0, 1:])


def test_loss_matches_the_formula_with_injected_draws() -> None:
    model = make().train()
    x = tokens(model)
    labels = x.reshape(-1, 4)
    draws = model.draw(labels.shape[0], generator=torch.Generator().manual_seed(3))
    out = model.loss(x, draws=draws)
    # recompute by hand from the public pieces
    c = model.config
    masked = torch.where(draws.token_keep, labels, torch.zeros_like(labels))
    post = model.encode(masked.reshape(1, -1))
    mean, std = post.mean[0], post.std[0]
    z = (mean + draws.eps * std) * draws.latent_keep / (1 - c.latent_dropout)
    logits = model.decode(z)
    ce = F.cross_entropy(logits.reshape(-1, c.vocab_size), labels.reshape(-1))
    kl = 0.5 * (mean**2 + std**2 - 1 - 2 * std.log())
    expected = ce * 4 + c.kl_weight * kl.clamp_min(c.kl_floor).sum(-1).mean()
    torch.testing.assert_close(out["loss"], expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["ce"], ce, rtol=1e-5, atol=1e-6)
    acc = (logits.argmax(-1) == labels).float().mean()
    torch.testing.assert_close(out["token_accuracy"], acc)
    assert out["kl"] >= c.kl_floor * c.latent_size - 1e-5
    assert out["kl_raw"] <= out["kl"] + 1e-5


def test_generator_makes_training_loss_reproducible() -> None:
    model = make().train()
    x = tokens(model)
    a = model.loss(x, generator=torch.Generator().manual_seed(5))["loss"]
    b = model.loss(x, generator=torch.Generator().manual_seed(5))["loss"]
    c = model.loss(x, generator=torch.Generator().manual_seed(6))["loss"]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_draw_rates_match_config() -> None:
    model = make(token_mask_rate=0.25, latent_dropout=0.1)
    d = model.draw(20000, generator=torch.Generator().manual_seed(0))
    n_tok, n_lat = d.token_keep.numel(), d.latent_keep.numel()
    # 5 standard errors of a binomial proportion
    assert abs((~d.token_keep).float().mean().item() - 0.25) < 5 * (0.25 * 0.75 / n_tok) ** 0.5
    assert abs((~d.latent_keep).float().mean().item() - 0.1) < 5 * (0.1 * 0.9 / n_lat) ** 0.5
    assert abs(d.eps.mean().item()) < 5 / n_lat**0.5


def test_random_token_replacement_rate_and_targets() -> None:
    model = make(random_token_rate=0.2)
    d = model.draw(20000, generator=torch.Generator().manual_seed(0))
    assert d.random_ids is not None
    replaced = d.random_ids >= 0
    n = replaced.numel()
    assert abs(replaced.float().mean().item() - 0.2) < 5 * (0.2 * 0.8 / n) ** 0.5
    ids = d.random_ids[replaced]
    assert int(ids.min()) >= 0 and int(ids.max()) < model.vocab_size
    assert ids.unique().numel() == model.vocab_size  # uniform over the whole vocabulary
    assert make().draw(10).random_ids is None  # off by default (the reference behaviour)

    # replaced tokens change input and target alike: the loss equals that of the replaced chunks
    model = make(random_token_rate=0.5).train()
    x = tokens(model)
    draws = model.draw(x.numel() // model.chunk_size, generator=torch.Generator().manual_seed(1))
    assert draws.random_ids is not None and bool((draws.random_ids >= 0).any())
    swapped = torch.where(draws.random_ids >= 0, draws.random_ids, x.reshape(-1, 4)).reshape(
        x.shape
    )
    plain = TrainingDraws(draws.token_keep, draws.eps, draws.latent_keep)
    torch.testing.assert_close(
        model.loss(x, draws=draws)["loss"], model.loss(swapped, draws=plain)["loss"]
    )
    assert not torch.allclose(
        model.loss(x, draws=draws)["loss"], model.loss(x, draws=plain)["loss"]
    )


def test_kl_floor_blocks_gradient_of_small_dims() -> None:
    model = make(kl_floor=1e6).train()  # every dim under the floor: KL contributes no gradient
    x = tokens(model)
    draws = model.draw(6, generator=torch.Generator().manual_seed(0))
    with_kl = model.loss(x, draws=draws)
    model.zero_grad()
    with_kl["loss"].backward()
    g1 = model.to_latent.weight.grad.clone()  # type: ignore[union-attr]
    model.config.kl_weight = 0.0
    model.zero_grad()
    model.loss(x, draws=draws)["loss"].backward()
    torch.testing.assert_close(model.to_latent.weight.grad, g1)


def test_eval_loss_decodes_the_mean() -> None:
    model = make().eval()
    x = tokens(model)
    out = model.loss(x)
    logits = model.decode(model.encode(x).mean)
    ce = F.cross_entropy(logits.reshape(-1, model.vocab_size), x.reshape(-1))
    torch.testing.assert_close(out["ce"], ce)


def test_deterministic_variant_has_no_kl_and_no_sampling() -> None:
    model = make(variational=False).train()
    x = tokens(model)
    assert model.to_latent.out_features == model.latent_size
    d = model.draw(6, generator=torch.Generator().manual_seed(0))
    no_mask = TrainingDraws(torch.ones_like(d.token_keep), d.eps, d.latent_keep)
    out = model.loss(x, draws=no_mask)
    assert out["kl"].item() == 0.0
    logits = model.decode(model.encode(x).mean)
    ce = F.cross_entropy(logits.reshape(-1, model.vocab_size), x.reshape(-1))
    torch.testing.assert_close(out["loss"], 4 * ce)
    assert torch.all(model.encode(x).std < 1e-3)


def test_dedicated_mask_is_an_extra_input_row_never_decoded() -> None:
    model = make(mask_token="dedicated")
    assert model.mask_token_id == model.vocab_size
    assert model.embed.num_embeddings == model.vocab_size + 1
    assert model.decode(torch.zeros(3, 8)).shape == (3, 4, model.vocab_size)
    g = torch.Generator().manual_seed(0)
    draws = model.draw(6, generator=g)
    seen: list[torch.Tensor] = []
    handle = model.embed.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    model.train().loss(tokens(model), draws=draws)
    handle.remove()
    fed = seen[0].reshape(-1, 4)
    assert torch.equal(fed == model.vocab_size, ~draws.token_keep)
    # the mask row is internal: the id vocab_size is refused as input like any other bad id
    bad = tokens(model)
    bad[0, 0] = model.vocab_size
    with pytest.raises(ValueError, match=r"must lie in \[0, 50\)"):
        model.encode(bad)
    with pytest.raises(ValueError, match=r"must lie in \[0, 50\)"):
        model.train().loss(bad)


def test_dtype_and_device_follow_the_module() -> None:
    model = make().double().train()
    x = tokens(model)
    out = model.loss(x)
    assert out["loss"].dtype == torch.float64
    assert model.encode(x).mean.dtype == torch.float64


@pytest.mark.parametrize(
    ("over", "needle"),
    [
        ({"mask_token": 50}, "mask_token 50 is outside the vocabulary"),
        ({"mask_token": "other"}, "mask_token"),
        ({"token_mask_rate": 1.0}, "token_mask_rate"),
        ({"unknown": 1}, "unknown field"),
    ],
)
def test_bad_config_is_named(over: dict[str, Any], needle: str) -> None:
    with pytest.raises((ConfigError, ValueError), match=needle):
        codecs.build({"name": "autoencoder", "config": {**TINY, **over}})


def test_bad_inputs_have_clear_errors() -> None:
    model = make()
    with pytest.raises(ValueError, match="multiple of the chunk size K=4"):
        model.encode(torch.zeros(1, 6, dtype=torch.long))
    with pytest.raises(ValueError, match=r"must lie in \[0, 50\)"):
        model.encode(torch.full((1, 4), 50))
    with pytest.raises(TypeError, match="integer ids"):
        model.encode(torch.zeros(1, 4))
    with pytest.raises(ValueError, match="latent size D is 8"):
        model.decode(torch.zeros(2, 5))


def test_fused_cross_entropy_matches_torch() -> None:
    from calm_codecs.fused_ce import linear_cross_entropy

    g = torch.Generator().manual_seed(0)
    h = torch.randn(64, 12, generator=g, dtype=torch.float64).requires_grad_(True)
    w = torch.randn(50, 12, generator=g, dtype=torch.float64).requires_grad_(True)
    y = torch.randint(0, 50, (64,), generator=g)
    loss, hits = linear_cross_entropy(h, w, y)
    (2.5 * loss).backward()
    gh, gw = h.grad.clone(), w.grad.clone()  # type: ignore[union-attr]
    h.grad = w.grad = None
    ref = F.cross_entropy(F.linear(h, w), y)
    (2.5 * ref).backward()
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(gh, h.grad)
    torch.testing.assert_close(gw, w.grad)
    assert int(hits) == int((F.linear(h, w).argmax(-1) == y).sum())


def test_logits_workspace_is_reused_and_never_aliased() -> None:
    """The reused logits buffer gives the same loss and gradients as fresh buffers, comes back
    after each backward (or a no-grad forward), and is never shared by two live graphs."""
    from calm_codecs.fused_ce import LogitsWorkspace, linear_cross_entropy

    g = torch.Generator().manual_seed(1)
    w = torch.randn(30, 8, generator=g, dtype=torch.float64).requires_grad_(True)
    batches = [
        (
            torch.randn(16, 8, generator=g, dtype=torch.float64),
            torch.randint(0, 30, (16,), generator=g),
        )
        for _ in range(2)
    ]

    def grads(workspace: LogitsWorkspace | None, interleaved: bool) -> list[torch.Tensor]:
        out = []
        losses = []
        for h, y in batches:
            loss, _ = linear_cross_entropy(h, w, y, workspace)
            if interleaved:
                losses.append(loss)  # both graphs alive before either backward
                continue
            (gw,) = torch.autograd.grad(loss, w)
            out.append(gw)
        for loss in losses:
            (gw,) = torch.autograd.grad(loss, w)
            out.append(gw)
        return out

    fresh = grads(None, interleaved=False)
    ws = LogitsWorkspace()
    for interleaved in (False, True, False):
        for a, b in zip(grads(ws, interleaved), fresh, strict=True):
            torch.testing.assert_close(a, b)
    buf = ws._free
    assert buf is not None and buf.shape == (16, 30)  # handed back after the last backward
    with torch.no_grad():
        linear_cross_entropy(batches[0][0], w, batches[0][1], ws)
    assert ws._free is buf  # taken and given back by a forward without gradients


def test_token_stage_once_per_distinct_id_matches_per_position(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Running the encoder's token stage once per distinct id gives the per-position values and
    the same parameter gradients (the repeats' gradients are summed)."""
    from calm_codecs import autoencoder as A

    torch.manual_seed(0)
    model = A.ChunkAutoencoder(
        A.AutoencoderConfig(vocab_size=40, chunk_size=4, latent_size=8, hidden_size=16,
                            intermediate_size=24)
    )  # fmt: skip
    tokens = torch.randint(0, 12, (4, 64))  # 256 positions, at most 12 distinct ids

    def run(min_tokens: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        monkeypatch.setattr(A, "UNIQUE_MIN_TOKENS", min_tokens)
        model.zero_grad()
        feats = model.token_features(tokens)
        mean, log_std = model.encode_params(tokens)
        (mean.square().sum() + log_std.sum()).backward()
        return feats.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    per_position, grads_pp = run(10**9)
    unique, grads_u = run(16)
    assert per_position.shape == unique.shape == (4, 64, 16)
    torch.testing.assert_close(unique, per_position)
    assert len(grads_u) == len(grads_pp) > 0
    for a, b in zip(grads_u, grads_pp, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("rows", [1, 4, 64, 65, 300])
def test_decode_tokens_is_the_argmax_of_decode_on_both_sides_of_few_rows(rows: int) -> None:
    # up to FEW_ROWS decoded positions the ids come from E @ h^T, above it from F.linear
    assert FEW_ROWS == 64
    codec = make(vocab_size=1000).eval()
    z = torch.randn(
        -(-rows // codec.chunk_size),
        codec.latent_size,
        generator=torch.Generator().manual_seed(rows),
    )
    with torch.no_grad():
        ids = codec.decode_tokens(z)
        assert ids.shape == (z.shape[0], codec.chunk_size)
        assert torch.equal(ids, codec.decode(z).argmax(-1))
        states = codec.decode_states(z)
        assert torch.equal(codec.tokens_from_states(states), ids)
