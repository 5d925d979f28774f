"""The benchmark harness: timing rule, targets and the CI rule, the output schema and the report.
No model is timed here."""

from __future__ import annotations

import json
import math
from dataclasses import fields
from pathlib import Path

import pytest

from benchmarks import targets as T
from benchmarks.report import _targets_table, flops_to_reach, write_docs
from benchmarks.run import OUTPUT_GROUPS, ROOT, output_keys, speed_settings
from benchmarks.timing import (
    Measurement,
    matmul_gflops,
    measure,
    measure_interleaved,
    paired_speedup,
)


def test_measure_reports_median_of_timed_reps_after_warmup() -> None:
    calls: list[int] = []
    m = measure(lambda: calls.append(1), reps=5, warmup=2)
    assert len(calls) == 7  # 2 untimed + 5 timed
    assert len(m.reps) == 5 and m.warmup == 2
    assert m.seconds == sorted(m.reps)[2]


def test_measure_interleaved_alternates_rounds_and_takes_each_median() -> None:
    calls: list[str] = []
    out = measure_interleaved(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, reps=3, warmup=1
    )
    assert calls == ["a", "b"] * 4  # one warm-up round, then three timed rounds
    assert set(out) == {"a", "b"}
    for m in out.values():
        assert len(m.reps) == 3 and m.warmup == 1
        assert m.seconds == sorted(m.reps)[1]
    with pytest.raises(ValueError, match=">= 3 repetitions"):
        measure_interleaved({"a": lambda: None}, reps=2)


def test_measure_refuses_fewer_than_three_reps() -> None:
    with pytest.raises(ValueError, match=">= 3 repetitions"):
        measure(lambda: None, reps=2)


def test_matmul_gflops_is_two_n_cubed_over_median_time() -> None:
    gflops, m = matmul_gflops(64, reps=3, warmup=1)
    assert gflops == pytest.approx(2 * 64**3 / m.seconds / 1e9)
    assert gflops > 0


def test_paired_speedup_is_the_median_of_per_round_ratios() -> None:
    # round 2 ran under load for both figures: it drags the medians apart but not the pairs
    calm = Measurement(2.0, [1.0, 9.0, 2.0])
    ar = Measurement(4.0, [2.0, 18.0, 4.0])
    assert paired_speedup(calm, ar) == pytest.approx(2.0)
    assert paired_speedup(Measurement(1.0, [1.0, 5.0, 1.0]), Measurement(2.0, [2.0, 2.0, 2.0])) == 2
    with pytest.raises(ValueError, match="same rounds"):
        paired_speedup(calm, Measurement(1.0, [1.0] * 4))


def test_a_paired_ratio_replaces_the_ratio_of_medians() -> None:
    name = "generation T=1 batch 1, CALM/AR"
    res = _results()  # medians give 700 / 100 = 7
    res["paired"] = {"gen_tok_s.calm_t1_b1/gen_tok_s.ar_b1": 2.5}
    row = next(r for r in T.evaluate_targets(res, {name: 2.4}) if r["name"] == name)
    assert row["ratio"] == row["ci_value"] == 2.5 and row["ci_ok"] is True


def test_spread_is_max_over_min() -> None:
    assert Measurement(2.0, [1.0, 2.0, 3.0]).spread == pytest.approx(3.0)


def _results(**overrides: float) -> dict[str, object]:
    base = {
        "gen_tok_s": {"calm_t1_b1": 700.0, "calm_t1_b8": 3000.0, "calm_t05batch_b8": 900.0,
                      "ar_b1": 100.0, "ar_b8": 500.0},
        "train_tok_s": {"calm_energy": 4000.0, "ar": 2000.0, "codec": 9000.0},
        "mfu": {"calm": 0.4, "ar": 0.5},
        "matmul_gflops": 146.5,
    }  # fmt: skip
    for key, value in overrides.items():
        group, name = key.split("__")
        base[group][name] = value  # type: ignore[index]
    return base


def test_targets_ratios_and_verdicts() -> None:
    rows = {r["name"]: r for r in T.evaluate_targets(_results())}
    r = rows["generation T=1 batch 1, CALM/AR"]
    assert r["ratio"] == pytest.approx(7.0) and r["met"] is True
    ref = rows["training, CALM (energy) ours/reference"]
    assert ref["ratio"] == pytest.approx(4000 / 2672)
    # at the reference machine's GEMM speed the normalised ratio equals the raw one
    assert ref["ratio_normalised"] == pytest.approx(ref["ratio"])
    assert ref["ci_floor"] is None and ref["ci_ok"] is None  # never checked in CI
    assert T.check(list(rows.values())) == []


