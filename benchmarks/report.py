"""``docs/benchmarks.md`` from the committed result files.

Every number in the page comes from ``benchmarks/results/{speed,published,quality}.json``; the page
holds tables and fixed explanations only. Findings that need prose (why CALM scores what it does
at this scale) live in a dated, hand-written page (``docs/benchmarks-diagnosis-2026-12.md``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.targets import NOISE_FACTOR, REFERENCE, REFERENCE_MATMUL_GFLOPS

__all__ = ["flops_to_reach", "fmt", "md_table", "write_docs"]

DIAGNOSIS_PAGE = "benchmarks-diagnosis-2026-12.md"
BRIER1_THRESHOLDS = (0.005, 0.01, 0.02, 0.04)
SPEED_LABELS = {
    "gen_tok_s.calm_t1_b1": "CALM generation T=1, batch 1 (tokens/s)",
    "gen_tok_s.calm_t1_b8": "CALM generation T=1, batch 8 (tokens/s)",
    "gen_tok_s.calm_t05batch_b1": "CALM T=0.5 batch approx. N=200, batch 1 (tokens/s)",
    "gen_tok_s.calm_t05batch_b8": "CALM T=0.5 batch approx. N=200, batch 8 (tokens/s)",
    "gen_tok_s.calm_t05exact_b1": "CALM T=0.5 exact sampler, batch 1 (tokens/s)",
    "gen_tok_s.ar_b1": "AR generation greedy, KV cache, batch 1 (tokens/s)",
    "gen_tok_s.ar_b8": "AR generation greedy, KV cache, batch 8 (tokens/s)",
    "train_tok_s.codec": "codec training (tokens/s)",
    "train_tok_s.calm_energy": "CALM (energy) training (tokens/s)",
    "train_tok_s.calm_diffusion": "CALM (diffusion) training (tokens/s)",
    "train_tok_s.calm_flow": "CALM (flow) training (tokens/s)",
    "train_tok_s.ar": "AR training (tokens/s)",
    "eval_s.calm_brier": "CALM BrierLM evaluation, 8 x 512 tokens (s)",
    "eval_s.ar_brier": "AR BrierLM evaluation, 8 x 512 tokens (s)",
    "gen_token_s_ctx.100": "CALM per-token generation time at 100 tokens of context (s)",
    "gen_token_s_ctx.1500": "CALM per-token generation time at 1,500 tokens of context (s)",
}


def fmt(x: float | None, digits: int = 3) -> str:
    """A table cell: ``digits`` significant digits, scientific when tiny or huge, thousands
    separated, an em dash for a missing or non-finite value."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    if x != 0 and (abs(x) >= 1e5 or abs(x) < 1e-3):
        return f"{x:.{digits - 1}e}"
    return f"{x:,.{digits}g}" if abs(x) < 1000 else f"{x:,.0f}"


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A Markdown table (and the blank line after it) as lines."""
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return [*out, *("| " + " | ".join(r) + " |" for r in rows), ""]


def flops_to_reach(curve: list[dict[str, Any]], metric: str, threshold: float) -> float | None:
    """Training FLOPs at which ``metric`` (``brier1``..``brier4``, ``brierlm``) first reaches
    ``threshold``, interpolated linearly in log FLOPs between the snapshots around it; None when
    no snapshot reaches it."""
    prev: tuple[float, float] | None = None
    for row in curve:
        value = float(row["brierlm"] if metric == "brierlm" else row["brier"][metric[5:]])
        flops = float(row["train_flops"])
        if flops <= 0:
            continue
        if value >= threshold:
            if prev is None or prev[1] >= threshold:
                return flops
            f0, v0 = prev
            t = (threshold - v0) / (value - v0)
            return math.exp(math.log(f0) + t * (math.log(flops) - math.log(f0)))
        prev = (flops, value)
    return None


# ------------------------------------------------------------------------------------- speed
def _spread(timing: dict[str, Any] | None) -> str:
    reps = (timing or {}).get("reps_s") or []
    return f"{max(reps) / min(reps):.2f}" if reps and min(reps) > 0 else "—"


def _speed_section(d: dict[str, Any]) -> list[str]:
    lines = [
        "## Speed",
        "",
        f"Bench configuration of BENCHMARKS.md, random weights and token ids, fp32, "
        f"{d['machine']['threads']} threads; each figure is the median of {d['reps']} timed "
        "repetitions after a warm-up (every repetition is in `benchmarks/results/speed.json`); "
        "CALM at T=1 and the AR baseline are timed interleaved, one repetition of each per round. "
        f"fp32 matmul (1024³) in this run: {fmt(d['matmul_gflops'], 4)} GFLOP/s at the start, "
        f"{fmt(d['matmul']['end_gflops'], 4)} at the end (the reference machine: 128-165). "
        "Spread = slowest / fastest repetition; ours/reference > 1 means ours is faster.",
        "",
    ]
    rows = []
    for key, label in SPEED_LABELS.items():
        group, name = key.split(".")
        ref = REFERENCE.get(key)
        ratio = d.get("reference_ratios", {}).get(key) if ref else None
        spread = _spread(d.get("timings", {}).get(key))
        rows.append([label, fmt(d[group].get(name), 4), fmt(ref, 4), fmt(ratio), spread])
    lines += md_table(["figure", "ours", "reference", "ours/reference", "spread"], rows)
    extra = d.get("extra", {})
    agree = extra.get("ar_brier_always_agree_s")
    rows = [["AR BrierLM evaluation, samples always agree (s)", fmt(agree, 4), "16.2"]]
    lines += md_table(["further figure", "ours", "reference"], rows)
    lines += ["### Targets (ratios within this run)", ""]
    rows = []
    for t in d["targets"]:
        verdict = {True: "met", False: "**not met**", None: "missing"}[t["met"]]
        norm = fmt(t.get("ratio_normalised")) if t["kind"] == "reference" else "—"
        floor = fmt(t["ci_floor"]) if t.get("gated") else "not gated"
        rows.append([t["name"], fmt(t["ratio"]), norm, f"≥ {t['target']:g}", verdict, floor])
    header = ["target", "ratio", "normalised to reference GEMM", "target", "verdict", "CI floor"]
    lines += md_table(header, rows)
    lines += [
        f"Normalised = ratio / (the fp32 GEMM rate measured beside the figure / "
        f"{REFERENCE_MATMUL_GFLOPS:g}, the reference machine's midpoint). CI (`nox -s bench -- "
        "--quick`, the same shapes) fails a gated target whose ratio (a reference target: its "
        f"normalised ratio) is below min(target, this run's value) / {NOISE_FACTOR:g}, so a 2x "
        "regression fails. Gated are the ratios whose two sides are limited by the same thing "
        "on any machine (`benchmarks/targets.py` says which and why).",
        "",
    ]
    weights = extra.get("decode_weight_mb_per_token")
    calm_s, ar_s = d["gen_tok_s"].get("calm_t1_b1"), d["gen_tok_s"].get("ar_b1")
    if isinstance(weights, dict) and calm_s and ar_s:
        lines += ["### Batch-1 generation: weights read per token", ""]
        lines += md_table(
            ["model", "fp32 MB read per token", "tokens/s", "GB/s of weights read"],
            [
                [
                    "CALM (bench)",
                    fmt(weights["calm"]),
                    fmt(calm_s, 4),
                    fmt(calm_s * weights["calm"] / 1e3),
                ],
                ["AR (bench)", fmt(weights["ar"]), fmt(ar_s, 4), fmt(ar_s * weights["ar"] / 1e3)],
            ],
        )
        lines += [
            "A batch-1 step reads each weight it uses once "
            "(`calm_core.costs.decode_weights_per_token`), so at equal speed per weight read "
            "CALM/AR is bounded by the ratio of the two counts: "
            f"{fmt(weights['ar'] / weights['calm'])} here (measured {fmt(calm_s / ar_s)}).",
            "",
        ]
    fpt = extra.get("train_flops_per_token")
    if fpt:
        achieved = extra.get("achieved_gflops", {})
        rows = [
            [label, fmt(fpt.get(k)), fmt(achieved.get(k)), fmt(d["mfu"].get(k))]
            for k, label in (("calm", "CALM (energy)"), ("ar", "AR"))
        ]
        lines += ["### Model FLOPs and utilisation", ""]
        header = ["model", "training FLOPs / token", "achieved GFLOP/s", "fraction of fp32 matmul"]
        lines += md_table(header, rows)
        lines += ["FLOPs per token are analytic (`calm_core.costs`).", ""]
    if d.get("missing"):
        lines += ["### Missing figures", ""]
        lines += [f"- `{k}`: {v}" for k, v in d["missing"].items()] + [""]
    return lines


def _published_section(p: dict[str, Any] | None) -> list[str]:
    lines = ["## Published shapes on this machine", ""]
    if p is None:
        return [*lines, "Not measured: run `python benchmarks/run.py --published --docs`.", ""]
    gen, mfu, det = p["published"]["gen_tok_s"], p["published"]["train_mfu"], p["details"]
    w = det["decode_weights_per_token"]
    m = p["machine"]
    lines += [
        f"`calm-m` and `transformer-m` (`calm_core.presets`, the same backbone), random weights, "
        f"fp32, {m['threads']} threads, {m['cpu']}; {m['date']}, `{m.get('command')}`. "
        "Generation: prompt 32, 64 new tokens, KV cache, T=1, the two models timed interleaved; "
        "median of 3 repetitions (the ratio: median of the per-round ratios). "
        "Where the decode step loses against the weight-read bound: "
        "[decode diagnosis, 2026-12](benchmarks-decode-2026-12.md). Training: the BENCHMARKS.md "
        "step on 1 x 2,048 tokens; MFU = "
        "analytic training FLOPs/token (`calm_core.costs.flops_per_token`, average causal "
        "context) x "
        f"tokens/s over a 2048³ fp32 matmul timed interleaved with the steps "
        f"({fmt(p['matmul_gflops'], 4)} GFLOP/s at the start of the run, "
        f"{fmt(det.get('matmul_end_gflops'), 4)} at the end).",
        *([f"Note: {m['note']}", ""] if m.get("note") else []),
        "",
    ]
    bound = w["transformer_m"] / w["calm_m"]
    rows = []
    for b in (1, 8):
        c, a = gen.get(f"calm_m_b{b}"), gen.get(f"transformer_m_b{b}")
        ratio = det.get("paired", {}).get(f"calm_m_b{b}/transformer_m_b{b}")
        ratio = ratio or (c / a if c and a else None)
        target = {1: 3.5, 8: 4.0}[b]
        rows.append([str(b), fmt(c, 4), fmt(a, 4), fmt(ratio), f"≥ {target:g}", fmt(bound)])
    header = [
        "batch",
        "calm-m tokens/s",
        "transformer-m tokens/s",
        "ratio",
        "target",
        "weight-read bound",
    ]
    lines += md_table(header, rows)
    rows = [[k, fmt(det["train_tok_s"].get(k), 4), fmt(mfu.get(k)), "≥ 0.8"] for k in mfu]
    lines += md_table(["model", "training tokens/s", "MFU vs measured fp32 matmul", "target"], rows)
    return lines


# ------------------------------------------------------------------------------------ quality
def _curve_table(ev: dict[str, Any], kind: str) -> list[str]:
    last = "perplexity" if kind == "ar" else "energy loss"
    rows = []
    for r in ev["curve"]:
        cells = [str(r["step"]), fmt(r["train_flops"])]
        cells += [f"{fmt(r['brier'][n])} ± {fmt(r['brier_se'][n], 2)}" for n in "1234"]
        cells += [fmt(r["brierlm"]), fmt(r.get("perplexity" if kind == "ar" else "val_loss"), 4)]
        rows.append(cells)
    header = ["step", "training FLOPs", "Brier-1", "Brier-2", "Brier-3", "Brier-4", "BrierLM", last]
    return md_table(header, rows)


def _crossing_table(phases: dict[str, Any]) -> list[str]:
    curves = [phases.get(f"eval_{k}", {}).get("curve") for k in ("ar", "calm")]
    levels = [("brier1", t) for t in BRIER1_THRESHOLDS] + [("brierlm", 0.1), ("brierlm", 1.0)]
    rows = []
    for metric, thr in levels:
        cells = [f"{'Brier-1' if metric == 'brier1' else 'BrierLM'} ≥ {thr:g}"]
        for curve in curves:
            f = flops_to_reach(curve, metric, thr) if curve else None
            cells.append(
                fmt(f) if f or not curve else f"not reached by {fmt(curve[-1]['train_flops'])}"
            )
        rows.append(cells)
    return md_table(["quality level", "AR: training FLOPs", "CALM: training FLOPs"], rows)


def _baselines_table(phases: dict[str, Any]) -> list[str]:
    base = phases.get("baselines")
    if not base:
        return []
    dash = ["—"] * 4
    sampler = base["chunk_sampler"]
    rows = [
        ["training unigram (AR's floor)", *map(fmt, base["unigram"]["brier_n"]), "—"],
        [
            "a random training chunk (CALM's floor)",
            *map(fmt, sampler["brier_n"]),
            fmt(sampler["energy_loss"], 4),
        ],
        [
            "a random training chunk with the target's true first token",
            *dash,
            fmt(base["first_token_oracle"]["energy_loss"], 4),
        ],
    ]
    for kind in ("ar", "calm"):
        if curve := phases.get(f"eval_{kind}", {}).get("curve"):
            b = curve[-1]
            loss = fmt(b["val_loss"], 4) if kind == "calm" else "—"
            rows.append(
                [f"{kind.upper()}, final snapshot", *(fmt(b["brier"][n]) for n in "1234"), loss]
            )
    return [
        "### Context-free baselines",
        "",
        "What a predictor scores on the same held-out blocks without the context "
        "(`benchmarks/baselines.py`; Brier-n exact, energy loss Monte-Carlo with N=8, M=100).",
        "",
        *md_table(["predictor", "Brier-1", "Brier-2", "Brier-3", "Brier-4", "energy loss"], rows),
    ]


def _target_row(
    label: str,
    curve: list[dict[str, Any]],
    key: Callable[[dict[str, Any]], Any],
    met: Callable[[float], bool],
    higher: bool = True,
) -> list[str]:
    """``[label, final, best (step), verdict on the final snapshot]``."""
    scored = [(float(v), r["step"]) for r in curve if (v := key(r)) is not None]
    best = (max if higher else min)(scored) if scored else None
    final = key(curve[-1])
    verdict = "met" if final is not None and met(float(final)) else "**not met**"
    return [label, fmt(final, 4), f"{fmt(best[0], 4)} ({best[1]})" if best else "—", verdict]


def _targets_table(phases: dict[str, Any]) -> list[str]:
    rows = []
    if ar := phases.get("eval_ar", {}).get("curve"):
        rows += [
            _target_row(
                "AR held-out Brier-1 vs reference AR 0.04-0.05",
                ar,
                lambda r: r["brier"]["1"],
                lambda v: v >= 0.04,
            ),
            _target_row(
                "AR BrierLM vs reference AR 0.24", ar, lambda r: r["brierlm"], lambda v: v >= 0.24
            ),
            _target_row(
                "AR perplexity vs reference AR ~215",
                ar,
                lambda r: r.get("perplexity"),
                lambda v: v <= 215,
                higher=False,
            ),
        ]
    if calm := phases.get("eval_calm", {}).get("curve"):
        rows.append(
            _target_row(
                "CALM held-out Brier-1 ≥ 0.02 (reference CALM 0.004)",
                calm,
                lambda r: r["brier"]["1"],
                lambda v: v >= 0.02,
            )
        )
        b = calm[-1]
        # positive by more than two standard errors, or a single lucky event could make it so
        significant = all(b["brier"][n] > 2 * b["brier_se"][n] for n in "1234")
        rows.append(
            [
                "CALM Brier-1..4 all > 2 standard errors",
                ", ".join(fmt(b["brier"][n]) for n in "1234"),
                "—",
                "met" if significant else "**not met**",
            ]
        )
    if not rows:
        return []
    header = ["target", "final snapshot", "best snapshot (step)", "verdict"]
    return ["### Quality targets", "", *md_table(header, rows)]


def _quality_section(q: dict[str, Any] | None) -> list[str]:
    lines = ["## Quality at equal compute (bundled corpus, held-out articles)", ""]
    if q is None:
        return [*lines, "No quality results: run `python benchmarks/run.py --quality`.", ""]
    phases, plan = q.get("phases", {}), q.get("plan", {})
    lines += [
        f"Collected {q.get('date', '?')} by `python benchmarks/run.py --quality` "
        f"({q.get('threads')} threads). Protocol: BPE 4096 trained on the 56 training articles, "
        f"6 held out; bench shapes; AdamW {plan.get('lr'):g} (0.9, 0.95), constant after "
        f"{plan.get('warmup_steps')} warm-up steps, wd 0.1, clip 1.0, batch {plan.get('batch')} x "
        f"{plan.get('seq_len')}; {plan.get('lm_minutes')} min per language model, "
        f"{plan.get('codec_minutes')} min for the codec (its default recipe). Held-out "
        "Brier-n ± standard error clustered by 512-token block (`calm_core.metrics`). Why CALM "
        f"scores what it does at this scale: [diagnosis, 2026-12]({DIAGNOSIS_PAGE}).",
        "",
    ]
    rows = [
        [n, str(p["steps"]), fmt(p["wall_s"], 4), fmt(p.get("cpu_s"), 4), ref]
        for n, ref in (("codec", "~1,100 (12 min)"), ("ar", "~645"), ("calm", "~830"))
        if (p := phases.get(n))
    ]
    header = ["model", "steps", "wall s", "CPU s (this process)", "reference steps"]
    lines += md_table(header, rows) if rows else []
    if codec := phases.get("codec"):
        acc = 100 * codec["val_token_accuracy"]
        lines += [
            f"Codec: held-out token reconstruction {acc:.2f}% after {codec['steps']} steps.",
            "",
        ]
    for kind, title in (("ar", "AR baseline"), ("calm", "CALM (energy head, K=4)")):
        if ev := phases.get(f"eval_{kind}"):
            lines += [f"### {title} ({ev['val_blocks']} held-out blocks)", ""]
            lines += _curve_table(ev, kind)
    lines += ["### Training FLOPs to reach a quality level", "", *_crossing_table(phases)]
    lines += _baselines_table(phases) + _targets_table(phases)
    if q.get("missing"):
        lines += ["### Quality phases not run", ""]
        lines += [f"- {k}: {v}" for k, v in q["missing"].items()] + [""]
    return lines


def _load(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _data_section(results: Path) -> list[str]:
    """The data pipeline's part of ``docs/benchmarks.md``, from a saved run of
    ``benchmarks/data.py --save`` (none: a note)."""
    lines = ["## Data pipeline", ""]
    if not results.is_file():
        return [*lines, "Not measured yet: `python benchmarks/data.py --save`.", ""]
    r = json.loads(results.read_text())
    m = r["machine"]
    met = r["targets_met"]
    lines += [
        f"`calm tokenize` on a synthetic {fmt(r['corpus_mib'])} MiB corpus ({r['documents']:,} "
        f"documents: the bundled articles repeated) with a fixed 4,096-id BPE, {r['workers']} "
        "workers, against bare loops over `tokenizers`' batch encoders on the same file and "
        f"cores in the same run (best of {r['repeats']} alternated runs each). Command: "
        f"`{r['command']}`; {m['date']}, {m['cpu']}, {m['logical_cores']} logical cores"
        + (f", load average at start {load}." if (load := m.get("load_average_at_start")) else ".")
        + (f" Note: {m['note']}." if m.get("note") else ""),
        "",
    ]
    rows = [
        [name, fmt(r[f"{key}_seconds"]), fmt(r[f"{key}_mib_s"]), fmt(r[f"{key}_cpu_seconds"])]
        for name, key in (
            ("bare `encode_batch` loop", "encode_batch"),
            ("bare `encode_batch_fast` loop", "encode_batch_fast"),
            ("`calm tokenize`", "pipeline"),
        )
        if f"{key}_seconds" in r
    ]
    lines += md_table(["run", "wall s", "MiB/s", "CPU s (all processes)"], rows)
    ok = {True: "met", False: "**not met**"}
    rows = [
        ["throughput / bare `encode_batch` loop (>= 0.9)", fmt(r["throughput_ratio"]),
         ok[met["throughput_ratio>=0.9"]]],
        ["throughput / bare loop of the same call (overhead)", fmt(r["overhead_ratio"]), ""],
        ["the same in CPU seconds", fmt(r["overhead_cpu_ratio"]), ""],
        ["peak RSS of the command, MiB (< 1 GB)", fmt(r["peak_rss_mib"]),
         ok[met["peak_rss<1GB"]]],
        ["peak RSS at 1/10 of the corpus, MiB", fmt(r["peak_rss_tenth_mib"]), ""],
        ["peak RSS full / tenth (within 10%)", fmt(r["rss_ratio_full_to_tenth"]),
         ok[met["rss_within_10%_of_tenth"]]],
    ]  # fmt: skip
    lines += md_table(["target", "value", ""], rows)
    lines += [
        "Peak RSS sums the proportional set size (PSS) of the command's process tree, sampled "
        "every 50 ms, so pages the forked workers share with the parent count once. "
        "`calm tokenize` calls `encode_batch_fast` where `tokenizers` has it (the same ids "
        "without character offsets).",
        "",
    ]
    return lines


def write_docs(root: Path, speed: dict[str, Any], quality_json: Path) -> Path:
    """Write ``docs/benchmarks.md`` from a speed run's details, the quality JSON
    and, beside it, ``published.json`` when present."""
    docs = root / "docs"
    m = speed["machine"]
    lines = [
        "# Benchmarks",
        "",
        "<!-- generated by `python benchmarks/run.py --docs` (nox -s bench); do not edit -->",
        "",
        f"- Date: {m['date']}; wall time of the speed run {m.get('wall_s')} s.",
        f"- Command: `{m.get('command')}` ({speed['mode']} run).",
        f"- Machine: {m['cpu']}, {m['logical_cores']} logical cores, {m.get('memory_gib')} GiB; "
        f"{m['threads']} torch threads; torch {m['torch']}, Python {m['python']}; load average "
        f"at start {m.get('load_average_at_start')}.",
        *([f"- Note: {m['note']}"] if m.get("note") else []),
        "- Configuration, reference figures and the output format: `BENCHMARKS.md` of the "
        "project brief (bench shapes in `benchmarks/models.py`).",
        "",
        *_speed_section(speed),
    ]
    lines += _published_section(_load(quality_json.parent / "published.json"))
    lines += _quality_section(_load(quality_json))
    lines += _data_section(quality_json.parent / "data.json")
    out = docs / "benchmarks.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines).rstrip() + "\n")
    return out
