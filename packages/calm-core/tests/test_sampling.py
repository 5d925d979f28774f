"""Statistical tests of the temperature samplers on known categorical chunk distributions.

Tolerances come from standard errors: a chi-square statistic is compared with its mean ``df`` plus
five of its standard deviations ``sqrt(2 df)``; means are compared within four standard errors.
"""

from __future__ import annotations

import math

import pytest
import torch
from calm_core.sampling import (
    TemperatureSamplingError,
    batch_temperature_sample,
    count_identical,
    exact_temperature_sample,
    exact_temperature_sample_with_draws,
    expected_exact_draws,
    lazy_batch_temperature_sample,
    split_temperature,
)

# chunks sharing tokens, so "identical chunk" must compare all K tokens
CHUNKS = torch.tensor([[0, 0, 1], [0, 1, 1], [1, 0, 1], [1, 1, 0], [2, 2, 2], [0, 0, 2]])
P_A = torch.tensor([0.4, 0.25, 0.15, 0.1, 0.06, 0.04], dtype=torch.float64)
P_B = torch.tensor([0.1, 0.1, 0.5, 0.2, 0.05, 0.05], dtype=torch.float64)


def categorical_sampler(probs: torch.Tensor, gen: torch.Generator):
    """``probs[rows, M]`` -> sampler(num) giving ``[num, rows, K]`` chunks of CHUNKS."""

    def sampler(num: int) -> torch.Tensor:
        idx = torch.multinomial(probs, num, replacement=True, generator=gen)  # [rows, num]
        return CHUNKS[idx.t()]

    return sampler


def chunk_ids(x: torch.Tensor) -> torch.Tensor:
    return (x[:, None, :] == CHUNKS[None]).all(-1).long().argmax(1)


def tempered(p: torch.Tensor, T: float) -> torch.Tensor:
    q = p ** (1.0 / T)
    return q / q.sum()


