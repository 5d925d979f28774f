"""What ``calm demo`` leaves behind: the comparison table, ``report.md``, ``results.json``, the
combined ``metrics.jsonl`` and the training-curve plot.

What is unusual: the plot needs matplotlib, which is an optional extra (``calm-core[plot]``);
without it the PNG is skipped and the report says how to get it. The report is written to be
honest about scale: a few minutes of CPU training give poor text, and at this size BrierLM is
dominated by the noise of Brier-4, so Brier-1 and Brier-2 (with standard errors) carry the signal.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from calm_core.demo.result import DemoResult, dump_json

__all__ = [
    "PLOT_NAME",
    "REPORT_NAME",
    "RESULTS_NAME",
    "next_steps",
    "summary_table",
    "write_outputs",
]

REPORT_NAME = "report.md"
RESULTS_NAME = "results.json"
PLOT_NAME = "training_curves.png"
_STAGES = (
    ("codec", "codec (reconstruction loss)"),
    ("calm", "CALM (energy loss)"),
    ("ar", "AR baseline (cross-entropy)"),
)


def _fmt_brier(model: dict[str, Any], n: int) -> str:
    b = model.get("brier")
    if not b:
        return "-"
    return f"{b['brier'][str(n)]:.4f} ± {b['brier_se'][str(n)]:.4f}"


def _fmt_si(x: float) -> str:
    return f"{x:.2e}"


def summary_table(result: DemoResult) -> str:
    """The short comparison table printed at the end of the demo (Markdown)."""
    rec = result.codec.get("reconstruction", {})
    calm, ar = result.models.get("calm", {}), result.models.get("ar", {})

    def both(fn: Any) -> tuple[str, str]:
        return (fn(calm) if calm else "-", fn(ar) if ar else "-")

    rows: list[tuple[str, str, str]] = [
        (
            "codec reconstruction, held-out tokens",
            f"{100 * rec.get('token_accuracy', float('nan')):.2f}%",
            "(no codec)",
        ),
        ("Brier-1 (± s.e.)", *both(lambda m: _fmt_brier(m, 1))),
        ("Brier-2 (± s.e.)", *both(lambda m: _fmt_brier(m, 2))),
        ("Brier-3 (± s.e.)", *both(lambda m: _fmt_brier(m, 3))),
        ("Brier-4 (± s.e.)", *both(lambda m: _fmt_brier(m, 4))),
        (
            "BrierLM (x100)",
            *both(lambda m: f"{m['brier']['brierlm']:.2f}" if "brier" in m else "-"),
        ),
        ("training steps / tokens", *both(lambda m: f"{m['steps']} / {m['tokens']:,}")),
        ("training FLOPs (analytic)", *both(lambda m: _fmt_si(m["train_flops"]))),
        ("training tokens/s", *both(lambda m: f"{m['train_tokens_per_s']:,.0f}")),
        (
            "generation tokens/s, batch 1 / 8 (T=1)",
            *both(
                lambda m: (
                    f"{m['gen_tokens_per_s']['b1']:,.0f} / {m['gen_tokens_per_s']['b8']:,.0f}"
                    if "gen_tokens_per_s" in m
                    else "-"
                )
            ),
        ),
        ("training wall time", *both(lambda m: f"{m['train_s']:.0f} s")),
    ]
    width = max(len(r[0]) for r in rows)
    w1 = max(len("CALM"), *(len(r[1]) for r in rows))
    w2 = max(len("AR"), *(len(r[2]) for r in rows))
    lines = [
        f"| {'':<{width}} | {'CALM':<{w1}} | {'AR':<{w2}} |",
        f"|{'-' * (width + 2)}|{'-' * (w1 + 2)}|{'-' * (w2 + 2)}|",
    ]
    lines += [f"| {a:<{width}} | {b:<{w1}} | {c:<{w2}} |" for a, b, c in rows]
    lines.append(f"\ntotal demo wall time: {result.wall_s:.0f} s")
    return "\n".join(lines)


def next_steps(result: DemoResult) -> str:
    """How to continue from the demo's output directory (shell commands)."""
    out = result.out_dir

    def at(name: str) -> str:  # quoted for the shell: the output path may hold spaces
        return shlex.quote(str(out / name))

    prompt = shlex.quote("The history of the")
    return "\n".join(
        [
            f"calm generate {at('calm')} --prompt {prompt} --max-new-tokens 64 "
            "--temperature 0.5 --sampling batch",
            f"calm generate {at('ar')} --prompt {prompt} --max-new-tokens 64",
            f"calm eval {at('calm')} --data {at('data')} --split val --json",
            f"calm eval {at('codec')} --data {at('data')} --split val",
            f"calm train --data {at('data')} --codec {at('codec')} --out runs/calm-longer "
            "--steps 20000",
        ]
    )


