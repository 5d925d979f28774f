"""The speed figures of BENCHMARKS.md: generation, training, BrierLM evaluation, context, MFU.

Each figure is measured by :func:`benchmarks.timing.measure` (warm-up, then the median of >= 3
repetitions) on the bench models of :mod:`benchmarks.models` with random weights and random token
ids. A figure whose code is missing, or that raises, is recorded as ``None`` with the reason in
``missing``; nothing is estimated or filled in.

What is unusual:

* The training step is written out here (zero_grad -> forward in train mode -> backward ->
  clip_grad_norm(1.0) -> optimizer step) with the project's own optimizer builder, exactly the
  step of BENCHMARKS.md, rather than timing ``Trainer.fit`` (whose logging and checkpointing
  are not part of the figure).
* The two sides of every gated ratio (:mod:`benchmarks.targets`) are timed interleaved
  (:func:`benchmarks.timing.measure_interleaved`: one repetition of each per round) and divided
  round by round (``run.paired``): CALM at T=1 and the AR baseline at each batch size, the CALM
  and AR training steps. A GEMM-bound figure (training, the T=0.5 batch approximation) is timed
  interleaved with a 1024^3 GEMM in the same way (``run.gemm_during``), for MFU and normalising.
* Per-token generation time at a context length is measured with the models' ``stream``
  iterators: the prompt's prefill and the first step are untimed, then the following steps are
  timed, so prefill cost never leaks into the per-token figure.
"""

from __future__ import annotations

import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from calm_core.calm import CALM
from calm_core.costs import causal_context, decode_weights_per_token, flops_per_token
from calm_core.metrics.brier import BrierAccumulator
from calm_core.metrics.brier_ar import ar_brier_scores
from calm_core.metrics.brier_calm import calm_brier_scores
from calm_core.training.config import TrainConfig
from calm_core.training.optim import build_optimizer
from torch import Tensor, nn

from benchmarks import models as M
from benchmarks.targets import PAIR_REPS
from benchmarks.timing import (
    Measurement,
    gemm_call,
    measure,
    measure_interleaved,
    paired_speedup,
)

__all__ = ["Settings", "SpeedRun", "brier_eval", "run_speed"]

CONTEXTS = (100, 1500)


@dataclass(frozen=True)
class Settings:
    """How much to repeat: ``reps`` timed repetitions after ``warmup`` untimed calls."""

    reps: int = 5
    pair_reps: int = PAIR_REPS
    warmup: int = 1
    train_warmup: int = 2
    ctx_new_tokens: int = 64
    log: Callable[[str], None] = field(default=lambda msg: print(msg, file=sys.stderr))


@dataclass
class SpeedRun:
    """Everything one speed run measured: the output keys, per-figure timings and missing ones."""

    results: dict[str, dict[str, float | None]] = field(default_factory=dict)
    timings: dict[str, dict[str, Any]] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    #: figure key -> fp32 GEMM GFLOP/s measured interleaved with it (the GEMM-bound figures),
    #: the rate its per-round speed ratios imply (:func:`_with_gemm`)
    gemm_during: dict[str, float] = field(default_factory=dict)
    #: "numerator/denominator" figure keys -> their per-round speed ratio (timed interleaved)
    paired: dict[str, float] = field(default_factory=dict)

    def put(self, group: str, key: str, value: float | None, timing: Measurement | None) -> None:
        self.results.setdefault(group, {})[key] = value
        if timing is not None:
            self.timings[f"{group}.{key}"] = timing.as_dict()

    def fail(self, group: str, keys: list[str], reason: str) -> None:
        for key in keys:
            self.results.setdefault(group, {})[key] = None
            self.missing[f"{group}.{key}"] = reason


def _attempt(
    run: SpeedRun,
    group: str,
    keys: list[str],
    settings: Settings,
    fn: Callable[[], None],
) -> None:
    """Run one figure group; record its keys as missing (with the reason) if it cannot run."""
    start = time.perf_counter()
    try:
        fn()
    except M.MissingFigureError as exc:
        run.fail(group, keys, f"missing code: {exc}")
    except Exception as exc:  # a broken figure must not hide the others
        traceback.print_exc()
        run.fail(group, keys, f"error: {type(exc).__name__}: {exc}")
    for key in keys:
        run.results.setdefault(group, {}).setdefault(key, None)
        if run.results[group][key] is None and f"{group}.{key}" not in run.missing:
            run.missing[f"{group}.{key}"] = "not measured"
    settings.log(f"  {group} {', '.join(keys)}: {time.perf_counter() - start:.1f} s")


