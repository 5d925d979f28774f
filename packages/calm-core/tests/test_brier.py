"""BrierLM: aggregation, the K>=4 formula, and unbiasedness on models with known Brier-n.

Unbiasedness uses synthetic models whose next-chunk (CALM) or next-token (AR) distribution is a
known Markov chain, exposed through the same interfaces the estimators use for real models. The
analytic Brier-n is computed by enumerating continuations; the estimate (averaged over many
replicas of one sequence) must agree within four standard errors.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from calm_core.metrics.brier import (
    BrierAccumulator,
    BrierScores,
    aggregate_brier,
    brier_from_chunk_samples,
    ngram_valid,
)
from calm_core.metrics.brier_ar import ar_brier_scores
from calm_core.metrics.brier_calm import calm_brier_scores
from calm_core.testing.fixtures import fixture_names, require_fixture

# ------------------------------------------------------------------------------------ aggregation


def test_aggregate_positive_brier_gives_x100_geometric_mean() -> None:
    r = aggregate_brier([0.4, 0.2, 0.1, 0.05], [0.01, 0.01, 0.01, 0.01])
    raw = (0.4 * 0.2 * 0.1 * 0.05) ** 0.25
    assert r.brierlm_raw == pytest.approx(raw)
    assert r.brierlm == pytest.approx(100 * raw)
    assert r.brierlm_meaningful and r.warning is None


def test_aggregate_four_negative_brier_is_zero_and_flagged() -> None:
    # an untrained CALM whose samples always agree but never match: Brier-n ~ -1. The reference
    # clamps only a negative product, and (-0.95)^4 > 0 gives it BrierLM ~ 95 (x100 scale).
    b = [-0.97, -0.96, -0.95, -0.95]
    assert math.prod(b) > 0
    r = aggregate_brier(b, [0.01] * 4)
    assert r.brierlm == 0.0 and r.brierlm_raw == 0.0
    assert not r.brierlm_meaningful
    assert r.warning is not None and "Brier-1 = -0.97" in r.warning and "<= 0" in r.warning


def test_aggregate_one_nonpositive_brier_is_zero() -> None:
    r = aggregate_brier([0.3, 0.1, 0.0, 0.01], [0.01] * 4)
    assert r.brierlm == 0.0 and not r.brierlm_meaningful
    assert r.warning is not None and "Brier-3 = 0" in r.warning


def test_aggregate_interval_including_zero_is_flagged_but_reported() -> None:
    r = aggregate_brier([0.3, 0.1, 0.02, 0.005], [0.01, 0.01, 0.01, 0.01])
    assert r.brierlm > 0
    assert not r.brierlm_meaningful
    assert r.warning is not None and "Brier-4" in r.warning and "Brier-2" not in r.warning


def test_aggregate_rejects_nan() -> None:
    with pytest.raises(ValueError, match="were any starts scored"):
        aggregate_brier([float("nan"), 0.1, 0.1, 0.1])


def test_accumulator_cluster_standard_error() -> None:
    # 3 sequences x 2 starts; per-sequence means 1, 2, 3 for n=1
    scores = torch.zeros(3, 2, 4)
    scores[:, :, 0] = torch.tensor([[0.0, 2.0], [1.0, 3.0], [2.0, 4.0]])
    scores[:, :, 1:] = 1.0
    acc = BrierAccumulator()
    acc.update(scores[:2])
    acc.update(BrierScores(scores[2:], torch.ones(1, 2, 4, dtype=torch.bool)))
    r = acc.result()
    assert r.brier[0] == pytest.approx(2.0)
    # clustered SE = std of the sequence means / sqrt(G) = 1 / sqrt(3)
    assert r.brier_se[0] == pytest.approx(1 / math.sqrt(3))
    assert r.brier_se[1] == pytest.approx(0.0)
    assert r.count == [6, 6, 6, 6]


def test_accumulator_masks_and_errors() -> None:
    acc = BrierAccumulator()
    with pytest.raises(ValueError, match="no scores"):
        acc.result()
    with pytest.raises(ValueError, match=r"\[B, S, 4\]"):
        acc.update(torch.zeros(2, 3))
    valid = torch.ones(1, 3, 4, dtype=torch.bool)
    valid[0, 2] = False
    acc.update(torch.tensor([[[1.0] * 4, [0.0] * 4, [9.0] * 4]]), valid)
    r = acc.result()
    assert r.brier == [0.5] * 4 and r.count == [2] * 4


def test_ngram_valid_excludes_padding() -> None:
    t = torch.tensor([[5, 6, 0, 0], [0, 1, 2, 3]])
    v = ngram_valid(t, pad_id=0)
    assert v.tolist() == [[True, True, False, False], [False, False, False, False]]
    assert ngram_valid(t, None).all()


# --------------------------------------------------------------------------- K >= 4 formula


def test_chunk_formula_by_hand() -> None:
    y = torch.tensor([[1, 2, 3, 4]])
    x1 = torch.tensor([[1, 2, 0, 4]])  # matches 2 tokens
    x2 = torch.tensor([[1, 2, 3, 4]])  # matches all
    s = brier_from_chunk_samples(x1, x2, y)
    # n=1,2: 1 + 1 - 1; n=3,4: 0 + 1 - 0
    assert s.tolist() == [[1.0, 1.0, 1.0, 1.0]]


@pytest.mark.parametrize("name", fixture_names("brier_k4_formula") or ["brier_k4_formula"])
def test_parity_brier_k4_formula(name: str) -> None:
    fx = require_fixture(name)
    t = fx.tensors
    ours = brier_from_chunk_samples(t["pred1"], t["pred2"], t["targets"]).mean(dim=(0, 1))
    torch.testing.assert_close(ours, t["brier"], rtol=1e-5, atol=1e-6)
    # a perturbed prediction (one first token of a position that matched) must change it
    pred1 = t["pred1"].clone()
    hit = (pred1[..., 0] == t["targets"][..., 0]).nonzero()[0]
    pred1[hit[0], hit[1], 0] = t["targets"][hit[0], hit[1], 0] + 1
    bad = brier_from_chunk_samples(pred1, t["pred2"], t["targets"]).mean(dim=(0, 1))
    assert not torch.allclose(bad, t["brier"], rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ synthetic Markov chunk model


class MarkovChunkModel:
    """Chunks from a fixed set; the next chunk depends on the previous chunk only (matrix Q)."""

    def __init__(self, chunks: torch.Tensor, Q: torch.Tensor, gen: torch.Generator) -> None:
        self.chunks, self.Q, self.gen = chunks, Q, gen

    @property
    def chunk_size(self) -> int:
        return int(self.chunks.shape[1])

    def state(self, c: torch.Tensor) -> torch.Tensor:
        return (c[..., None, :] == self.chunks).all(-1).long().argmax(-1)

    def _pairs(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probs = self.Q[states.reshape(-1)]
        nxt = torch.multinomial(probs, 2, replacement=True, generator=self.gen)
        nxt = nxt.view(*states.shape, 2)
        return self.chunks[nxt[..., 0]], self.chunks[nxt[..., 1]]

    def begin(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B = tokens.shape[0]
        c = tokens.view(B, -1, self.chunk_size)[:, :-1]
        return self._pairs(self.state(c))

    def extend(self, fed, starts, keep, step):  # type: ignore[no-untyped-def]
        return self._pairs(self.state(fed))


def analytic_calm_brier(model: MarkovChunkModel, tokens: torch.Tensor, n_starts: int):  # type: ignore[no-untyped-def]
    """Exact Brier-1..4 per start (averaged over starts) by enumerating chunk paths."""
    K = model.chunk_size
    s = max(1, math.ceil(4 / K))
    M = model.chunks.shape[0]
    states = model.state(tokens.view(-1, K))
    out = torch.zeros(4, dtype=torch.float64)
    for i in range(n_starts):
        y = tokens[(i + 1) * K : (i + 1 + s) * K]
        marg: dict[tuple[int, ...], float] = {}
        for path in itertools.product(range(M), repeat=s):
            p, prev = 1.0, int(states[i])
            for x in path:
                p *= float(model.Q[prev, x])
                prev = x
            toks = torch.cat([model.chunks[x] for x in path]).tolist()
            for n in range(1, 5):
                key = tuple(toks[:n])
                marg[key] = marg.get(key, 0.0) + p
        for n in range(1, 5):
            p_y = marg.get(tuple(y[:n].tolist()), 0.0)
            coll = sum(v * v for k, v in marg.items() if len(k) == n)
            out[n - 1] += 2 * p_y - coll
    return out / n_starts


def markov_setup(K: int, seed: int):  # type: ignore[no-untyped-def]
    gen = torch.Generator().manual_seed(seed)
    M = 5
    alphabet = 5 if K == 1 else 3 if K == 2 else 2
    while True:
        chunks = torch.randint(0, alphabet, (M, K), generator=gen)
        if len({tuple(c) for c in chunks.tolist()}) == M:
            break
    # peaked rows so that samples often agree and the rollout matters
    logits = 2.0 * torch.randn(M, M, generator=gen, dtype=torch.float64)
    Q = torch.softmax(logits, dim=-1)
    model = MarkovChunkModel(chunks, Q, gen)
    L = 7 if K < 4 else 5
    path = [0]
    for _ in range(L - 1):
        path.append(int(torch.multinomial(Q[path[-1]], 1, generator=gen)))
    tokens = chunks[torch.tensor(path)].reshape(-1)
    return model, tokens


@pytest.mark.parametrize("K", [1, 2, 4, 8])
def test_calm_estimator_is_unbiased_on_markov_chunk_model(K: int) -> None:
    model, tokens = markov_setup(K, seed=100 + K)
    R = 4000
    batch = tokens[None].expand(R, -1).contiguous()
    res = calm_brier_scores(model, batch)
    S = res.scores.shape[1]
    per_row = res.scores.double().mean(dim=1)  # [R, 4]
    est = per_row.mean(0)
    se = per_row.std(0) / math.sqrt(R)
    exact = analytic_calm_brier(model, tokens, S)
    assert bool(((est - exact).abs() <= 4 * se + 1e-9).all()), (K, est, exact, se)
    # the test is sensitive: another transition matrix gives a clearly different value
    wrong = MarkovChunkModel(model.chunks, model.Q.flip(0), model.gen)
    gap = (exact - analytic_calm_brier(wrong, tokens, S)).abs().max()
    assert float(gap) > 4 * float(se.max())


def test_calm_estimator_reference_start_set_drops_one_start() -> None:
    model, tokens = markov_setup(2, seed=3)
    a = calm_brier_scores(model, tokens[None])
    b = calm_brier_scores(model, tokens[None], reference_starts=True)
    assert a.scores.shape[1] == b.scores.shape[1] + 1
    with pytest.raises(ValueError, match="no start"):
        calm_brier_scores(model, tokens[None, :4])


def test_too_short_block_error_gives_the_length_that_works() -> None:
    # K >= max_n: the reference start set drops nothing, so 2 chunks are enough either way
    model, tokens = markov_setup(4, seed=1)
    for reference in (False, True):
        with pytest.raises(ValueError, match="use at least 8 tokens per block"):
            calm_brier_scores(model, tokens[None, :4], reference_starts=reference)
        assert (
            calm_brier_scores(model, tokens[None, :8], reference_starts=reference).scores.shape[1]
            == 1
        )
    # K = 2 < max_n: two chunks per n-gram, and the reference start set drops one start
    model, tokens = markov_setup(2, seed=1)
    with pytest.raises(ValueError, match="use at least 8 tokens per block"):
        calm_brier_scores(model, tokens[None, :6], reference_starts=True)
    assert calm_brier_scores(model, tokens[None, :8], reference_starts=True).scores.shape[1] == 1


# --------------------------------------------------------------------------- synthetic bigram LM


class BigramModel:
    """An AR model whose next-token distribution is ``Q[previous token]``."""

    def __init__(self, Q: torch.Tensor) -> None:
        self.Q = Q

    def begin(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.Q[tokens]

    def extend(self, fed, starts, keep, step):  # type: ignore[no-untyped-def]
        return self.Q[fed]


def test_ar_estimator_is_unbiased_on_bigram_model() -> None:
    gen = torch.Generator().manual_seed(7)
    V = 4
    Q = torch.softmax(2.0 * torch.randn(V, V, generator=gen, dtype=torch.float64), -1)
    T = 10
    seq = [0]
    for _ in range(T - 1):
        seq.append(int(torch.multinomial(Q[seq[-1]], 1, generator=gen)))
    tokens = torch.tensor(seq)
    R = 3000
    res = ar_brier_scores(BigramModel(Q), tokens[None].expand(R, -1), generator=gen)
    per_row = res.scores.double().mean(dim=1)
    est, se = per_row.mean(0), per_row.std(0) / math.sqrt(R)
    Q2 = Q * Q
    exact = torch.zeros(4, dtype=torch.float64)
    S = T - 4
    for i in range(S):
        for n in range(1, 5):
            p_y = math.prod(float(Q[seq[i + k], seq[i + k + 1]]) for k in range(n))
            coll = float(torch.linalg.matrix_power(Q2, n)[seq[i]].sum())
            exact[n - 1] += (2 * p_y - coll) / S
    assert bool(((est - exact).abs() <= 4 * se + 1e-6).all()), (est, exact, se)

    # the accuracy part is exact: with draws that always disagree, Brier-2..4 have no noise
    def disagree(p: torch.Tensor, j: int, s: torch.Tensor) -> torch.Tensor:
        return torch.tensor([0, 1]).expand(1, p.shape[1], 2)

    never = ar_brier_scores(BigramModel(Q), tokens[None], draw=disagree)
    for n in range(2, 5):
        acc = sum(
            2 * math.prod(float(Q[seq[i + k], seq[i + k + 1]]) for k in range(n)) for i in range(S)
        )
        assert float(never.scores[0, :, n - 1].double().sum()) == pytest.approx(acc, rel=1e-6)
