"""``run.py --published`` on the tiny presets: the output keys, the analytic FLOPs behind MFU and
the JSON written by ``--json``. Nothing here judges a speed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from calm_core.costs import causal_context, flops_per_token

from benchmarks import published as P
from benchmarks import run as R

TINY = {"calm_m": "calm-tiny", "transformer_m": "transformer-tiny"}


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(P, "MODELS", TINY)
    monkeypatch.setattr(P, "TRAIN_TOKENS", 64)
    monkeypatch.setattr(P, "NEW_TOKENS", 16)
    monkeypatch.setattr(P, "MATMUL_N", 64)


def test_published_figures_on_tiny_presets(tiny: None) -> None:
    out = P.run_published(reps=3, log=lambda msg: None)
    assert set(out["gen_tok_s"]) == {
        "calm_m_b1",
        "calm_m_b8",
        "transformer_m_b1",
        "transformer_m_b8",
    }
    assert set(out["train_mfu"]) == {"calm_m", "transformer_m"}
    assert all(v > 0 for v in [*out["gen_tok_s"].values(), *out["train_mfu"].values()])
    for key in TINY:
        # MFU = tokens/s x analytic training FLOPs per token / measured matmul FLOP/s
        timing = out["timings"][f"train.{key}"]
        tok_s = 64 / timing["median_s"]
        assert out["train_tok_s"][key] == pytest.approx(tok_s)
        gemm = out["timings"][f"train.{key}.gemm"]  # a 64^3 matmul timed beside each step
        per_round = [
            64 * timing["flops_per_token"] / step / (2 * 64**3 / mm)
            for step, mm in zip(timing["reps_s"], gemm["reps_s"], strict=True)
        ]
        assert out["train_mfu"][key] == pytest.approx(sorted(per_round)[1])
    # causal training: attention at the average context (CALM: 64 tokens = 16 chunks of K=4)
    assert out["timings"]["train.calm_m"]["flops_per_token"] == flops_per_token(
        "calm-tiny", context=causal_context(16), training=True
    )
    assert out["timings"]["train.transformer_m"]["flops_per_token"] == flops_per_token(
        "transformer-tiny", context=causal_context(64), training=True
    )
    # each generation figure is batch x new tokens over the median of its repetitions
    t = out["timings"]["gen_tok_s.calm_m_b8"]
    assert len(t["reps_s"]) == 3
    assert out["gen_tok_s"]["calm_m_b8"] == pytest.approx(8 * 16 / t["median_s"])
    # the CALM/AR ratio round by round: the median of the per-round ratios
    a = out["timings"]["gen_tok_s.transformer_m_b8"]
    rounds = sorted(x / y for x, y in zip(a["reps_s"], t["reps_s"], strict=True))
    assert out["paired"]["calm_m_b8/transformer_m_b8"] == pytest.approx(rounds[1])


def test_run_published_writes_the_published_keys(tiny: None, tmp_path: Path) -> None:
    out = tmp_path / "pub.json"
    assert R.main(["--published", "--only", "gen", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert set(data) == {"published", "matmul_gflops", "machine"}
    assert set(data["published"]["gen_tok_s"]) == {
        "calm_m_b1",
        "calm_m_b8",
        "transformer_m_b1",
        "transformer_m_b8",
    }
    assert data["published"]["train_mfu"] == {}  # --only gen
    assert data["machine"]["command"].startswith("python benchmarks/run.py")
