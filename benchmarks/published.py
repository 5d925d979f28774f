"""Figures at the published shapes on this machine: ``python benchmarks/run.py --published``.

``calm-m`` and ``transformer-m`` (:mod:`calm_core.presets`; the same backbone), random weights,
fp32. Generation: prompt 32 tokens, 64 new tokens, KV cache, T=1 (one head sample per CALM step,
softmax sampling for the AR model), batch 1 and 8; the two models are timed interleaved so their
ratio sees the same machine (``paired``: the CALM/AR ratio round by round, median of the rounds).
Training: a few optimizer steps of the BENCHMARKS.md step on one sequence of 2,048 tokens; MFU =
analytic training FLOPs per token (``calm_core.costs.flops_per_token``, attention at the average
causal context) x tokens/s over the fp32 rate of a 2048^3 matmul timed interleaved with the steps
(round by round, median of the rounds).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from calm_core.builders import build_preset
from calm_core.costs import causal_context, decode_weights_per_token, flops_per_token
from calm_core.presets import get_preset
from torch import Tensor, nn

from benchmarks.speed import train_step_fn
from benchmarks.timing import gemm_call, matmul_gflops, measure_interleaved, paired_speedup

__all__ = ["MODELS", "run_published"]

#: output key -> preset name
MODELS = {"calm_m": "calm-m", "transformer_m": "transformer-m"}
PROMPT_LEN = 32
NEW_TOKENS = 64
BATCHES = (1, 8)
TRAIN_TOKENS = 2048
MATMUL_N = 2048
WARMUP_NEW_TOKENS = 8


def _tokens(batch: int, length: int, vocab: int, seed: int) -> Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def _generate_call(model: nn.Module, prompts: Tensor) -> Callable[[int], object]:
    gen = torch.Generator().manual_seed(0)
    call: Callable[[int], object] = partial(
        model.generate, prompts, temperature=1.0, generator=gen, stop_at_eos=False
    )
    return call


def _vocab(name: str) -> int:
    data = get_preset(name)
    return int(
        data["vocab_size"] if "vocab_size" in data else data["codec"]["config"]["vocab_size"]
    )


def _train_flops_per_token(name: str) -> float:
    data = get_preset(name)
    chunk = data["codec"]["config"]["chunk_size"] if data["kind"] == "calm" else 1
    positions = TRAIN_TOKENS // chunk
    return flops_per_token(data, context=causal_context(positions), training=True)


def run_published(
    *, reps: int = 3, log: Callable[[str], None] = print, only: set[str] | None = None
) -> dict[str, Any]:
    """Measure ``published.{gen_tok_s, train_mfu}`` (``only``: a subset of {"gen", "train"})."""
    out: dict[str, Any] = {
        "gen_tok_s": {},
        "train_mfu": {},
        "train_tok_s": {},
        "paired": {},
        "timings": {},
    }
    gemm, gemm_m = matmul_gflops(MATMUL_N)
    out["matmul_gflops"] = gemm
    log(f"  matmul {MATMUL_N}^3 fp32: {gemm:.1f} GFLOP/s")
    if only is None or "gen" in only:
        models = {key: build_preset(name).eval() for key, name in MODELS.items()}
        vocab = min(_vocab(name) for name in MODELS.values())
        for batch in BATCHES:
            prompts = _tokens(batch, PROMPT_LEN, vocab, seed=2)
            calls = {f"{k}_b{batch}": _generate_call(m, prompts) for k, m in models.items()}
            for call in calls.values():  # every code path once, at this batch
                call(WARMUP_NEW_TOKENS)
            timed = measure_interleaved(
                {k: partial(c, NEW_TOKENS) for k, c in calls.items()}, reps=reps, warmup=0
            )
            for key, m in timed.items():
                out["gen_tok_s"][key] = batch * NEW_TOKENS / m.seconds
                out["timings"][f"gen_tok_s.{key}"] = m.as_dict()
                log(f"  {key}: {out['gen_tok_s'][key]:.1f} tok/s")
            # the ratio round by round, so that the shared machine's load cancels
            calm_m, ar_m = timed[f"calm_m_b{batch}"], timed[f"transformer_m_b{batch}"]
            out["paired"][f"calm_m_b{batch}/transformer_m_b{batch}"] = paired_speedup(calm_m, ar_m)
        del models
    out["decode_weights_per_token"] = {k: decode_weights_per_token(n) for k, n in MODELS.items()}
    if only is None or "train" in only:
        gemm_fn, gemm_flops = gemm_call(MATMUL_N)
        for key, name in MODELS.items():
            model = build_preset(name)
            step = train_step_fn(model, _tokens(1, TRAIN_TOKENS, _vocab(name), seed=1))
            timed = measure_interleaved({"step": step, "gemm": gemm_fn}, reps=reps, warmup=1)
            m = timed["step"]
            del model, step
            fpt = _train_flops_per_token(name)
            tok_s = TRAIN_TOKENS / m.seconds
            out["train_tok_s"][key] = tok_s
            # over the GEMM timed beside each step, round by round (median of the rounds)
            flops_per_step = TRAIN_TOKENS * fpt
            out["train_mfu"][key] = flops_per_step / gemm_flops * paired_speedup(m, timed["gemm"])
            out["timings"][f"train.{key}"] = {**m.as_dict(), "flops_per_token": fpt}
            out["timings"][f"train.{key}.gemm"] = timed["gemm"].as_dict()
            log(f"  train {key}: {tok_s:.0f} tok/s, MFU {out['train_mfu'][key]:.2f}")
    out["matmul_end_gflops"] = matmul_gflops(MATMUL_N)[0]
    out["timings"]["matmul"] = gemm_m.as_dict()
    return out
