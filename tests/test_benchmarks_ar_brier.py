"""The Brier-trained AR baseline (quality phase ``ar_brier``): its loss, its model, and the report
section that compares it with the cross-entropy AR and chooses a verdict from the numbers."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.objectives import BrierTrainedLM, brier_score_loss  # noqa: E402
from benchmarks.report_diagnosis import ar_brier_lines  # noqa: E402


def test_brier_score_loss_matches_the_definition_and_ignores_padding() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 5, generator=gen)
    targets = torch.tensor([0, 4, 2, 9, 1, 3])  # 9 is the ignored id
    probs = torch.softmax(logits, dim=-1)
    onehot = torch.nn.functional.one_hot(targets.clamp(max=4), 5).float()
    per_row = (probs - onehot).square().sum(-1)
    keep = targets != 9
    expected = per_row[keep].mean()
    assert torch.allclose(brier_score_loss(logits, targets, ignore_index=9), expected, atol=1e-6)
    # a confident right answer scores ~0, a confident wrong one ~2
    sure = torch.full((1, 5), -30.0)
    sure[0, 2] = 30.0
    assert float(brier_score_loss(sure, torch.tensor([2]))) == pytest.approx(0.0, abs=1e-6)
    assert float(brier_score_loss(sure, torch.tensor([0]))) == pytest.approx(2.0, abs=1e-6)
    with pytest.raises(ValueError, match=r"logits must be \[N, V\] and targets \[N\]"):
        brier_score_loss(logits, targets[:3])


def test_brier_trained_lm_trains_on_the_brier_score_and_reports_cross_entropy() -> None:
    from calm_core.ar import ARConfig
    from calm_core.backbone import BackboneConfig

    torch.manual_seed(0)
    backbone = BackboneConfig(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2)
    model = BrierTrainedLM(ARConfig(backbone=backbone, vocab_size=50, pad_id=0))
    tokens = torch.randint(1, 50, (2, 12))
    tokens[0, -3:] = 0  # padding is not scored
    out = model(tokens)
    logits = model.logits(tokens[:, :-1]).reshape(-1, 50)
    targets = tokens[:, 1:].reshape(-1)
    assert torch.allclose(out["loss"], brier_score_loss(logits, targets, 0), atol=1e-6)
    ce = torch.nn.functional.cross_entropy(logits, targets, ignore_index=0)
    assert torch.allclose(out["cross_entropy"], ce, atol=1e-5)
    assert torch.allclose(out["perplexity"], ce.exp(), rtol=1e-5)
    out["loss"].backward()  # the gradient comes from the Brier score alone
    assert out["cross_entropy"].grad_fn is None
    assert model.lm_head.weight.grad is not None and model.lm_head.weight.grad.abs().sum() > 0


def _row(step: int, b1: float, ppl: float, se: float = 0.002) -> dict[str, Any]:
    return {
        "step": step,
        "train_flops": step * 4096 * 1.2e7,
        "brier": {"1": b1, "2": b1 / 10, "3": 0.0, "4": 0.0},
        "brier_se": {"1": se, "2": se / 10, "3": 0.0, "4": 0.0},
        "val_loss": 1.0 - b1,
        "perplexity": ppl,
    }


def _phases(brier_curve: list[dict[str, Any]], k1_loss: float | None = None) -> dict[str, Any]:
    phases: dict[str, Any] = {
        "ar_brier": {"steps": 480, "wall_s": 901.0, "val_blocks": 16, "curve": brier_curve},
        "eval_ar": {
            "curve": [
                _row(20, 0.0025, 1607.0),
                _row(50, 0.0256, 625.0),
                _row(100, 0.0412, 311.0),
                _row(400, 0.0497, 160.0),
                _row(629, 0.0403, 193.6),
            ]
        },
        "baselines": {"unigram": {"brier_n": [0.00579, 3.1e-5, 1.6e-8, -4.7e-10]}},
    }
    if k1_loss is not None:
        phases["k1_full"] = {"curve": [{"val_loss": k1_loss}], "floor": {"energy_loss": 10.63}}
    return phases


def test_section_at_the_unigram_blames_the_objective_family() -> None:
    curve = [_row(50, 0.004, 900.0), _row(100, 0.006, 700.0), _row(480, 0.0065, 650.0)]
    text = "\n".join(ar_brier_lines(_phases(curve)))
    assert "### The AR baseline trained on the Brier score" in text
    assert "480 steps in 901 s; 16 held-out blocks" in text
    # joined with the cross-entropy AR at equal steps; the last row is the floor
    assert "| 100 | 4.92e+12 | 0.006 ± 0.002 | 0.0412 | 6.00e-04 | 700 | 311 |" in text
    assert "| 480 |" in text and "| 480 | 2.36e+13 | 0.0065 ± 0.002 | — |" in text
    assert "| training unigram | — | 0.00579 |" in text
    assert "(0.0065 ± 0.002) is within 2 standard errors of the unigram's (0.00579)" in text
    assert "The objective family is slow at this scale" in text
    assert "holds CALM at its floor" not in text


def test_section_at_the_pace_of_cross_entropy_blames_the_continuous_machinery() -> None:
    curve = [_row(50, 0.02, 700.0), _row(400, 0.045, 170.0), _row(480, 0.044, 175.0)]
    text = "\n".join(ar_brier_lines(_phases(curve, k1_loss=10.64)))
    assert "At step 400, the last snapshot both runs reached, it has 91% of" in text
    assert (
        "It first reaches twice the unigram's Brier-1 at step 50 (cross-entropy: step 50)" in text
    )
    assert "CALM at K=1 (section above)" in text and "stays at its floor" in text
    assert "what holds CALM at its floor is its continuous machinery" in text
    assert "The objective family is slow" not in text


def test_section_slower_than_cross_entropy_splits_the_blame() -> None:
    curve = [_row(50, 0.006, 800.0), _row(400, 0.02, 260.0), _row(480, 0.021, 250.0)]
    text = "\n".join(ar_brier_lines(_phases(curve, k1_loss=10.3)))
    assert "it has 40% of the cross-entropy AR's Brier-1 (0.02 vs 0.0497)" in text
    assert "at step 400 (cross-entropy: step 50)" in text
    assert "more slowly than cross-entropy" in text
    assert "stays at its floor" not in text  # K=1 CALM left its floor in this case


def test_section_absent_without_the_phase() -> None:
    assert ar_brier_lines({}) == []
    assert ar_brier_lines({"ar_brier": {"curve": []}}) == []


def test_k1_and_divergence_sections_cite_the_objective_test() -> None:
    from benchmarks.report_diagnosis import k1_lines

    def k1_phase(brier_curve: list[dict[str, Any]]) -> dict[str, Any]:
        phases = _phases(brier_curve)
        phases["k1_full"] = {
            "steps": 320,
            "wall_s": 903.0,
            "train_flops_per_token": 6.36e7,
            "val_blocks": 16,
            "curve": [{**_row(320, 0.0096, 0.0), "val_loss": 10.64}],
            "floor": {"unigram_brier_n": [0.00579, 3.1e-5, 0.0, 0.0], "energy_loss": 10.63},
        }
        return phases

    fast = "\n".join(k1_lines(k1_phase([_row(400, 0.0368, 530.0)])))
    assert (
        "The AR baseline trained on the Brier score (section below), the same kind of objective "
        "over an explicit categorical, has 74% of the cross-entropy AR's Brier-1 at step 400: "
        "what is slow is CALM's continuous machinery" in fast
    )
    slow = "\n".join(k1_lines(k1_phase([_row(400, 0.01, 530.0)])))
    assert "has only 20% of the cross-entropy AR's Brier-1 at step 400" in slow
    assert "the objective family is part of the slow start" in slow
    no_test = k1_phase([])
    del no_test["ar_brier"]
    assert "trained on the Brier score" not in "\n".join(k1_lines(no_test))


# ------------------------------------------------------------------ the head-alone bigram probe
def test_bigram_floors_are_the_exact_brier_1_of_the_count_predictors() -> None:
    import numpy as np

    from benchmarks.head_probe import bigram_floors

    train = np.array([0, 1, 0, 1, 0, 2])
    val = np.array([0, 1, 1])
    floors = bigram_floors(train, val, vocab=3)
    uni = np.array([3, 2, 1]) / 6
    expected_uni = np.mean([2 * uni[1], 2 * uni[1]]) - (uni**2).sum()
    assert floors["unigram"] == pytest.approx(expected_uni)
    # after 0: counts (0.01, 2.01, 1.01); after 1: (2.01, 0.01, 0.01)
    after0 = np.array([0.01, 2.01, 1.01]) / 3.03
    after1 = np.array([2.01, 0.01, 0.01]) / 2.03
    expected_bi = np.mean([2 * after0[1] - (after0**2).sum(), 2 * after1[1] - (after1**2).sum()])
    assert floors["bigram"] == pytest.approx(expected_bi, rel=1e-5)


def test_head_probe_softmax_learns_a_deterministic_successor() -> None:
    import numpy as np

    from benchmarks.head_probe import _train_probe

    train = np.arange(4000) % 8  # every token's successor is fixed: t -> t + 1 (mod 8)
    val = np.arange(3, 403) % 8
    out = _train_probe("softmax", None, train, val, steps=60, lr=1e-2)
    first, last = out["curve"][0], out["curve"][-1]
    assert [r["step"] for r in out["curve"]] == [50, 60]
    # no learning scores ~0 (a uniform softmax over 4,096 tokens); the optimum is 1
    assert 0.5 < first["brier1"] <= last["brier1"] <= 1.0
    assert last["train_loss"] < 0.5


def test_head_probe_runs_both_probes_on_the_energy_head() -> None:
    import numpy as np

    from benchmarks import models as M
    from benchmarks.head_probe import run_head_probe

    rng = np.random.default_rng(0)
    codec = M.build_codec(chunk=1).eval()
    result = run_head_probe(
        codec, rng.integers(0, M.VOCAB, 5000), rng.integers(0, M.VOCAB, 300), steps=2, lr=1e-3
    )
    assert result["eval_pairs"] == 299 and result["steps"] == 2
    for kind in ("energy", "softmax"):
        (row,) = result[kind]["curve"]
        assert row["step"] == 2 and -1.0 <= row["brier1"] <= 1.0
    assert 0 < result["floors"]["unigram"] < 0.01


def _probe_phases(energy: list[float], softmax: list[float], k1_steps: int | None) -> dict:
    steps = [50, 100, 200, 400, 800]
    probe = {
        "steps": 800,
        "pair_batch": 1024,
        "lr": 1e-3,
        "eval_pairs": 8192,
        "floors": {"unigram": 0.0058, "bigram": 0.0486},
        "energy": {
            "wall_s": 405.0,
            "curve": [
                {"step": s, "brier1": b, "train_loss": 10.8 - i / 10}
                for i, (s, b) in enumerate(zip(steps, energy, strict=True))
            ],
        },
        "softmax": {
            "wall_s": 64.0,
            "curve": [
                {"step": s, "brier1": b, "train_loss": 0.99}
                for s, b in zip(steps, softmax, strict=True)
            ],
        },
    }
    phases: dict[str, Any] = {"head_bigram": probe}
    if k1_steps is not None:
        phases["k1_full"] = {"steps": k1_steps}
    return phases


SOFTMAX = [0.008, 0.0109, 0.0158, 0.0191, 0.0248]


def test_head_bigram_section_reports_a_slower_generator() -> None:
    from benchmarks.report_diagnosis import head_bigram_lines

    text = "\n".join(
        head_bigram_lines(_probe_phases([-0.0034, 0.004, 0.0084, 0.0183, 0.0189], SOFTMAX, 320))
    )
    assert "### The energy head alone on the bigram task" in text
    assert "same batches of 1024 token pairs, optimizer and lr 0.001, 800 steps" in text
    assert "| 200 | 0.0084 | 0.0158 | 10.6 |" in text
    assert "| training bigram (smoothed) | 0.0486 | 0.0486 | — |" in text
    assert (
        "first reaches twice the unigram's Brier-1 at step 400, the softmax at step 200 (2x" in text
    )
    assert "At step 800 it has 76% of the softmax's Brier-1 (0.0189 vs 0.0248)" in text
    assert "CALM at K=1 gets 320 optimizer steps" in text


def test_head_bigram_section_other_verdicts() -> None:
    from benchmarks.report_diagnosis import head_bigram_lines

    never = "\n".join(
        head_bigram_lines(_probe_phases([-0.01, 0, 0.002, 0.004, 0.005], SOFTMAX, None))
    )
    assert "never reaches twice the unigram's Brier-1 (0.0116)" in never
    assert "the generator itself is the slow part" in never
    assert "CALM at K=1 gets" not in never
    fast = "\n".join(head_bigram_lines(_probe_phases(SOFTMAX, SOFTMAX, None)))
    assert (
        "as fast as the softmax (twice the unigram's Brier-1 at step 200; softmax: step 200)"
        in fast
    )
    assert head_bigram_lines({}) == []
