"""Reference figures, the targets of issue 9, ratios computed within one run, and the CI gate.

There are three kinds of target: ``within`` (two figures of this run, e.g. CALM/AR), ``absolute``
(a fraction of this run, e.g. MFU = achieved FLOP/s over the fp32 GEMM rate measured beside it)
and ``reference`` (a figure of this run over the reference implementation's, BENCHMARKS.md, from
a 2-core AMD EPYC VM whose 1024^3 fp32 matmul ran at 128-165 GFLOP/s; reported raw and
normalised by this run's GEMM rate over the reference machine's midpoint, 146.5 GFLOP/s).

The CI gate (``--check``, on by default with ``--quick``, which CI runs after the tests) checks
the *gated* targets only: one fails when its checked value (the ratio; for a gated reference
target the normalised ratio) is below ``min(target, baseline) / NOISE_FACTOR``, where
``baseline`` is the same value in the full run committed to ``benchmarks/results/speed.json``
(a test makes sure that run holds every gated value). ``--quick`` measures the same shapes as
the full run (256 new tokens after a 32-token prompt, batch 8 x 512 training tokens); it only
repeats less, and the gated generation pairs still get :data:`PAIR_REPS` interleaved rounds.
The two sides of a gated ratio (and a GEMM-bound figure and its GEMM) are timed interleaved and
divided round by round, the median of those per-round ratios being the ratio (``paired`` in the
results), so that the shared machine's load, which moves between rounds far more than within
one, cancels. Why this rule:

* The committed baseline comes from another machine than CI's (CI's is 2-3x faster, with another
  balance of per-operation overhead to GEMM speed), so a gated value must mean the same on both:
  its two sides must be limited by the same thing. CALM/AR generation at T=1 compares two
  KV-cached decode loops over the same backbone at the bench width (256), both dominated by
  per-operation overhead, timed interleaved; CALM/AR training compares two GEMM-bound training
  steps of 4,096 tokens; MFU and the T=0.5 batch approximation at batch 8 (at random weights
  every one of its 1,600 candidates per step is decoded: ~13 GFLOP of [6400, 256] x [256, 4096]
  products per step) are GEMM-bound figures over a GEMM rate measured interleaved with them.
* Not gated: CALM/AR for the T=0.5 batch approximation. Its numerator is that GEMM-bound sampler,
  its denominator the overhead-bound AR loop, so the ratio follows the machine's balance of the
  two (0.0775 here, 0.0622 on CI, same code) and falls whenever the AR loop alone gets faster, a
  CALM regression or not (the CI failure that introduced this rule: the AR's batch-8 loop had
  become ~3x faster since the committed run). The sampler is gated by its normalised speed
  instead. Ours/reference targets of overhead-bound figures are never gated (CI is not the
  reference machine, and a GEMM rate does not normalise overhead).
* ``NOISE_FACTOR = 1.75``: a gated value half its committed baseline (a 2x regression of one
  side) is 12.5% under the floor and fails, unless the baseline beat the target by more than
  14% (then the floor is the target's: falling more than 1.75x below the target fails). Noise and
  the machine's shift together may cost up to 1.75x. On this shared machine the CALM/AR batch-1
  ratio moved 1.4x between two quiet runs (2.38, 1.72) before the pairs were interleaved; the
  like-for-like choice above keeps the machine shift small. ``min(target, ...)`` stays because a
  baseline measured under contention can overshoot (next point): the committed run of
  2026-12-07 gave CALM/AR 5.97 at batch 8 where quiet rounds give 2.3-2.6.
* What pairing does not cancel: contention so heavy that a two-thread operation waits on a
  descheduled thread. Then the loop with more, smaller operations (the AR's) slows most and
  CALM/AR rises; and a one-product GEMM beside a figure of many seconds samples only a moment of
  the load. A baseline measured that way is lenient for the GEMM-normalised values and strict
  for CALM/AR generation, so the committed full run should come from a quiet machine (its
  ``machine.load_average_at_start`` and per-round timings show how quiet it was).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "NOISE_FACTOR",
    "PAIR_REPS",
    "REFERENCE",
    "REFERENCE_MATMUL_GFLOPS",
    "TARGETS",
    "Target",
    "baseline_ratios",
    "check",
    "evaluate_targets",
    "gemm_rate",
    "lookup",
]

#: how far a gated value may fall below min(target, committed baseline) before CI calls it a
#: regression (below 2, so that a 2x regression fails)
NOISE_FACTOR = 1.75

#: interleaved rounds of the gated generation pairs, also with --quick (a median of 3 rounds of a
#: ratio moves more than one of 5)
PAIR_REPS = 5

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
    ``gated``: CI checks it (see the module docstring for which and why); a gated reference
    target is checked on its normalised ratio.
    """

    name: str
    kind: Literal["within", "reference", "absolute"]
    numerator: str
    denominator: str | None
    minimum: float
    gated: bool = False