def _tokens(batch: int, length: int, seed: int, vocab: int = M.VOCAB) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, length), generator=gen)


# ----------------------------------------------------------------------------------- training
def train_step_fn(model: nn.Module, tokens: Tensor) -> Callable[[], None]:
    """One BENCHMARKS.md training step on ``tokens`` (AdamW 3e-4, (0.9, 0.95), wd 0.1, clip 1)."""
    config = TrainConfig.model_validate(
        {"lr": 3e-4, "betas": (0.9, 0.95), "weight_decay": 0.1, "grad_clip": 1.0}
    )
    optimizer = build_optimizer(model, config)
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        out = model(tokens)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()

    return step


def _gemm_beside(
    run: SpeedRun, key: str, fig: Measurement, gemm: Measurement, flops: float
) -> None:
    """Record the GEMM rate beside figure ``key``: the one for which the figure over it equals
    the median over rounds of (figure speed / GEMM speed), so load cancels round by round."""
    run.gemm_during[key] = flops / 1e9 / (fig.seconds * paired_speedup(fig, gemm))


def _with_gemm(
    run: SpeedRun, key: str, fn: Callable[[], object], *, reps: int, warmup: int
) -> Measurement:
    """Time ``fn`` interleaved with a 1024^3 fp32 GEMM (:func:`_gemm_beside`)."""
    gemm, flops = gemm_call()
    timed = measure_interleaved({"fig": fn, "gemm": gemm}, reps=reps, warmup=warmup)
    _gemm_beside(run, key, timed["fig"], timed["gemm"], flops)
    return timed["fig"]


def _training(run: SpeedRun, settings: Settings) -> None:
    tokens_per_step = M.TRAIN_BATCH * M.SEQ_LEN
    tokens = _tokens(M.TRAIN_BATCH, M.SEQ_LEN, seed=1)

    def _time(key: str, model: nn.Module) -> None:
        step = train_step_fn(model, tokens)
        m = _with_gemm(run, f"train_tok_s.{key}", step, reps=settings.reps,
                       warmup=settings.train_warmup)  # fmt: skip
        run.put("train_tok_s", key, tokens_per_step / m.seconds, m)

    _attempt(run, "train_tok_s", ["codec"], settings, lambda: _time("codec", M.build_codec()))
    for head in ("diffusion", "flow"):
        key = f"calm_{head}"
        _attempt(
            run, "train_tok_s", [key], settings, lambda k=key, h=head: _time(k, M.build_calm(h))
        )

    def _calm_and_ar() -> None:
        # a gated ratio and both MFUs: the two steps and a GEMM timed interleaved, round by round
        gemm, flops = gemm_call()
        steps = {"calm_energy": M.build_calm("energy"), "ar": M.build_ar()}
        fns: dict[str, Callable[[], object]] = {
            k: train_step_fn(model, tokens) for k, model in steps.items()
        }
        timed = measure_interleaved(
            {**fns, "gemm": gemm}, reps=settings.reps, warmup=settings.train_warmup
        )
        for key in steps:
            run.put("train_tok_s", key, tokens_per_step / timed[key].seconds, timed[key])
            _gemm_beside(run, f"train_tok_s.{key}", timed[key], timed["gemm"], flops)
        run.paired["train_tok_s.calm_energy/train_tok_s.ar"] = paired_speedup(
            timed["calm_energy"], timed["ar"]
        )

    _attempt(run, "train_tok_s", ["calm_energy", "ar"], settings, _calm_and_ar)


# --------------------------------------------------------------------------------- generation
#: new tokens of a generation warm-up call: enough for a prefill, steps, sampling and decoding
WARMUP_NEW_TOKENS = 16


def _short_warmup(call: Callable[[int], object], settings: Settings) -> None:
    """Untimed warm-up of a generation figure: the same call with 16 new tokens (not 256).

    It exercises every code path (prefill, cache, head, sampler, decoder) at the same batch, so
    allocator and lazy initialisation are done, without paying a full call on a slow figure.
    """
    for _ in range(settings.warmup):
        call(WARMUP_NEW_TOKENS)