def _write_metrics(result: DemoResult) -> Path:
    """One JSON line per training step (with its ``stage``) and per evaluation."""
    path = result.out_dir / "metrics.jsonl"
    lines: list[str] = []
    for stage, _ in _STAGES:
        for step, loss in result.curves.get(stage, []):
            lines.append(json.dumps({"stage": stage, "step": step, "loss": loss}))
    rec = result.codec.get("reconstruction")
    if rec is not None:
        lines.append(
            json.dumps(
                {
                    "stage": "codec",
                    "step": result.codec["steps"],
                    "eval/token_accuracy": rec["token_accuracy"],
                    "eval/chunk_accuracy": rec["chunk_accuracy"],
                }
            )
        )
    for kind, model in result.models.items():
        if "brier" in model:
            b = model["brier"]
            record = {"stage": kind, "step": model["steps"], "eval/brierlm": b["brierlm"]}
            record.update({f"eval/brier{n}": b["brier"][str(n)] for n in range(1, 5)})
            record.update({f"eval/brier{n}_se": b["brier_se"][str(n)] for n in range(1, 5)})
            lines.append(json.dumps(record))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _write_plot(result: DemoResult) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        result.notes.append(
            "training_curves.png was skipped: matplotlib is not installed "
            "(pip install 'calm-core[plot]')"
        )
        return None
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, (stage, title) in zip(axes, _STAGES, strict=True):
        curve = result.curves.get(stage, [])
        if curve:
            ax.plot(
                [s for s, _ in curve],
                [v for _, v in curve],
                lw=1.2,
                marker="." if len(curve) < 30 else None,
            )
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = result.out_dir / PLOT_NAME
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _spent(result: DemoResult) -> str:
    spent = [
        f"{m['train_flops']:.1e} ({name})"
        for name, m in (("CALM", result.models.get("calm")), ("AR", result.models.get("ar")))
        if m and "train_flops" in m
    ]
    return " and ".join(spent) or "no training FLOPs"


