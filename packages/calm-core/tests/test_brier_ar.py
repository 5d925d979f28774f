"""The AR BrierLM estimator on a real ARModel: batched rollouts and reference parity."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from calm_core.ar import ARConfig, ARModel
from calm_core.backbone import BackboneConfig
from calm_core.metrics.brier_ar import CachedLMRollout, ar_brier_scores
from calm_core.reference import ar_from_reference
from calm_core.testing.fixtures import Fixture, fixture_names, require_fixture


def tiny_lm(seed: int = 0, vocab: int = 13) -> ARModel:
    torch.manual_seed(seed)
    cfg = ARConfig(
        backbone=BackboneConfig(
            hidden_size=16,
            intermediate_size=24,
            num_layers=2,
            num_heads=4,
            num_kv_heads=2,
            max_positions=64,
        ),
        vocab_size=vocab,
    )
    lm = ARModel(cfg).eval()
    with torch.no_grad():  # larger logits than the 0.02 init, so distributions are not flat
        lm.lm_head.weight.mul_(60.0)
    return lm


def test_batched_rollout_matches_sequential_forward() -> None:
    """Every rolled-out distribution equals a fresh forward pass over prefix + fed tokens."""
    lm = tiny_lm()
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 13, (2, 9), generator=gen)
    seen: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]] = []
    fed_by_step: dict[int, dict[int, torch.Tensor]] = {}

    def draw(probs: torch.Tensor, step: int, starts: torch.Tensor) -> torch.Tensor:
        seen.append((step, probs.clone(), starts.clone(), torch.empty(0)))
        # both samples equal (the path continues), except odd starts at step 1: the cache then
        # drops them and compacts its step blocks before step 2
        tok = (starts[None, :] * 3 + step + torch.arange(2)[:, None]) % 13
        fed_by_step[step] = {int(s): tok[:, c] for c, s in enumerate(starts)}
        pair = tok[..., None].repeat(1, 1, 2)
        if step == 1:
            pair[:, starts % 2 == 1, 1] += 1
        return pair

    ar_brier_scores(lm, tokens, draw=draw)
    assert [s[0] for s in seen] == [0, 1, 2]  # steps 0..2 draw; step 3 only needs its collision
    assert seen[2][2].tolist() == [0, 2, 4]
    with torch.no_grad():
        for step, probs, starts, _ in seen[1:]:
            for c, i in enumerate(starts.tolist()):
                path = [fed_by_step[j][i] for j in range(step)]
                seq = torch.cat([tokens[:, : i + 1], torch.stack(path, 1)], dim=1)
                want = torch.softmax(lm.logits(seq)[:, -1], -1)
                torch.testing.assert_close(probs[:, c], want, rtol=1e-4, atol=1e-6)


def test_rollout_skips_starts_whose_samples_disagree() -> None:
    lm = tiny_lm()
    tokens = torch.randint(0, 13, (3, 10), generator=torch.Generator().manual_seed(2))
    calls: list[int] = []

    def draw(probs: torch.Tensor, step: int, starts: torch.Tensor) -> torch.Tensor:
        calls.append(len(starts))
        out = torch.zeros(probs.shape[0], probs.shape[1], 2, dtype=torch.long)
        out[..., 1] = 1  # disagree everywhere ...
        if step == 0:
            out[1, 2, 1] = 0  # ... except row 1 at start 2
        return out

    r = ar_brier_scores(lm, tokens, draw=draw)
    assert calls == [6, 1]  # only start 2 is rolled out, and it stops after one step
    assert r.scores.shape == (3, 6, 4)


def test_ar_estimator_input_errors() -> None:
    with pytest.raises(ValueError, match="T > 4"):
        ar_brier_scores(tiny_lm(), torch.zeros(1, 4, dtype=torch.long))


# ------------------------------------------------------------------------------------- parity


def _reference_lm(fx: Fixture) -> ARModel:
    return ar_from_reference(fx.params("ar."), fx.meta["llama_config"]).eval()


def _stored_draws(fx: Fixture) -> Any:
    table = {
        (int(i), int(j)): fx.tensors["mc_draws"][k]
        for k, (i, j) in enumerate(fx.tensors["mc_draw_position_step"].tolist())
    }
    requested: set[tuple[int, int]] = set()

    def draw(probs: torch.Tensor, step: int, starts: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(probs.shape[0], probs.shape[1], 2, dtype=torch.long)
        out[..., 1] = 1  # a start the reference did not draw for has every row disagreeing
        for c, i in enumerate(starts.tolist()):
            requested.add((i, step))
            if (i, step) in table:
                out[:, c] = table[(i, step)]
        return out

    draw.requested = requested  # type: ignore[attr-defined]
    draw.table = table  # type: ignore[attr-defined]
    return draw


AR_FIXTURES = fixture_names("ar_brier") or ["ar_brier"]


@pytest.mark.parametrize("name", AR_FIXTURES)
def test_parity_ar_brier_deterministic_terms(name: str) -> None:
    fx = require_fixture(name)
    t = fx.tensors
    lm = _reference_lm(fx)
    tokens = t["input_ids"]
    torch.testing.assert_close(lm.logits(tokens), t["logits"], rtol=1e-5, atol=1e-5)

    # draws that always disagree leave Brier-1 = accuracy_1 - collision at step 0, and
    # Brier-2..4 = accuracy (both exact, no randomness)
    def disagree(probs: torch.Tensor, step: int, starts: torch.Tensor) -> torch.Tensor:
        return torch.tensor([0, 1]).expand(probs.shape[0], probs.shape[1], 2)

    r = ar_brier_scores(lm, tokens, draw=disagree)
    S = t["ngram_golden_prob"].shape[1]
    assert r.scores.shape == (tokens.shape[0], S, 4)
    torch.testing.assert_close(
        r.scores[..., 1:].mean(dim=(0, 1)), t["accuracy_term"][1:], rtol=1e-5, atol=1e-6
    )
    want_1 = 2 * t["ngram_golden_prob"][..., 0] - t["collision_prob_first_token"]
    torch.testing.assert_close(r.scores[..., 0], want_1, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", AR_FIXTURES)
def test_parity_ar_brier_with_stored_draws(name: str) -> None:
    fx = require_fixture(name)
    lm = _reference_lm(fx)
    draw = _stored_draws(fx)
    r = ar_brier_scores(lm, fx.tensors["input_ids"], draw=draw)
    torch.testing.assert_close(r.scores.mean(dim=(0, 1)), fx.tensors["brier"], rtol=1e-5, atol=1e-6)
    # every draw ours takes is one the reference took; the reference may draw more (e.g. values
    # at the last step that it never reads), so the sets need not be equal
    assert draw.requested and draw.requested <= set(draw.table)
    # a perturbed weight must break parity
    with torch.no_grad():
        lm.backbone.layers[0].mlp.up_proj.weight[0, 0] += 0.5
    bad = ar_brier_scores(lm, fx.tensors["input_ids"], draw=_stored_draws(fx))
    assert not torch.allclose(
        bad.scores.mean(dim=(0, 1)), fx.tensors["brier"], rtol=1e-5, atol=1e-6
    )


def test_ar_rollout_requires_begin() -> None:
    roll = CachedLMRollout(tiny_lm())
    with pytest.raises(RuntimeError, match="begin"):
        roll.extend(torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, dtype=torch.long), None, 1)


def test_brier_evaluator_callback_is_deterministic_and_restores_mode() -> None:
    from calm_core.metrics.brier_eval import brier_evaluator, iter_blocks

    lm = tiny_lm()
    stream = torch.randint(0, 13, (100,), generator=torch.Generator().manual_seed(4))
    blocks = list(iter_blocks(stream.numpy(), 12, batch_size=3, num_blocks=5))
    assert [b.shape[0] for b in blocks] == [3, 2] and torch.equal(blocks[0][1], stream[12:24])
    evaluate = brier_evaluator(stream, block_len=12, num_blocks=5, batch_size=3)
    lm.train()
    a, b = evaluate(lm), evaluate(lm)
    assert lm.training  # the trainer's mode is restored
    assert a == b
    assert set(a) == {f"brier{n}" for n in range(1, 5)} | {f"brier{n}_se" for n in range(1, 5)} | {
        "brierlm",
        "brierlm_meaningful",
    }


@pytest.mark.parametrize("vocab", [256, 50])
def test_default_draw_samples_the_distribution(vocab: int) -> None:
    """The two-level inverse-CDF draw: frequencies match p (TV < 0.03 over 40k draws; sampling noise alone gives ~0.015), tokens of
    zero probability never appear, and each row uses its own distribution (also on a slice)."""
    from calm_core.metrics.brier_ar import multinomial_draw

    g = torch.Generator().manual_seed(0)
    p = torch.rand(vocab, generator=g) ** 4
    p[::7] = 0.0  # holes, some at block edges
    p[-1] = 0.3 * p.sum()  # mass in the last block too
    p /= p.sum()
    other = torch.zeros(vocab)
    other[5] = 1.0
    probs = torch.stack([p.expand(20000, vocab), other.expand(20000, vocab)])  # [2, 20000, V]
    padded = torch.cat([probs, torch.rand(2, 3, vocab)], dim=1)[:, :20000]  # a non-contiguous view
    draws = multinomial_draw(torch.Generator().manual_seed(1))(padded, 0, torch.arange(20000))
    assert draws.shape == (2, 20000, 2)
    freq = torch.bincount(draws[0].flatten(), minlength=vocab).double() / 40000
    assert 0.5 * (freq - p.double()).abs().sum() < 0.03
    assert freq[p == 0].sum() == 0
    assert (draws[1] == 5).all()