def _generation(run: SpeedRun, settings: Settings) -> None:
    new = M.NEW_TOKENS

    def _t1_and_ar() -> None:
        # CALM at T=1 and the AR baseline are timed interleaved, round by round, at each batch
        # size: their ratio is a target, and figures timed a minute apart on a shared machine can
        # disagree by more than the ratio's own noise
        calm, ar = M.build_calm("energy").eval(), M.build_ar().eval()
        for batch in (1, 8):
            prompts = _tokens(batch, M.PROMPT_LEN, seed=2)
            gen = torch.Generator().manual_seed(0)
            calls: dict[str, Callable[[int], object]] = {
                f"calm_t1_b{batch}": partial(
                    calm.generate, prompts, temperature=1.0, generator=gen, stop_at_eos=False
                ),
                f"ar_b{batch}": partial(ar.generate, prompts, temperature=0.0, stop_at_eos=False),
            }
            for call in calls.values():
                _short_warmup(call, settings)
            timed = measure_interleaved(  # a gated ratio: PAIR_REPS rounds even when quick
                {key: partial(call, new) for key, call in calls.items()},
                reps=max(settings.reps, settings.pair_reps),
                warmup=0,
            )
            for key, m in timed.items():
                run.put("gen_tok_s", key, batch * new / m.seconds, m)
            calm_m, ar_m = timed[f"calm_t1_b{batch}"], timed[f"ar_b{batch}"]
            pair = f"gen_tok_s.calm_t1_b{batch}/gen_tok_s.ar_b{batch}"
            run.paired[pair] = paired_speedup(calm_m, ar_m)

    _attempt(run, "gen_tok_s", ["calm_t1_b1", "ar_b1", "calm_t1_b8", "ar_b8"], settings, _t1_and_ar)

    def _calm_t05() -> None:
        model = M.build_calm("energy").eval()
        for batch in (1, 8):
            prompts = _tokens(batch, M.PROMPT_LEN, seed=2)
            gen = torch.Generator().manual_seed(0)
            call = partial(
                model.generate, prompts, temperature=0.5, sampling="batch", num_candidates=200,
                generator=gen, stop_at_eos=False,
            )  # fmt: skip
            _short_warmup(call, settings)
            key = f"calm_t05batch_b{batch}"
            # GEMM-bound (every candidate is decoded): gated over the GEMM rate beside it
            fig = partial(call, new)
            m = _with_gemm(run, f"gen_tok_s.{key}", fig, reps=settings.reps, warmup=0)
            run.put("gen_tok_s", key, batch * new / m.seconds, m)

    _attempt(run, "gen_tok_s", ["calm_t05batch_b1", "calm_t05batch_b8"], settings, _calm_t05)

    def _calm_exact() -> None:
        model = M.build_calm("energy").eval()
        prompts = _tokens(1, M.PROMPT_LEN, seed=2)
        gen = torch.Generator().manual_seed(0)
        call = partial(
            model.generate,
            prompts,
            temperature=0.5,
            sampling="exact",
            generator=gen,
            stop_at_eos=False,
        )
        _short_warmup(call, settings)
        m = measure(partial(call, new), reps=settings.reps, warmup=0)
        run.put("gen_tok_s", "calm_t05exact_b1", new / m.seconds, m)

    _attempt(run, "gen_tok_s", ["calm_t05exact_b1"], settings, _calm_exact)


def _stream_per_token(make_stream: Callable[[], Iterator[Tensor]]) -> Callable[[], float]:
    """A repetition: prefill + first step untimed, then seconds per new token over the rest."""

    def rep() -> float:
        it = make_stream()
        next(it)
        start = time.perf_counter()
        count = 0
        for out in it:
            count += int(out.shape[-1])
        elapsed = time.perf_counter() - start
        if count == 0:
            raise RuntimeError("the stream yielded a single step; nothing to time")
        return elapsed / count

    return rep


def _median_of(rep: Callable[[], float], settings: Settings) -> Measurement:
    for _ in range(settings.warmup):
        rep()
    values = [rep() for _ in range(max(3, settings.reps))]
    return Measurement(statistics.median(values), values, settings.warmup)


def _context(run: SpeedRun, settings: Settings) -> None:
    keys = [str(c) for c in CONTEXTS]
    new = settings.ctx_new_tokens

    def _calm() -> None:
        model = M.build_calm("energy", context_tokens=max(CONTEXTS) + new).eval()
        for ctx in CONTEXTS:
            prompt = _tokens(1, ctx, seed=3)
            gen = torch.Generator().manual_seed(0)
            rep = _stream_per_token(
                partial(model.stream, prompt, new + M.CHUNK, 1.0, generator=gen, stop_at_eos=False)
            )
            with torch.no_grad():
                m = _median_of(rep, settings)
            run.put("gen_token_s_ctx", str(ctx), m.seconds, m)

    _attempt(run, "gen_token_s_ctx", keys, settings, _calm)