GATED = {
    "generation T=1 batch 1, CALM/AR": "gen_tok_s__calm_t1_b1",
    "generation T=1 batch 8, CALM/AR": "gen_tok_s__calm_t1_b8",
    "generation T=0.5 batch approx. batch 8, ours/reference": "gen_tok_s__calm_t05batch_b8",
    "training, CALM (energy)/AR": "train_tok_s__calm_energy",
    "training MFU, CALM": "mfu__calm",
    "training MFU, AR": "mfu__ar",
}


def test_the_gated_targets_are_the_like_for_like_ones() -> None:
    assert {t.name for t in T.TARGETS if t.gated} == set(GATED)
    rows = {r["name"]: r for r in T.evaluate_targets(_results())}
    # the T=0.5 sampler against the AR loop is reported but never checked, however low
    low = T.evaluate_targets(_results(gen_tok_s__ar_b8=1e9))
    row = next(r for r in low if r["name"] == "generation T=0.5 batch approx. batch 8, CALM/AR")
    assert row["ratio"] < 1e-5 and row["gated"] is False and row["ci_ok"] is None
    assert T.check(low) == []
    assert rows["training, codec ours/reference"]["ci_floor"] is None


def test_a_2x_regression_of_any_gated_value_fails_and_noise_does_not() -> None:
    # a full run whose gated values sit below their targets (as most do on this machine)
    near = {"gen_tok_s__calm_t1_b1": 300.0, "gen_tok_s__calm_t1_b8": 1200.0,
            "gen_tok_s__calm_t05batch_b8": 900.0, "train_tok_s__calm_energy": 2400.0,
            "mfu__calm": 0.3, "mfu__ar": 0.3}  # fmt: skip
    full = T.evaluate_targets(_results(**near))
    baseline = T.baseline_ratios({"mode": "full", "targets": full})
    assert set(baseline) == set(GATED)
    for name, key in GATED.items():
        noisy = T.evaluate_targets(_results(**{**near, key: near[key] / 1.6}), baseline)
        assert T.check(noisy) == [], name  # 1.6x lower: within noise
        regressed = _results(**{**near, key: near[key] / 2})
        failures = T.check(T.evaluate_targets(regressed, baseline))
        assert len(failures) == 1 and failures[0].startswith(name), name
        assert "last full run) / noise factor 1.75" in failures[0]
    # a baseline far above its target (measured under contention) floors at the target's
    name = "training, CALM (energy)/AR"  # target 1.3
    high = {name: 9.0}
    ok = T.evaluate_targets(_results(train_tok_s__calm_energy=2400.0), high)  # 1.2
    assert next(r for r in ok if r["name"] == name)["ci_floor"] == pytest.approx(1.3 / 1.75)
    assert T.check(ok) == []
    failures = T.check(T.evaluate_targets(_results(train_tok_s__calm_energy=1400.0), high))
    rule = "(min(target 1.3, last full run) / noise factor 1.75)"
    assert failures == [f"{name}: ratio 0.7 < 0.743 {rule}"]


def test_ci_floor_is_the_committed_full_runs_value() -> None:
    name = "generation T=1 batch 1, CALM/AR"
    full = {"mode": "full", "targets": [{"name": name, "ratio": 2.0}, {"name": "x", "ratio": None}]}
    assert T.baseline_ratios(full) == {name: 2.0}
    assert T.baseline_ratios({**full, "mode": "quick"}) == {}  # only full runs are baselines
    ok = T.evaluate_targets(_results(gen_tok_s__calm_t1_b1=120.0), {name: 2.0})
    row = next(r for r in ok if r["name"] == name)
    assert row["ci_floor"] == pytest.approx(2.0 / 1.75) and row["met"] is False  # 2 < 3.5
    assert row["ci_value"] == pytest.approx(1.2) and row["ci_ok"] is True
    # without a baseline there is nothing to regress from (the committed run holds them all)
    row = next(r for r in T.evaluate_targets(_results()) if r["name"] == name)
    assert row["ci_floor"] is None and row["ci_ok"] is None
    # an older record without ci_value: a reference target's baseline is its normalised ratio
    ref = "generation T=0.5 batch approx. batch 8, ours/reference"
    old = {"mode": "full", "targets": [{"name": ref, "kind": "reference", "ratio": 1.4,
                                        "ratio_normalised": 1.1}]}  # fmt: skip
    assert T.baseline_ratios(old) == {ref: 1.1}


