"""Reference figures, the targets of issue 9, ratios computed within one run, and the CI rule.

What is unusual: there are two kinds of target.

* ``within`` targets compare two figures measured in the same run on the same machine (CALM/AR,
  achieved FLOP/s over measured GEMM FLOP/s). Machine speed cancels, so these are what CI checks.
* ``reference`` targets compare a figure of this run with a fixed figure of the reference
  implementation (BENCHMARKS.md, measured on a 2-core AMD EPYC VM whose 1024^3 fp32 matmul ran at
  128-165 GFLOP/s). They are reported twice: raw, and normalised by this run's matmul throughput
  relative to the reference machine's (midpoint 146.5 GFLOP/s). CI never fails on them because
  the CI machine is not the reference machine.

The regression rule (``--check``, on by default with ``--quick``, which CI runs after the tests):
a ``within`` or ``absolute`` ratio fails when it is below ``min(target, baseline) / NOISE_FACTOR``,
where ``baseline`` is the same ratio in the last full run committed to
``benchmarks/results/speed.json`` and ``NOISE_FACTOR = 2``. A ratio divides two timed figures,
each of which can be off by up to 1.6x in a single run (the largest spread BENCHMARKS.md reports
for sub-second items); on this machine the CALM/AR generation ratio at batch 1 moved by 1.4x
between two quiet runs of the same code (2.38 and 1.72), so the factor is 2, not 1.6. For a
target that is met this is "below the target by more than noise"; for one the full run did not
meet, it is "worse than what was measured by more than noise", so a regression is caught
either way and an unmet target does not turn every CI run red. A real regression (say CALM
generation falling to AR speed) is caught; scheduling noise on a shared machine is not flagged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "NOISE_FACTOR",
    "REFERENCE",
    "REFERENCE_MATMUL_GFLOPS",
    "TARGETS",
    "Target",
    "baseline_ratios",
    "check",
    "evaluate_targets",
    "lookup",
]

#: how far a within-run ratio may fall from its floor reference before CI calls it a regression:
#: each of the two timed figures of a ratio can be off by 1.6x (BENCHMARKS.md); observed ratio
#: spread between quiet runs here 1.4x
NOISE_FACTOR = 2.0

#: the reference machine's 1024^3 fp32 matmul: 128-165 GFLOP/s; the midpoint
REFERENCE_MATMUL_GFLOPS = (128.0 + 165.0) / 2

#: reference implementation figures from BENCHMARKS.md, keyed like our JSON (dotted paths)
REFERENCE: dict[str, float] = {
    "train_tok_s.codec": 6101.0,
    "train_tok_s.calm_energy": 2672.0,
    "train_tok_s.ar": 2685.0,
    "gen_tok_s.calm_t1_b1": 438.0,
    "gen_tok_s.calm_t1_b8": 2236.0,
    "gen_tok_s.calm_t05batch_b1": 101.0,
    "gen_tok_s.calm_t05batch_b8": 112.0,
    "gen_tok_s.ar_b1": 194.0,
    "gen_tok_s.ar_b8": 945.0,
    "eval_s.calm_brier": 0.72,
    # the reference AR estimator with random weights (0.74 s); 16.2 s when its samples always agree
    "eval_s.ar_brier": 0.74,
}

#: figures where smaller is better (seconds); ratios of these are inverted so that > 1 = faster
LOWER_IS_BETTER = ("eval_s.", "gen_token_s_ctx.")


@dataclass(frozen=True)
class Target:
    """One target: ``numerator / denominator >= minimum``.

    ``kind="within"``: both figures from this run. ``kind="reference"``: the denominator is the
    reference figure of :data:`REFERENCE` for the numerator's key.
    ``kind="absolute"``: the numerator itself (a fraction, e.g. MFU) against ``minimum``.
    """

    name: str
    kind: Literal["within", "reference", "absolute"]
    numerator: str
    denominator: str | None
    minimum: float


TARGETS: tuple[Target, ...] = (
    Target("generation T=1 batch 1, CALM/AR", "within", "gen_tok_s.calm_t1_b1",
           "gen_tok_s.ar_b1", 3.5),
    Target("generation T=1 batch 8, CALM/AR", "within", "gen_tok_s.calm_t1_b8",
           "gen_tok_s.ar_b8", 2.5),
    Target("generation T=1 batch 1, ours/reference CALM", "reference", "gen_tok_s.calm_t1_b1",
           None, 2.0),
    Target("generation T=1 batch 8, ours/reference CALM", "reference", "gen_tok_s.calm_t1_b8",
           None, 2.0),
    Target("generation T=0.5 batch approx. batch 8, ours/reference", "reference",
           "gen_tok_s.calm_t05batch_b8", None, 20.0),
    Target("generation T=0.5 batch approx. batch 8, CALM/AR", "within",
           "gen_tok_s.calm_t05batch_b8", "gen_tok_s.ar_b8", 1.5),
    Target("training, CALM (energy) ours/reference", "reference", "train_tok_s.calm_energy",
           None, 1.5),
    Target("training, CALM (energy)/AR", "within", "train_tok_s.calm_energy",
           "train_tok_s.ar", 1.3),
    Target("training, codec ours/reference", "reference", "train_tok_s.codec", None, 1.3),
    Target("training MFU, CALM", "absolute", "mfu.calm", None, 0.35),
    Target("training MFU, AR", "absolute", "mfu.ar", None, 0.35),
)  # fmt: skip


def lookup(results: dict[str, Any], key: str) -> float | None:
    """The value at a dotted path (``"gen_tok_s.ar_b1"``), or None when missing or not finite."""
    node: Any = results
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    if isinstance(node, int | float) and math.isfinite(node):
        return float(node)
    return None


def _ratio(num: float | None, den: float | None) -> float | None:
    if num is None or den is None or den == 0:
        return None
    return num / den


def evaluate_targets(
    results: dict[str, Any], baseline: dict[str, float] | None = None
) -> list[dict[str, Any]]:
    """Every target's ratio in this run, whether it meets the target, and the CI verdict.

    Args:
        results: this run's figures.
        baseline: target name -> ratio of the last committed full run (see :func:`baseline_ratios`).

    Returns:
        One dict per target: ``name``, ``kind``, ``ratio`` (None when a figure is missing),
        ``target``, ``met`` (ratio >= target), ``ci_floor`` (``min(target, baseline) /
        NOISE_FACTOR`` for targets CI checks, else None), ``ci_ok`` and, for reference targets,
        ``ratio_normalised`` (the ratio divided by this machine's matmul speed relative to the
        reference machine's).
    """
    gemm = lookup(results, "matmul_gflops")
    speed = gemm / REFERENCE_MATMUL_GFLOPS if gemm else None
    rows: list[dict[str, Any]] = []
    for t in TARGETS:
        num = lookup(results, t.numerator)
        normalised: float | None = None
        if t.kind == "within":
            ratio = _ratio(num, lookup(results, t.denominator or ""))
        elif t.kind == "reference":
            ratio = _ratio(num, REFERENCE[t.numerator])
            normalised = _ratio(ratio, speed)
        else:
            ratio = num
        ci_checked = t.kind != "reference"
        base = (baseline or {}).get(t.name)
        floor = min(t.minimum, base if base else t.minimum) / NOISE_FACTOR if ci_checked else None
        rows.append(
            {
                "name": t.name,
                "kind": t.kind,
                "ratio": ratio,
                "ratio_normalised": normalised,
                "target": t.minimum,
                "met": None if ratio is None else ratio >= t.minimum,
                "ci_floor": floor,
                "ci_ok": None if (ratio is None or floor is None) else ratio >= floor,
            }
        )
    return rows


def baseline_ratios(details: dict[str, Any] | None) -> dict[str, float]:
    """Target name -> ratio from a full run's details (``benchmarks/results/speed.json``)."""
    if not details or details.get("mode") != "full":
        return {}
    return {
        row["name"]: float(row["ratio"])
        for row in details.get("targets", [])
        if isinstance(row.get("ratio"), int | float) and row["ratio"] > 0
    }


def reference_ratios(results: dict[str, Any]) -> dict[str, float | None]:
    """ours/reference for every figure with a reference value (> 1 = ours faster)."""
    out: dict[str, float | None] = {}
    for key, ref in REFERENCE.items():
        ours = lookup(results, key)
        if ours is None:
            out[key] = None
        elif key.startswith(LOWER_IS_BETTER):
            out[key] = ref / ours if ours > 0 else None
        else:
            out[key] = ours / ref
    return out


def check(rows: list[dict[str, Any]]) -> list[str]:
    """CI failures: CI-checked targets whose ratio is below ``target / NOISE_FACTOR``.

    A missing figure is not a failure here (it is reported as missing with its reason); a
    measured one that regressed is.
    """
    failures = []
    for row in rows:
        if row["ci_ok"] is False:
            failures.append(
                f"{row['name']}: {row['ratio']:.3g} < {row['ci_floor']:.3g} "
                f"(min(target {row['target']:g}, last full run) / noise factor {NOISE_FACTOR:g})"
            )
    return failures