# --------------------------------------------------------------------------------- evaluation
def brier_eval(
    model: nn.Module, blocks: Tensor, *, pad_id: int | None = None, batch: int = 8, seed: int = 0
) -> dict[str, Any]:
    """Brier-1..4 and BrierLM of ``model`` (CALM or AR) on ``blocks [n, T]`` with the library's
    estimators, ``batch`` blocks per call; the :class:`BrierResult` as a dict."""
    gen = torch.Generator().manual_seed(seed)
    score = calm_brier_scores if isinstance(model, CALM) else ar_brier_scores
    acc = BrierAccumulator()
    with torch.no_grad():
        for i in range(0, blocks.shape[0], batch):
            acc.update(score(model, blocks[i : i + batch], generator=gen, pad_id=pad_id))
    return acc.result().to_dict()


def _evaluation(run: SpeedRun, settings: Settings) -> None:
    tokens = _tokens(M.TRAIN_BATCH, M.SEQ_LEN, seed=4)

    def one(name: str, build: Callable[[], nn.Module]) -> None:
        model = build().eval()
        m = measure(lambda: brier_eval(model, tokens), reps=settings.reps, warmup=settings.warmup)
        run.put("eval_s", name, m.seconds, m)

    _attempt(
        run,
        "eval_s",
        ["calm_brier"],
        settings,
        lambda: one("calm_brier", lambda: M.build_calm("energy")),
    )
    _attempt(run, "eval_s", ["ar_brier"], settings, lambda: one("ar_brier", M.build_ar))

    # BENCHMARKS.md also gives the reference AR estimator when its two samples always agree
    # (16.2 s: its rollouts go on while they agree). A sharpened lm_head makes ours agree too.
    def agree() -> None:
        model = M.build_ar().eval()
        with torch.no_grad():
            model.lm_head.weight.mul_(1e4)  # softmax ~ one-hot: both samples are the argmax
        m = measure(lambda: brier_eval(model, tokens), reps=settings.reps, warmup=settings.warmup)
        run.put("eval_extra_s", "ar_brier_always_agree", m.seconds, m)
        run.extra["ar_brier_always_agree_s"] = m.seconds

    _attempt(run, "eval_extra_s", ["ar_brier_always_agree"], settings, agree)


# ------------------------------------------------------------------------------ decode weights
def _decode_weights(run: SpeedRun) -> None:
    """Weights a batch-1 generation step reads per new token (analytic; what bounds CALM/AR)."""

    def mb(preset: dict[str, Any] | str) -> float:
        return 4 * decode_weights_per_token(preset) / 1e6  # fp32

    run.extra["decode_weight_mb_per_token"] = {
        "calm": mb(M.preset_data("calm")),
        "ar": mb(M.preset_data("ar")),
        "calm-m": mb("calm-m"),
        "transformer-m": mb("transformer-m"),
    }


# ------------------------------------------------------------------------------------------ MFU
def _mfu(run: SpeedRun, gemm_gflops: float) -> None:
    calm_context = causal_context(M.SEQ_LEN // M.CHUNK)
    calm_fpt = flops_per_token(M.preset_data("calm"), context=calm_context, training=True)
    ar_context = causal_context(M.SEQ_LEN)
    ar_fpt = flops_per_token(M.preset_data("ar"), context=ar_context, training=True)
    run.extra["train_flops_per_token"] = {"calm": calm_fpt, "ar": ar_fpt}
    run.extra["achieved_gflops"] = {}
    for name, key, fpt in (("calm", "calm_energy", calm_fpt), ("ar", "ar", ar_fpt)):
        tok_s = run.results.get("train_tok_s", {}).get(key)
        if tok_s is None:
            run.fail("mfu", [name], f"needs train_tok_s.{key}, which is missing")
            continue
        achieved = tok_s * fpt / 1e9
        run.extra["achieved_gflops"][name] = achieved
        # over the GEMM rate measured interleaved with this training step (the run's start rate
        # when that is missing): the machine's load moves both alike
        gemm = run.gemm_during.get(f"train_tok_s.{key}", gemm_gflops)
        run.put("mfu", name, achieved / gemm, None)


def run_speed(settings: Settings, gemm_gflops: float, *, only: set[str] | None = None) -> SpeedRun:
    """Measure every speed figure (or the groups in ``only``); never raises for one figure."""
    run = SpeedRun()
    groups: list[tuple[str, Callable[[SpeedRun, Settings], None]]] = [
        ("train", _training),
        ("gen", _generation),
        ("eval", _evaluation),
        ("ctx", _context),
    ]
    for name, fn in groups:
        if only is None or name in only:
            settings.log(f"[{name}]")
            fn(run, settings)
    if only is None or "gen" in only:
        _decode_weights(run)
    if only is None or "train" in only:
        _mfu(run, gemm_gflops)
    return run