def chi_square_ok(counts: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
    """Chi-square of counts vs target (bins with expected < 5 merged); returns (stat, bound)."""
    n = counts.sum()
    expected = target * n
    small = expected < 5
    if small.any():
        counts = torch.cat([counts[~small], counts[small].sum()[None]])
        expected = torch.cat([expected[~small], expected[small].sum()[None]])
    stat = float(((counts - expected) ** 2 / expected).sum())
    df = len(counts) - 1
    return stat, df + 5.0 * math.sqrt(2.0 * df)


def test_split_temperature() -> None:
    assert split_temperature(1.0) == (1, 0.0)
    assert split_temperature(0.5) == (2, 0.0)
    assert split_temperature(1 / 3) == (3, 0.0)
    n, f = split_temperature(0.4)
    assert n == 2 and f == pytest.approx(0.5)
    n, f = split_temperature(0.7)
    assert n == 1 and f == pytest.approx(1 / 0.7 - 1)
    for bad in (0.0, -0.5, 1.5, float("nan")):
        with pytest.raises(ValueError, match="temperature must be in"):
            split_temperature(bad)


@pytest.mark.parametrize("T", [1.0, 0.5, 1 / 3, 0.7, 0.4])
def test_exact_sampler_matches_tempered_distribution(T: float) -> None:
    # two different distributions in alternating rows: each row must follow its own target
    rows = 3000
    gen = torch.Generator().manual_seed(11)
    probs = torch.stack([P_A, P_B]).repeat(rows // 2, 1)
    out, draws = exact_temperature_sample_with_draws(
        categorical_sampler(probs, gen), T, generator=gen
    )
    assert out.shape == (rows, 3)
    ids = chunk_ids(out)
    for parity, p in ((0, P_A), (1, P_B)):
        counts = torch.bincount(ids[parity::2], minlength=6).double()
        stat, bound = chi_square_ok(counts, tempered(p, T))
        assert stat < bound, f"T={T}: chi-square {stat:.1f} exceeds {bound:.1f}"
    # the paper's cost formula, per distribution, within four standard errors
    for parity, p in ((0, P_A), (1, P_B)):
        d = draws[parity::2].double()
        se = float(d.std()) / math.sqrt(d.numel())
        expected = expected_exact_draws(p, T)
        assert abs(float(d.mean()) - expected) <= 4 * se + 1e-9, (T, float(d.mean()), expected)


def test_exact_sampler_raises_or_falls_back_on_flat_distribution() -> None:
    gen = torch.Generator().manual_seed(0)
    rows, M = 4, 5000

    def flat(num: int) -> torch.Tensor:
        return torch.randint(0, M, (num, rows, 2), generator=gen)

    with pytest.raises(TemperatureSamplingError, match="max_draws=50"):
        exact_temperature_sample(flat, 0.25, max_draws=50, generator=gen)
    out, draws = exact_temperature_sample_with_draws(
        flat, 0.25, max_draws=50, on_exhausted="fallback", generator=gen
    )
    assert out.shape == (rows, 2) and bool((out >= 0).all() & (out < M).all())
    assert bool((draws == 50).all())


def test_exact_sampler_input_errors() -> None:
    with pytest.raises(ValueError, match=r"\[num, rows, K\]"):
        exact_temperature_sample(lambda num: torch.zeros(num, 3, dtype=torch.long), 0.5)
    with pytest.raises(ValueError, match="integer chunk ids"):
        exact_temperature_sample(lambda num: torch.zeros(num, 2, 3), 0.5)
    with pytest.raises(ValueError, match="on_exhausted"):
        exact_temperature_sample(
            lambda num: torch.zeros(num, 2, 3, dtype=torch.long),
            0.5,
            on_exhausted="loop",  # type: ignore[arg-type]
        )


def test_exact_sampler_at_t1_uses_one_draw() -> None:
    calls: list[int] = []

    def sampler(num: int) -> torch.Tensor:
        calls.append(num)
        return torch.arange(num * 6).view(num, 3, 2)

    out, draws = exact_temperature_sample_with_draws(sampler, 1.0)
    assert calls == [1] and out.tolist() == [[0, 1], [2, 3], [4, 5]]
    assert draws.tolist() == [1, 1, 1]


def test_count_identical_matches_brute_force() -> None:
    gen = torch.Generator().manual_seed(3)
    cand = torch.randint(0, 2, (40, 5, 3), generator=gen)
    counts = count_identical(cand)
    brute = (cand[:, None] == cand[None, :]).all(-1).sum(1)  # [N, rows]
    assert torch.equal(counts, brute)


def test_batch_sampler_cascade_on_hand_made_candidates() -> None:
    # row 0: counts a=3, b=1 -> at n=2 only a is eligible (C(3,2)=3, C(1,2)=0)
    # row 1: all distinct -> cascade falls to m=1 -> uniform over candidates
    a, b, c, d = [0, 0], [1, 1], [2, 2], [3, 3]
    cand = torch.tensor([[a, a], [a, b], [a, c], [b, d]]).repeat(1, 400, 1)  # [4, 800, 2]
    gen = torch.Generator().manual_seed(5)
    picks = batch_temperature_sample(cand, 0.5, generator=gen)  # [800, 2]
    assert bool((picks[0::2] == torch.tensor(a)).all())
    distinct = {tuple(x) for x in picks[1::2].tolist()}
    assert distinct == {tuple(a), tuple(b), tuple(c), tuple(d)}


@pytest.mark.parametrize("T", [0.5, 1 / 3, 0.4])
def test_batch_sampler_converges_as_n_grows(T: float) -> None:
    rows = 3000
    gen = torch.Generator().manual_seed(21)
    sampler = categorical_sampler(P_A.expand(rows, 6), gen)
    target = tempered(P_A, T)
    tvs = []
    for N in (3, 20, 200):
        out = batch_temperature_sample(sampler(N), T, generator=gen)
        emp = torch.bincount(chunk_ids(out), minlength=6).double() / rows
        tvs.append(0.5 * float((emp - target).abs().sum()))
    # three times the Monte Carlo noise of an empirical TV (about 0.01 here)
    noise = 0.5 * float((target * (1 - target) / rows).sqrt().sum()) * 3
    assert tvs[0] > tvs[1] + noise and tvs[1] > tvs[2] - noise, tvs
    assert tvs[2] < 2 * noise, tvs


def test_batch_sampler_at_t1_is_plain_sampling() -> None:
    rows = 4000
    gen = torch.Generator().manual_seed(8)
    sampler = categorical_sampler(P_A.expand(rows, 6), gen)
    out = batch_temperature_sample(sampler(5), 1.0, generator=gen)
    counts = torch.bincount(chunk_ids(out), minlength=6).double()
    stat, bound = chi_square_ok(counts, P_A)
    assert stat < bound


def test_batch_sampler_input_errors() -> None:
    with pytest.raises(ValueError, match=r"\[N, rows, K\]"):
        batch_temperature_sample(torch.zeros(4, 3, dtype=torch.long), 0.5)
    with pytest.raises(ValueError, match="integer chunk ids"):
        batch_temperature_sample(torch.zeros(4, 3, 2), 0.5)
    with pytest.raises(ValueError, match="temperature must be in"):
        batch_temperature_sample(torch.zeros(4, 3, 2, dtype=torch.long), 2.0)


@pytest.mark.parametrize("n", [300, 40])
def test_integer_cascade_at_very_low_temperature_stays_finite(n: int) -> None:
    # C(c, n) overflows float64 for thousands of copies: the weights must come from log space
    cand = torch.zeros(2000, 2, 1, dtype=torch.long)
    cand[:500, 1] = 1  # row 1: 500 copies of one value, 1,500 of another
    gen = torch.Generator().manual_seed(0)
    # row 0: one value; row 1: C(1500, n) / C(500, n) is astronomically large, the bigger wins
    for _ in range(20):
        picks = batch_temperature_sample(cand, 1.0 / n, generator=gen)
        assert picks[:, 0].tolist() == [0, 0]


def test_integer_cascade_log_space_equals_the_product_form(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import calm_core.sampling as sampling

    gen = torch.Generator().manual_seed(4)
    cand = torch.randint(0, 3, (60, 7, 2), generator=gen)
    counts = count_identical(cand).t().double()
    for n in (2, 5, 32):
        product = sampling._cascade_weights(counts, n, 0.0)
        with monkeypatch.context() as m:
            m.setattr(sampling, "_PRODUCT_MAX_N", 0)  # force the log-space form
            logs = sampling._cascade_weights(counts, n, 0.0)
        torch.testing.assert_close(
            logs / logs.sum(1, keepdim=True), product / product.sum(1, keepdim=True)
        )


def _id_states(candidates: torch.Tensor) -> torch.Tensor:
    """Candidates ``[N, rows, K]`` as per-position states ``[N, rows, K, 1]`` (state = id)."""
    return candidates.unsqueeze(-1)


@pytest.mark.parametrize("T", [1.0, 0.5, 1 / 3, 0.25, 0.7, 0.4])
def test_lazy_batch_sampler_equals_the_batch_sampler(T: float) -> None:
    """Same weights, same generator -> the very same picks, on sharp, flat and mixed rows."""
    gen = torch.Generator().manual_seed(11)
    for trial in range(25):
        vocab = 2 + trial % 4
        cand = torch.randint(0, vocab, (60, 7, 4), generator=gen)
        cand[:, ::3, 1:] = 0  # some rows where chunks repeat a lot
        cand[:, 1::3] = torch.randint(0, 1000, cand[:, 1::3].shape, generator=gen)  # flat rows
        want = batch_temperature_sample(cand, T, generator=torch.Generator().manual_seed(trial))
        got = lazy_batch_temperature_sample(
            _id_states(cand),
            lambda s: s[..., 0],
            T,
            generator=torch.Generator().manual_seed(trial),
        )
        assert torch.equal(got, want), (T, trial)


def test_lazy_batch_sampler_decodes_only_what_can_repeat() -> None:
    """All-distinct first tokens: one position per candidate, plus the uniform pick's rest."""
    N, rows, K = 200, 8, 4
    cand = torch.randint(0, 10**6, (N, rows, K), generator=torch.Generator().manual_seed(2))
    cand[:, :, 0] = torch.arange(N)[:, None] + 1000 * torch.arange(rows)[None, :]
    decoded = []

    def decode(states: torch.Tensor) -> torch.Tensor:
        decoded.append(states.shape[0])
        return states[..., 0]

    out = lazy_batch_temperature_sample(_id_states(cand), decode, 0.5)
    assert sum(decoded) == N * rows + rows * (K - 1)  # first tokens, then the picks' other K-1
    assert out.shape == (rows, K)
    assert all(any(torch.equal(out[r], cand[j, r]) for j in range(N)) for r in range(rows))

    # a sharp row (every candidate identical) decodes everything once and returns that chunk
    same = cand[:1].expand(N, rows, K).clone()
    decoded.clear()
    out = lazy_batch_temperature_sample(_id_states(same), decode, 0.5)
    assert sum(decoded) == N * rows * K and torch.equal(out, same[0])


def test_lazy_batch_sampler_input_errors() -> None:
    with pytest.raises(ValueError, match=r"\[N, rows, K, ...\]"):
        lazy_batch_temperature_sample(torch.zeros(4, 3), lambda s: s[..., 0], 0.5)
    with pytest.raises(ValueError, match="temperature must be in"):
        lazy_batch_temperature_sample(torch.zeros(4, 3, 2, 1), lambda s: s[..., 0], 2.0)
