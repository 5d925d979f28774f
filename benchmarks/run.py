"""The single benchmark entry point: ``python benchmarks/run.py [--quick] [--json OUT] ...``.

Speed (default): every figure of BENCHMARKS.md on the bench configuration, each the median of
>= 3 repetitions after a warm-up, with the thread count, the machine and the fp32 GEMM throughput
measured in the same run; ratios (CALM/AR, ours/reference) are computed from this run only.

* ``--quick``: the same shapes, 3 repetitions, short warm-ups (about 2 minutes); implies
  ``--check``.
* ``--check``: exit 1 when a gated value falls below min(target, committed full run) / 1.75 (see
  :mod:`benchmarks.targets` for the rule and what is gated).
* ``--docs``: regenerate ``docs/benchmarks.md`` from this run and the committed result files, and
  save this run's details to ``benchmarks/results/speed.json``.
* ``--published``: generation tokens/s and training MFU at the published shapes
  (:mod:`benchmarks.published`), under the key ``published``.
* ``--report-only``: regenerate the page from the saved ``results/*.json`` without measuring.
* ``--quality``: run the quality sweep instead (long; see :mod:`benchmarks.quality`).

What is unusual: ``--json OUT`` holds exactly the keys of BENCHMARKS.md plus ``missing`` (figure
-> reason, for figures whose code is absent or failed; their values are null), so consumers can
rely on the schema; everything else (every repetition, targets, FLOPs) goes to ``--details``.
"""

from __future__ import annotations

import argparse
import calendar
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the ``benchmarks`` package importable
    sys.path.insert(0, str(ROOT))

from calm_core.runtime import tune_malloc  # noqa: E402

from benchmarks import speed as S  # noqa: E402
from benchmarks import targets as T  # noqa: E402
from benchmarks.published import run_published  # noqa: E402
from benchmarks.quality import run_quality  # noqa: E402
from benchmarks.report import write_docs  # noqa: E402
from benchmarks.timing import machine_info, matmul_gflops, set_threads  # noqa: E402

__all__ = ["main", "output_keys", "speed_settings"]

RESULTS_DIR = ROOT / "benchmarks" / "results"
GROUPS = ("train", "gen", "eval", "ctx")
OUTPUT_GROUPS = {
    "gen_tok_s": [
        "calm_t1_b1",
        "calm_t1_b8",
        "calm_t05batch_b1",
        "calm_t05batch_b8",
        "calm_t05exact_b1",
        "ar_b1",
        "ar_b8",
    ],
    "train_tok_s": ["codec", "calm_energy", "calm_diffusion", "calm_flow", "ar"],
    "eval_s": ["calm_brier", "ar_brier"],
    "gen_token_s_ctx": ["100", "1500"],
    "mfu": ["calm", "ar"],
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="benchmarks/run.py",
        description="Speed (default) or quality (--quality) benchmarks of calm on the bench "
        "configuration of BENCHMARKS.md.",
    )
    p.add_argument("--json", type=Path, metavar="OUT", help="write the output keys to OUT")
    p.add_argument("--details", type=Path, metavar="OUT", help="write every timing to OUT")
    p.add_argument("--quick", action="store_true", help="3 reps, short warm-ups; implies --check")
    p.add_argument(
        "--check",
        action="store_true",
        help="exit 1 on a regression (a gated value below min(target, committed full run) / 1.75)",
    )
    p.add_argument("--docs", action="store_true", help="regenerate docs/benchmarks.md")
    p.add_argument(
        "--report-only",
        action="store_true",
        help="regenerate docs/benchmarks.md from benchmarks/results/speed.json and quality.json "
        "without measuring (e.g. after the quality sweep finished)",
    )
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions (>= 3)")
    p.add_argument(
        "--only",
        default=None,
        help=f"comma-separated speed groups to run, from {', '.join(GROUPS)} (default all)",
    )
    p.add_argument(
        "--published",
        action="store_true",
        help="figures at the published shapes (calm-m, transformer-m): generation tokens/s and "
        "training MFU, under the key `published` (with --docs: also shown in the page)",
    )
    p.add_argument(
        "--note",
        default=None,
        help="a sentence about the measuring conditions, recorded with the machine and shown on "
        "the page (e.g. other jobs sharing the cores)",
    )
    p.add_argument("--quality", action="store_true", help="run the quality sweep instead")
    quality_options: tuple[tuple[str, type, str], ...] = (
        ("--minutes", float, "training minutes per main model (default 15, the protocol)"),
        ("--codec-minutes", float, "codec training minutes (default 0.8 x --minutes)"),
        ("--stop-at", str, "HH:MM (UTC): skip phases not started by then"),
        ("--phases", str, "comma-separated phases (data, codec, ar, calm, eval_ar, eval_calm, "
         "baselines); finished ones are reused"),
        ("--eval-blocks", int, "score the first N held-out 512-token blocks (default 0 = all); "
         "delete a phase's file under phases/ to re-evaluate it"),
        ("--quality-dir", Path, "work directory (default benchmarks/.work/quality[_quick])"),
    )  # fmt: skip
    for flag, kind, text in quality_options:
        p.add_argument(flag, type=kind, default=None, help=f"--quality: {text}")
    return p