TARGETS: tuple[Target, ...] = (
    Target("generation T=1 batch 1, CALM/AR", "within", "gen_tok_s.calm_t1_b1",
           "gen_tok_s.ar_b1", 3.5, gated=True),
    Target("generation T=1 batch 8, CALM/AR", "within", "gen_tok_s.calm_t1_b8",
           "gen_tok_s.ar_b8", 2.5, gated=True),
    Target("generation T=1 batch 1, ours/reference CALM", "reference", "gen_tok_s.calm_t1_b1",
           None, 2.0),
    Target("generation T=1 batch 8, ours/reference CALM", "reference", "gen_tok_s.calm_t1_b8",
           None, 2.0),
    Target("generation T=0.5 batch approx. batch 8, ours/reference", "reference",
           "gen_tok_s.calm_t05batch_b8", None, 20.0, gated=True),
    Target("generation T=0.5 batch approx. batch 8, CALM/AR", "within",
           "gen_tok_s.calm_t05batch_b8", "gen_tok_s.ar_b8", 1.5),
    Target("training, CALM (energy) ours/reference", "reference", "train_tok_s.calm_energy",
           None, 1.5),
    Target("training, CALM (energy)/AR", "within", "train_tok_s.calm_energy",
           "train_tok_s.ar", 1.3, gated=True),
    Target("training, codec ours/reference", "reference", "train_tok_s.codec", None, 1.3),
    Target("training MFU, CALM", "absolute", "mfu.calm", None, 0.35, gated=True),
    Target("training MFU, AR", "absolute", "mfu.ar", None, 0.35, gated=True),
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


def gemm_rate(results: dict[str, Any], key: str) -> float | None:
    """The fp32 GEMM GFLOP/s measured interleaved with figure ``key`` (``gemm_during``), else
    the run's GEMM rate at its start."""
    during = results.get("gemm_during") or {}
    value = during.get(key) if isinstance(during, dict) else None
    if isinstance(value, int | float) and value > 0:
        return float(value)
    return lookup(results, "matmul_gflops")


def evaluate_targets(
    results: dict[str, Any], baseline: dict[str, float] | None = None
) -> list[dict[str, Any]]:
    """Every target's ratio in this run, whether it meets the target, and the CI verdict.

    Args:
        results: this run's figures; ``paired`` ("num/den" -> per-round ratio) replaces the
            ratio of two medians where present, and ``gemm_during`` normalises the figures it
            names by the GEMM rate measured beside them.
        baseline: target name -> checked value of the committed full run
            (:func:`baseline_ratios`).

    Returns:
        One dict per target: ``name``, ``kind``, ``ratio`` (None when a figure is missing),
        ``ratio_normalised`` (reference targets: the ratio over this machine's GEMM rate relative
        to the reference machine's), ``target``, ``met`` (ratio >= target), ``gated``,
        ``ci_value`` (what CI checks), ``ci_floor`` (``min(target, baseline) / NOISE_FACTOR``;
        None when not gated or without a baseline) and ``ci_ok``.
    """
    rows: list[dict[str, Any]] = []
    for t in TARGETS:
        num = lookup(results, t.numerator)
        normalised: float | None = None
        if t.kind == "within":
            pair = (results.get("paired") or {}).get(f"{t.numerator}/{t.denominator}")
            ratio = pair if pair else _ratio(num, lookup(results, t.denominator or ""))
        elif t.kind == "reference":
            ratio = _ratio(num, REFERENCE[t.numerator])
            gemm = gemm_rate(results, t.numerator)
            normalised = _ratio(ratio, gemm / REFERENCE_MATMUL_GFLOPS if gemm else None)
        else:
            ratio = num
        value = normalised if t.kind == "reference" else ratio
        base = (baseline or {}).get(t.name) if t.gated else None
        floor = min(t.minimum, base) / NOISE_FACTOR if base else None
        rows.append(
            {
                "name": t.name,
                "kind": t.kind,
                "ratio": ratio,
                "ratio_normalised": normalised,
                "target": t.minimum,
                "met": None if ratio is None else ratio >= t.minimum,
                "gated": t.gated,
                "ci_value": value if t.gated else None,
                "ci_floor": floor,
                "ci_ok": None if (value is None or floor is None) else value >= floor,
            }
        )
    return rows


def baseline_ratios(details: dict[str, Any] | None) -> dict[str, float]:
    """Target name -> the value CI checks, from a full run's details
    (``benchmarks/results/speed.json``; a record without ``ci_value`` gives its ratio, or the
    normalised ratio of a reference target)."""
    if not details or details.get("mode") != "full":
        return {}
    out: dict[str, float] = {}
    for row in details.get("targets", []):
        if "ci_value" in row:
            value = row["ci_value"]  # None where not gated
        else:
            value = row.get("ratio_normalised" if row.get("kind") == "reference" else "ratio")
        if isinstance(value, int | float) and math.isfinite(value) and value > 0:
            out[row["name"]] = float(value)
    return out


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
    """CI failures: gated targets whose value is below ``min(target, baseline) / NOISE_FACTOR``.

    A missing figure is not a failure here (it is reported as missing with its reason); a
    measured one that regressed is.
    """
    failures = []
    for row in rows:
        if row["ci_ok"] is False:
            what = "normalised ratio" if row["kind"] == "reference" else "ratio"
            failures.append(
                f"{row['name']}: {what} {row['ci_value']:.3g} < {row['ci_floor']:.3g} "
                f"(min(target {row['target']:g}, last full run) / noise factor {NOISE_FACTOR:g})"
            )
    return failures