def test_a_gated_reference_target_is_normalised_by_the_gemm_rate_beside_it() -> None:
    name = "generation T=0.5 batch approx. batch 8, ours/reference"
    res = _results()  # 900 tok/s against 112, matmul at the start 146.5 GFLOP/s
    res["gemm_during"] = {"gen_tok_s.calm_t05batch_b8": 73.25}  # the machine at half speed
    row = next(r for r in T.evaluate_targets(res) if r["name"] == name)
    assert row["ratio"] == pytest.approx(900 / 112)
    assert row["ratio_normalised"] == row["ci_value"] == pytest.approx(2 * 900 / 112)
    assert T.gemm_rate(res, "gen_tok_s.ar_b8") == 146.5  # no GEMM beside it: the start rate


def test_quick_measures_the_shapes_of_the_full_run() -> None:
    quick, full = speed_settings(True), speed_settings(False)
    assert (quick.reps, full.reps) == (3, 5)
    assert quick.pair_reps == full.pair_reps == T.PAIR_REPS >= full.reps
    assert speed_settings(True, reps=4).reps == 4
    # the generation shapes are module constants, not settings: quick cannot change them
    assert {f.name for f in fields(quick)} == {
        "reps", "pair_reps", "warmup", "train_warmup", "ctx_new_tokens", "log",
    }  # fmt: skip


def test_the_committed_full_run_is_a_baseline_for_every_gated_target() -> None:
    record = json.loads((ROOT / "benchmarks" / "results" / "speed.json").read_text())
    assert record["mode"] == "full"
    assert set(T.baseline_ratios(record)) >= set(GATED)


def test_missing_figures_are_not_ci_failures() -> None:
    res = _results()
    res["mfu"] = {"calm": None, "ar": 0.5}  # type: ignore[index]
    rows = T.evaluate_targets(res)
    row = next(r for r in rows if r["name"] == "training MFU, CALM")
    assert row["ratio"] is None and row["met"] is None and row["ci_ok"] is None
    assert T.check(rows) == []


def test_lower_is_better_reference_ratio_is_inverted() -> None:
    ratios = T.reference_ratios({"eval_s": {"calm_brier": 0.36}})
    assert ratios["eval_s.calm_brier"] == pytest.approx(2.0)


def test_output_keys_are_exactly_the_benchmarks_md_schema() -> None:
    out = output_keys(
        {"gen_tok_s": {"ar_b1": 5.0, "junk": 1.0}, "matmul_gflops": 10.0, "machine": {}},
        {"gen_tok_s.calm_t1_b1": "missing code"},
    )
    assert set(out) == {*OUTPUT_GROUPS, "matmul_gflops", "machine", "missing"}
    assert set(out["gen_tok_s"]) == {
        "calm_t1_b1", "calm_t1_b8", "calm_t05batch_b1", "calm_t05batch_b8",
        "calm_t05exact_b1", "ar_b1", "ar_b8",
    }  # fmt: skip
    assert out["gen_tok_s"]["ar_b1"] == 5.0 and out["gen_tok_s"]["calm_t1_b1"] is None
    assert set(out["train_tok_s"]) == {"codec", "calm_energy", "calm_diffusion", "calm_flow", "ar"}
    assert set(out["gen_token_s_ctx"]) == {"100", "1500"}
    assert out["missing"]["gen_tok_s.calm_t1_b1"] == "missing code"
    # every null value has a reason
    nulls = {f"{g}.{k}" for g in OUTPUT_GROUPS for k, v in out[g].items() if v is None}
    assert nulls == set(out["missing"])


def _row(flops: float, b1: float) -> dict[str, object]:
    return {"train_flops": flops, "brier": {"1": b1}, "brierlm": 0.0}


