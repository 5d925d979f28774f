"""The quality report's K=1 section (phase ``k1_full``): the table and the verdict it draws from
the final snapshot against the context-free floors."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.report_diagnosis import FLOOR_MARGIN, k1_lines  # noqa: E402


def _snapshot(step: int, b1: float, loss: float) -> dict[str, Any]:
    return {
        "step": step,
        "train_flops": step * 4096 * 6.4e7,
        "brier": {"1": b1, "2": 1e-4, "3": 0.0, "4": 0.0},
        "brier_se": {"1": 0.0024, "2": 2e-4, "3": 0.0, "4": 0.0},
        "val_loss": loss,
    }


def _phases(final_loss: float, final_b1: float) -> dict[str, Any]:
    return {
        "k1_full": {
            "steps": 286,
            "wall_s": 901.9,
            "cpu_s": 1718.0,
            "train_flops_per_token": 6.36e7,
            "val_blocks": 16,
            "curve": [_snapshot(100, -0.0074, 10.81), _snapshot(286, final_b1, final_loss)],
            "floor": {
                "unigram_brier_n": [0.00579, 3.1e-5, 1.6e-8, -4.7e-10],
                "energy_loss": 10.626,
            },
        },
        "baselines": {"unigram": {"brier_n": [0.00579, 3.1e-5, 1.6e-8, -4.7e-10]}},
        "eval_ar": {
            "curve": [
                {"step": 20, "brier": {"1": 0.00248}},
                {"step": 50, "brier": {"1": 0.0256}},
                {"step": 100, "brier": {"1": 0.0412}},
            ]
        },
    }


def test_k1_section_at_the_floor_blames_the_objective_not_the_chunking() -> None:
    text = "\n".join(k1_lines(_phases(final_loss=10.63, final_b1=0.00603)))
    assert "### CALM at K=1 for the whole budget" in text
    assert "286 steps" in text
    assert "| 286 |" in text and "| context-free floor |" in text
    assert "no chunking to blame" in text
    # the AR comparison comes from the AR curve: first snapshot at >= 2x the unigram Brier-1
    assert "4.4x its unigram Brier-1 by step 50" in text
    assert "(0.00603 ± 0.0024) is within 2 standard errors of the unigram" in text
    assert "does learn from the context" not in text


def test_k1_section_below_the_floor_blames_the_chunking() -> None:
    loss = 10.626 - 2 * FLOOR_MARGIN
    text = "\n".join(k1_lines(_phases(final_loss=loss, final_b1=0.03)))
    assert "does learn from the context" in text
    assert "0.1 below a random training token's" in text
    assert "no chunking to blame" not in text


def test_k1_section_absent_without_the_phase() -> None:
    assert k1_lines({}) == []
    assert k1_lines({"k1_full": {"curve": []}}) == []


def _divergence_phases(k1_loss: float) -> dict[str, Any]:
    phases = _phases(final_loss=k1_loss, final_b1=0.006)
    briers = {"1": 0.04, "2": 0.004, "3": 0.001, "4": 9e-5}
    ses = {"1": 0.005, "2": 0.002, "3": 9e-4, "4": 3e-4}
    phases["eval_ar"]["curve"][-1].update(train_flops=7.4e13, brier=briers, brier_se=ses)
    phases["eval_calm"] = {"curve": [{**_snapshot(1207, 0.0084, 14.56), "train_flops": 8.3e13}]}
    phases["baselines"].update(
        chunk_sampler={"brier_n": [0.00575, 2.4e-4, 1.6e-5, -4.5e-6], "energy_loss": 14.58},
        first_token_oracle={"energy_loss": 13.01},
    )
    return phases


def test_divergence_cites_the_k1_run() -> None:
    from benchmarks.report_diagnosis import divergence_lines

    at_floor = "\n".join(divergence_lines(_divergence_phases(10.63)))
    assert "also ends this budget at its context-free floor" in at_floor
    below = "\n".join(divergence_lines(_divergence_phases(10.3)))
    assert "gets 0.326 below its floor" in below
    without = _divergence_phases(10.63)
    del without["k1_full"]
    assert "CALM at K=1" not in "\n".join(divergence_lines(without))
    # with the Brier-trained AR, the K=1 sentence says what that run found of the objective
    tested = _divergence_phases(10.63)
    tested["ar_brier"] = {"curve": [{"step": 100, "brier": {"1": 0.03}}]}
    text = "\n".join(divergence_lines(tested))
    assert "trained on the Brier score (section above)" in text
    assert "has 75% of the cross-entropy AR's Brier-1 at step 100" in text


def _x4_phases(final_loss: float, final_b1: float) -> dict[str, Any]:
    phases = _divergence_phases(10.63)
    phases["calm_x4"] = {
        "steps": 4800,
        "wall_s": 2700.0,
        "cpu_s": 5300.0,
        "train_flops_per_token": 1.67e7,
        "resumed_from": 1207,
        "budgets": 4,
        "val_blocks": 16,
        "curve": [_snapshot(1600, 0.007, 14.55), _snapshot(4800, final_b1, final_loss)],
    }
    return phases


def test_calm_x4_section_reports_the_continuation_against_the_floor() -> None:
    from benchmarks.report_diagnosis import calm_x4_lines

    text = "\n".join(calm_x4_lines(_x4_phases(14.56, 0.009)))
    assert "### CALM with 4x the budget" in text
    assert "(step 1207, exact resume) for 3 more budgets: 4800 steps" in text
    # the main run's final snapshot leads the table, the floor row ends it
    assert text.index("| 1207 |") < text.index("| 1600 |") < text.index("| 4800 |")
    assert "| a random training chunk |" in text
    assert "still within 0.05 of the context-free floor (14.58)" in text
    assert "(0.00575); the target is 0.02 (not met)." in text
    better = "\n".join(calm_x4_lines(_x4_phases(14.2, 0.025)))
    assert "0.38 below the context-free floor (14.58)" in better
    assert "the target is 0.02 (met)." in better
    assert calm_x4_lines({}) == []


def test_calm_x4_section_names_memorisation() -> None:
    from benchmarks.report_diagnosis import calm_x4_lines

    phases = _x4_phases(15.3, 0.0039)
    phases["calm_x4"]["main_train_loss"] = 14.28
    for row, train in zip(phases["calm_x4"]["curve"], (14.2, 13.5), strict=True):
        row["train_loss"] = train
    text = "\n".join(calm_x4_lines(phases))
    assert "| 1207 | 8.30e+13 |" in text and "| 14.56 | 14.28 |" in text
    assert "| 15.3 | 13.5 |" in text
    assert (
        "0.72 above the context-free floor (14.58), while the training loss fell from 14.28 to 13.5"
        in text
    )
    assert "memorises the training chunks" in text
    phases["calm_x4"]["main_train_loss"] = None  # no training loss to compare: no claim
    assert "memorises" not in "\n".join(calm_x4_lines(phases))
    from benchmarks.report_diagnosis import divergence_lines

    div = "\n".join(divergence_lines(phases))
    assert (
        "Continued to 4x the budget (section above), its held-out energy loss rises to 15.3" in div
    )