def output_keys(results: dict[str, Any], missing: dict[str, str]) -> dict[str, Any]:
    """The ``--json`` object: exactly the BENCHMARKS.md keys (null where missing) + ``missing``."""
    out: dict[str, Any] = {}
    for group, keys in OUTPUT_GROUPS.items():
        got = results.get(group, {})
        out[group] = {k: got.get(k) for k in keys}
    for extra in ("matmul_gflops", "machine"):
        out[extra] = results.get(extra)
    out["missing"] = dict(missing)
    for group, keys in OUTPUT_GROUPS.items():
        for k in keys:
            if out[group][k] is None:
                out["missing"].setdefault(f"{group}.{k}", "not measured in this run (--only)")
    return out


def speed_settings(quick: bool, reps: int | None = None) -> S.Settings:
    """How a full or ``--quick`` run repeats. Both measure the same shapes (the gated ratios are
    compared with the committed full run); quick repeats less, except the gated generation
    pairs (:data:`benchmarks.targets.PAIR_REPS` rounds either way)."""
    return S.Settings(
        reps=reps if reps is not None else (3 if quick else 5),
        warmup=1,
        train_warmup=1 if quick else 2,
        ctx_new_tokens=32 if quick else 64,
    )


def _speed(args: argparse.Namespace) -> int:
    quick = bool(args.quick)
    check = bool(args.check or quick)
    settings = speed_settings(quick, args.reps)
    reps = settings.reps
    only = None
    if args.only:
        only = {g.strip() for g in args.only.split(",") if g.strip()}
        unknown = only - set(GROUPS)
        if unknown:
            print(f"unknown --only group(s) {sorted(unknown)}; choose from {GROUPS}")
            return 2
    threads = set_threads(args.threads)
    machine = machine_info()
    machine["command"] = "python benchmarks/run.py " + " ".join(
        shlex.quote(a) for a in sys.argv[1:]
    )
    if args.note:
        machine["note"] = args.note
    start = time.perf_counter()
    settings.log(f"threads={threads}; measuring fp32 matmul throughput")
    gemm, gemm_m = matmul_gflops()
    settings.log(f"  matmul 1024^3 fp32: {gemm:.1f} GFLOP/s")
    run = S.run_speed(settings, gemm, only=only)
    # GEMM again at the end: the machine is shared, so its speed can drift during the run
    gemm_end, gemm_end_m = matmul_gflops()
    results: dict[str, Any] = dict(run.results)
    results["matmul_gflops"] = gemm
    results["gemm_during"] = dict(run.gemm_during)
    results["paired"] = dict(run.paired)
    machine["wall_s"] = round(time.perf_counter() - start, 1)
    results["machine"] = machine
    committed = RESULTS_DIR / "speed.json"
    prior = json.loads(committed.read_text()) if committed.is_file() else None
    committed_baseline = T.baseline_ratios(prior)  # the last committed full run
    if quick:  # CI: compare with the last committed full run
        baseline = committed_baseline
    else:  # a full run is the next baseline: the floors it records come from its own ratios
        baseline = T.baseline_ratios({"mode": "full", "targets": T.evaluate_targets(results)})
    rows = T.evaluate_targets(results, baseline)
    # --check always compares with the committed run: floors from this run's own ratios sit
    # below them by construction and could never fail
    checked = rows if quick else T.evaluate_targets(results, committed_baseline)
    failures = T.check(checked) if check else []
    out = output_keys(results, run.missing)
    details = {
        **out,
        "mode": "quick" if quick else "full",
        "reps": reps,
        "timings": run.timings,
        "matmul": {"start": gemm_m.as_dict(), "end": gemm_end_m.as_dict(), "end_gflops": gemm_end},
        "extra": run.extra,
        "gemm_during": dict(run.gemm_during),
        "paired": dict(run.paired),
        "targets": rows,
        "reference_ratios": T.reference_ratios(results),
        "noise_factor": T.NOISE_FACTOR,
        "ci_failures": failures,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    if args.details:
        args.details.parent.mkdir(parents=True, exist_ok=True)
        args.details.write_text(json.dumps(details, indent=1) + "\n")
    if args.docs:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        (RESULTS_DIR / "speed.json").write_text(json.dumps(details, indent=1) + "\n")
        write_docs(ROOT, details, RESULTS_DIR / "quality.json")
    _print_summary(details)
    if failures:
        print("\nREGRESSION (below min(target, committed full run) / noise factor):")
        for f in failures:
            print(f"  {f}")
        return 1
    return 0


def _fmt(value: float | None, digits: int = 3) -> str:
    return "missing" if value is None else f"{value:.{digits}g}"


def _print_summary(details: dict[str, Any]) -> None:
    print(f"\nmachine: {details['machine']['cpu']}, threads {details['machine']['threads']}")
    print(f"matmul fp32: {_fmt(details['matmul_gflops'], 4)} GFLOP/s")
    for group in OUTPUT_GROUPS:
        values = ", ".join(f"{k}={_fmt(v, 4)}" for k, v in details[group].items())
        print(f"{group}: {values}")
    print("targets:")
    for row in details["targets"]:
        verdict = {True: "met", False: "NOT met", None: "missing"}[row["met"]]
        print(f"  {row['name']}: {_fmt(row['ratio'])} (target >= {row['target']:g}) {verdict}")
    for key, reason in details["missing"].items():
        print(f"missing {key}: {reason}")


def _utc_today(hhmm: str) -> float:
    """Epoch seconds of ``HH:MM`` UTC today."""
    hour, minute = (int(x) for x in hhmm.split(":"))
    now = time.gmtime()
    return float(calendar.timegm((now.tm_year, now.tm_mon, now.tm_mday, hour, minute, 0)))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    tune_malloc()  # as the `calm` command does: large freed buffers are reused, not re-faulted
    if args.reps is not None and args.reps < 3:
        print("--reps must be >= 3 (the benchmark rule is a median of >= 3 repetitions)")
        return 2
    if args.report_only:
        speed = RESULTS_DIR / "speed.json"
        if not speed.is_file():
            print(f"{speed} does not exist; run `python benchmarks/run.py --docs` first")
            return 2
        details = json.loads(speed.read_text())
        # verdicts and CI floors follow the current rules (the figures are the run's)
        own = T.baseline_ratios({"mode": "full", "targets": T.evaluate_targets(details)})
        details["targets"] = T.evaluate_targets(details, own)
        details["noise_factor"] = T.NOISE_FACTOR
        speed.write_text(json.dumps(details, indent=1) + "\n")
        print(write_docs(ROOT, details, RESULTS_DIR / "quality.json"))
        return 0
    if args.quality:
        set_threads(args.threads)
        return run_quality(
            ROOT,
            minutes=args.minutes,
            work_dir=args.quality_dir,
            quick=bool(args.quick),
            phases=tuple(x.strip() for x in args.phases.split(",")) if args.phases else None,
            codec_minutes=args.codec_minutes,
            eval_blocks=args.eval_blocks,
            stop_at=_utc_today(args.stop_at) if args.stop_at else None,
            out=RESULTS_DIR / ("quality_quick.json" if args.quick else "quality.json"),
        )
    if args.published:
        return _published(args)
    return _speed(args)


def _published(args: argparse.Namespace) -> int:
    """``--published``: the figures at the published shapes (:mod:`benchmarks.published`)."""
    set_threads(args.threads)
    machine = machine_info()
    machine["command"] = "python benchmarks/run.py " + " ".join(
        shlex.quote(a) for a in sys.argv[1:]
    )
    if args.note:
        machine["note"] = args.note
    only = {g.strip() for g in args.only.split(",")} if args.only else None
    start = time.perf_counter()
    pub = run_published(reps=args.reps or 3, log=lambda msg: print(msg, file=sys.stderr), only=only)
    machine["wall_s"] = round(time.perf_counter() - start, 1)
    out = {
        "published": {"gen_tok_s": pub["gen_tok_s"], "train_mfu": pub["train_mfu"]},
        "matmul_gflops": pub["matmul_gflops"],
        "machine": machine,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    if args.docs:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        (RESULTS_DIR / "published.json").write_text(
            json.dumps({**out, "details": pub}, indent=1) + "\n"
        )
        speed = json.loads((RESULTS_DIR / "speed.json").read_text())
        write_docs(ROOT, speed, RESULTS_DIR / "quality.json")
    print(json.dumps(out["published"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