def test_flops_to_reach_interpolates_in_log_flops() -> None:
    curve = [_row(1e10, 0.0), _row(1e12, 0.02), _row(1e13, 0.05)]
    # 0.01 is halfway from 0.0 to 0.02 -> geometric midpoint of 1e10 and 1e12
    assert flops_to_reach(curve, "brier1", 0.01) == pytest.approx(1e11)
    assert flops_to_reach(curve, "brier1", 0.0) == pytest.approx(1e10)
    assert flops_to_reach(curve, "brier1", 0.06) is None


def test_write_docs_renders_tables_and_verdicts(tmp_path: Path) -> None:
    res = _results()
    details = {
        **output_keys(res, {"eval_s.calm_brier": "missing code: no estimator"}),
        "machine": {"cpu": "TestCPU", "logical_cores": 2, "threads": 2, "torch": "x",
                    "python": "3.11", "platform": "p", "date": "2026-01-01 00:00 UTC",
                    "command": "python benchmarks/run.py", "wall_s": 1.0},
        "mode": "full", "reps": 5, "timings": {},
        "extra": {"ar_brier_always_agree_s": 2.0, "ar_brier_always_agree_gflop": 100.0,
                  "decode_weight_mb_per_token": {"calm": 5.0, "ar": 10.0, "calm-m": 300.0,
                                                 "transformer-m": 1200.0},
                  "backbone_weight_mb": 8.0},
        "matmul": {"end_gflops": 140.0},
        "targets": T.evaluate_targets(res), "reference_ratios": T.reference_ratios(res),
    }  # fmt: skip
    out = write_docs(tmp_path, details, tmp_path / "absent.json")
    text = out.read_text()
    assert "TestCPU" in text and "python benchmarks/run.py" in text
    assert "| generation T=1 batch 1, CALM/AR | 7 | — | ≥ 3.5 | met |" in text
    assert "`eval_s.calm_brier`: missing code: no estimator" in text
    assert "No quality results" in text
    assert "| AR BrierLM evaluation, samples always agree (s) | 2 | 16.2 |" in text
    # batch-1 decoding against the weights each step reads: 10 / 5 = 2 at equal speed per read
    assert "| CALM (bench) | 5 | 700 | 3.5 |" in text
    assert "bounded by the ratio of the two counts: 2 here (measured 7)" in text
    assert "Not measured: run `python benchmarks/run.py --published --docs`" in text
    assert json.loads(json.dumps(details))  # the details stay JSON-serialisable
    assert not math.isnan(details["targets"][0]["ratio"])


def test_write_docs_shows_the_published_figures(tmp_path: Path) -> None:
    res = _results()
    details = {
        **output_keys(res, {}),
        "machine": {"cpu": "TestCPU", "logical_cores": 2, "threads": 2, "torch": "x",
                    "python": "3.11", "date": "2026-01-01 00:00 UTC"},
        "mode": "full", "reps": 3, "matmul": {"end_gflops": 140.0},
        "targets": T.evaluate_targets(res),
    }  # fmt: skip
    published = {
        "published": {
            "gen_tok_s": {"calm_m_b1": 30.0, "transformer_m_b1": 10.0, "calm_m_b8": 160.0,
                          "transformer_m_b8": 40.0},
            "train_mfu": {"calm_m": 0.9, "transformer_m": 0.95},
        },
        "matmul_gflops": 200.0,
        "machine": {**details["machine"], "command": "python benchmarks/run.py --published"},
        "details": {"decode_weights_per_token": {"calm_m": 1.0, "transformer_m": 4.0},
                    "train_tok_s": {"calm_m": 300.0, "transformer_m": 90.0},
                    "matmul_end_gflops": 190.0},
    }  # fmt: skip
    (tmp_path / "published.json").write_text(json.dumps(published))
    text = write_docs(tmp_path, details, tmp_path / "quality.json").read_text()
    assert "| 1 | 30 | 10 | 3 | ≥ 3.5 | 4 |" in text  # ratio 3 against the bound 4 / 1
    assert "| 8 | 160 | 40 | 4 | ≥ 4 | 4 |" in text
    assert "| calm_m | 300 | 0.9 | ≥ 0.8 |" in text
    assert "(200 GFLOP/s at the start of the run, 190 at the end)" in text
    assert "[decode diagnosis, 2026-12](benchmarks-decode-2026-12.md)" in text
    # a per-round ratio, where recorded, replaces the ratio of the medians
    published["details"]["paired"] = {"calm_m_b1/transformer_m_b1": 3.25}  # type: ignore[index]
    published["machine"]["note"] = "5 helpers shared the 2 cores"  # type: ignore[index]
    (tmp_path / "published.json").write_text(json.dumps(published))
    text = write_docs(tmp_path, details, tmp_path / "quality.json").read_text()
    assert "| 1 | 30 | 10 | 3.25 | ≥ 3.5 | 4 |" in text
    assert "Note: 5 helpers shared the 2 cores" in text