def _report(result: DemoResult, plot: Path | None) -> str:
    d, c = result.data, result.config
    rec = result.codec.get("reconstruction", {})
    noisy = rec.get("noisy_token_accuracy", {})
    parts = [
        "# calm demo report",
        "",
        f"Corpus: {result.corpus}; {d.get('documents')} documents, split by whole document: "
        f"{d.get('train_documents')} for training ({d.get('train_tokens', 0):,} tokens), "
        f"{d.get('val_documents')} held out ({d.get('val_tokens', 0):,} tokens) and never trained "
        f"on (the tokenizer was fitted on the training documents only). BPE vocabulary "
        f"{d.get('vocab_size')}, chunk size K={c.chunk_size}.",
        "",
        "## Results",
        "",
        summary_table(result),
        "",
        "## What the numbers mean",
        "",
        f"- **Codec reconstruction**: the autoencoder maps each chunk of {c.chunk_size} held-out "
        f"tokens to one {c.codec.latent_size}-dim vector and back; "
        f"{100 * rec.get('token_accuracy', 0):.2f}% of tokens "
        f"({100 * rec.get('chunk_accuracy', 0):.2f}% of whole chunks) come back exactly. With "
        "Gaussian noise added to the latent: "
        + ", ".join(f"std {k}: {100 * v:.1f}%" for k, v in noisy.items())
        + f". Collapsed latent dims: {rec.get('collapsed_dims')} of {rec.get('latent_size')}.",
        "- **Brier-n** is the strictly proper Brier score of the next n tokens, estimated "
        "without likelihoods from two model samples; 1 is perfect, 0 is what a model that never "
        "predicts the right n-gram scores, and it can be negative. **BrierLM** is 100 x the "
        "geometric mean of Brier-1..4 (reported as 0 when any Brier-n <= 0).",
        "- At this scale BrierLM is dominated by the noise of Brier-4 (a few minutes of CPU "
        "training rarely predicts 4-grams); compare **Brier-1 and Brier-2 with their standard "
        "errors** (clustered by evaluated block). The paper's models reach BrierLM 5-9 after "
        f"~10^20-10^21 training FLOPs; this demo spent {_spent(result)}.",
        "- CALM takes one backbone step per chunk of K tokens, the AR baseline one per token; "
        "both trained on the same tokens with the same backbone. Training FLOPs are analytic "
        "(matmuls only, backward = 2x forward).",
        "- The sample continuations below are poor text: the models are tiny and trained for "
        "minutes. They show the mechanics (prompting, chunked generation, temperature), not "
        "quality.",
    ]
    if rec and rec.get("token_accuracy", 1.0) < 0.99:
        parts.append(
            f"- The codec reconstructs only {100 * rec['token_accuracy']:.1f}% of held-out tokens "
            "(< 99%): CALM cannot be better than its codec, so its numbers here say little. Give "
            "the codec more time (`codec.time_budget_s` / `codec.steps` in a `--config` file, or "
            "`calm train-codec`)."
        )
    for kind, model in result.models.items():
        b = model.get("brier", {})
        if b.get("warning"):
            parts.append(f"- {kind.upper()} BrierLM note: {b['warning']}")
        if model.get("stopped_by_budget"):
            parts.append(
                f"- {kind.upper()} training stopped at its time budget after {model['steps']} of "
                f"{model['planned_steps']} planned steps."
            )
    if result.codec.get("reached_target"):
        parts.append(
            f"- Codec training stopped early after {result.codec['steps']} steps, once "
            f"{100 * c.codec.target_accuracy:.1f}% of a sample of *training* chunks was "
            "reconstructed (the held-out articles are used only for the figure above)."
        )
    if result.codec.get("stopped_by_budget"):
        parts.append(
            f"- Codec training stopped at its time budget after {result.codec['steps']} of "
            f"{result.codec['planned_steps']} planned steps."
        )
    parts += [f"- {n}" for n in result.notes]
    parts += ["", "## Training curves", ""]
    parts.append(
        f"![training curves]({PLOT_NAME})" if plot is not None else "(plot skipped; see notes)"
    )
    parts += ["", "## Sample continuations of held-out prompts", ""]
    if not result.samples:
        parts.append("(none)")
    for i, s in enumerate(result.samples, start=1):
        parts += [f"### Prompt {i}", "", "```text", s["prompt"].strip(), "```", ""]
        parts += ["Reference continuation:", "", "```text", s["reference"].strip(), "```", ""]
        for name, text in s["continuations"].items():
            parts += [f"{name}:", "", "```text", text.strip() or "(empty: EOS)", "```", ""]
    parts += [
        "## How to scale up",
        "",
        "- More data: `calm tokenize` any `.txt`/`.jsonl` corpus (`--corpus` runs this demo on "
        "it); the held-out set should stay separate articles.",
        "- A better codec first: train until held-out reconstruction is >= 99.9% and robust to "
        "latent noise (`calm train-codec --steps ...`); CALM cannot beat its codec.",
        "- Bigger backbones and much longer training (`calm train --config FILE`); the published "
        "CALM-M is 371M parameters trained on ~250k x 2M tokens, on GPUs (`torchrun` for DDP).",
        "- Evaluate on more held-out blocks to shrink the standard errors (`calm eval`).",
        "",
        "## Continue from here",
        "",
        "```bash",
        next_steps(result),
        "```",
        "",
        "Stage times (s): "
        + ", ".join(f"{k} {v:.0f}" for k, v in result.stage_seconds.items())
        + f"; total {result.wall_s:.0f} s.",
        "",
    ]
    return "\n".join(parts)


def write_outputs(result: DemoResult) -> dict[str, Path | None]:
    """Write metrics.jsonl, the plot, results.json and report.md into ``result.out_dir``."""
    metrics = _write_metrics(result)
    plot = _write_plot(result)
    report = result.out_dir / REPORT_NAME
    report.write_text(_report(result, plot), encoding="utf-8")
    results = result.out_dir / RESULTS_NAME
    dump_json(results, result.to_dict())
    return {"metrics": metrics, "plot": plot, "report": report, "results": results}