def test_quality_eval_blocks_limit_and_all(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from benchmarks.quality import _val_blocks, run_quality

    val = SimpleNamespace(tokens=list(range(10 * 4 + 3)))  # ten 4-token blocks and a tail
    assert _val_blocks(val, 4, 3).tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    assert _val_blocks(val, 4, None).shape == (10, 4)  # every whole block, the tail left out
    with pytest.raises(ValueError, match="eval_blocks must be >= 0"):
        run_quality(
            tmp_path, minutes=None, work_dir=tmp_path, quick=True, out=tmp_path / "q.json",
            eval_blocks=-1,
        )  # fmt: skip


def test_quality_targets_judge_the_final_snapshot_and_show_the_best() -> None:
    def row(step: int, b1: float, lm: float, ppl: float) -> dict[str, object]:
        se = {n: 0.001 for n in "1234"}
        brier = {"1": b1, "2": 0.004, "3": 0.001, "4": 0.0015}
        return {"step": step, "brier": brier, "brier_se": se, "brierlm": lm, "perplexity": ppl}

    ar = [row(100, 0.03, 0.1, 300.0), row(400, 0.05, 0.3, 170.0), row(629, 0.031, 0.0, 216.7)]
    text = "\n".join(_targets_table({"eval_ar": {"curve": ar}}))
    assert (
        "| AR held-out Brier-1 vs reference AR 0.04-0.05 | 0.031 | 0.05 (400) | **not met** |"
        in (text)
    )
    assert "| AR perplexity vs reference AR ~215 | 216.7 | 170 (400) | **not met** |" in text
    assert "| AR BrierLM vs reference AR 0.24 | 0 | 0.3 (400) | **not met** |" in text
    assert "CALM" not in text  # no CALM curve, no CALM rows
    calm = [row(800, 0.012, 0.5, 0.0), row(1207, 0.025, 0.4, 0.0)]
    text = "\n".join(_targets_table({"eval_calm": {"curve": calm}}))
    assert (
        "| CALM held-out Brier-1 ≥ 0.02 (reference CALM 0.004) | 0.025 | 0.025 (1207) | met |"
        in (text)
    )
    # Brier-3 = 0.001 is not above 2 standard errors (0.002): not significantly positive
    assert (
        "| CALM Brier-1..4 all > 2 standard errors | 0.025, 0.004, 0.001, 0.0015 | — | **not met** |"
        in text
    )


def test_check_on_a_full_run_compares_with_the_committed_run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import benchmarks.run as R
    import benchmarks.speed as S

    def regressed(settings: object, gemm: float, only: object = None) -> S.SpeedRun:
        run = S.SpeedRun()  # CALM generation 10x slower than the AR, training MFU 1%
        run.results = {
            "gen_tok_s": {"calm_t1_b1": 20.0, "calm_t1_b8": 80.0, "calm_t05batch_b1": 1.0,
                          "calm_t05batch_b8": 1.0, "calm_t05exact_b1": 1.0, "ar_b1": 200.0,
                          "ar_b8": 800.0},
            "train_tok_s": {"codec": 10.0, "calm_energy": 10.0, "calm_diffusion": 10.0,
                            "calm_flow": 10.0, "ar": 1000.0},
            "eval_s": {"calm_brier": 1.0, "ar_brier": 1.0},
            "gen_token_s_ctx": {"100": 1.0, "1500": 1.0},
            "mfu": {"calm": 0.01, "ar": 0.01},
        }  # fmt: skip
        return run

    monkeypatch.setattr(S, "run_speed", regressed)
    monkeypatch.setattr(R, "matmul_gflops", lambda *a, **k: (146.5, Measurement(1.0, [1.0] * 3)))
    for argv in (["--check"], ["--quick"]):
        assert R.main(argv) == 1, argv  # a full run's own floors must not excuse a regression
    assert "CALM/AR" in capsys.readouterr().out
    assert R.main([]) == 0  # without --check a full run only reports
