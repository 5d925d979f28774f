"""The stages of ``calm demo`` and :func:`run_demo`, which runs them in order.

Each stage builds what the command line would build, through :mod:`calm_core.recipes` (the codec
recipe shortened to the demo's steps, the ``calm-bench`` / ``transformer-bench`` presets resized),
and trains it with the library :class:`~calm_core.training.Trainer` under a step count and a
wall-clock budget.
"""

from __future__ import annotations

import copy
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from calm_core.ar import ARModel
from calm_core.calm import CALM
from calm_core.corpus import load_corpus
from calm_core.costs import flops_per_token
from calm_core.data import BlockLoader, DataError, PackedDataset, Tokenizer
from calm_core.data.packing import split_documents, write_data_dir
from calm_core.demo.config import DemoConfig
from calm_core.demo.report import write_outputs
from calm_core.demo.result import DemoResult
from calm_core.metrics.brier_eval import evaluate_brier
from calm_core.metrics.reconstruction import reconstruction_report
from calm_core.model_dir import save_pretrained
from calm_core.recipes import (
    TrainCodecConfig,
    TrainModelConfig,
    build_codec,
    build_model,
    codec_recipe,
    model_recipe,
)
from calm_core.runtime import resolve_device
from calm_core.training import TrainConfig, Trainer, TrainingInterrupted

__all__ = ["run_demo", "training_flops"]


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class _Stopper:
    """Trainer callback: stop at the wall-clock budget, or once ``reached(model)`` is true.

    ``reached`` is checked every ``check_every`` steps; its own time is kept apart so that the
    training throughput is not diluted by the checks.
    """

    def __init__(
        self,
        seconds: float,
        reached: Callable[[], bool] | None = None,
        check_every: int = 0,
    ) -> None:
        self.seconds = seconds
        self.reached = reached
        self.check_every = check_every
        self.start = time.perf_counter()
        self.reason: str | None = None
        self.check_s = 0.0
        self.curve: list[tuple[int, float]] = []  # (step, loss) of every step, for the plot

    def __call__(self, trainer: Any, step: int, metrics: dict[str, float]) -> None:
        self.curve.append((step, float(metrics["loss"])))
        if self.reason is not None:
            return
        if self.reached is not None and self.check_every and step % self.check_every == 0:
            t0 = time.perf_counter()
            hit = self.reached()
            self.check_s += time.perf_counter() - t0
            if hit:
                self.reason = "target reached"
                trainer.request_stop(self.reason)
                return
        if time.perf_counter() - self.start > self.seconds:
            self.reason = "time budget"
            trainer.request_stop(self.reason)


def _train(
    model: nn.Module,
    *,
    run_dir: Path,
    data: Any,
    fields: Mapping[str, Any],
    budget_s: float,
    reached: Callable[[], bool] | None = None,
    check_every: int = 0,
) -> dict[str, Any]:
    """Train with the library Trainer (``fields``: TrainConfig fields) under a time budget and an
    optional early-stopping target."""

    steps = int(fields["steps"])
    cfg = TrainConfig.model_validate(
        {
            **fields,
            "log_every": max(1, min(10, steps // 20)),
            "eval_every": 0,
            "checkpoint_every": 0,
            "keep_checkpoints": 1,
        }
    )
    batch_size, seq_len = cfg.batch_size, cfg.seq_len
    stopper = _Stopper(budget_s, reached, check_every)
    # the model is already on the demo's --device: train there (the config's device is "auto")
    trainer = Trainer(
        model, cfg, train_data=data, run_dir=run_dir, callbacks=[stopper], device=_device_of(model)
    )
    t0 = time.perf_counter()
    try:
        summary = trainer.fit()
    except TrainingInterrupted as stop:
        if stopper.reason is None:  # a real Ctrl-C: let the CLI report it
            raise
        summary = {"steps": stop.step}
    wall = time.perf_counter() - t0 - stopper.check_s
    done = int(summary["steps"])
    tokens = done * batch_size * seq_len
    model.eval()
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # the model dir is what we keep
    return {
        "curve": stopper.curve,
        "steps": done,
        "planned_steps": steps,
        "stopped_by_budget": stopper.reason == "time budget",
        "reached_target": stopper.reason == "target reached",
        "tokens": tokens,
        "train_s": wall,
        "train_tokens_per_s": tokens / wall if wall > 0 else 0.0,
    }


# ------------------------------------------------------------------------------------- FLOPs
def training_flops(model: nn.Module, tokens: int, seq_len: int) -> float:
    """Analytic training FLOPs for ``tokens`` tokens, via :func:`calm_core.costs.flops_per_token`.

    The attention context is the causal average over a training sequence, ``(S + 1) / 2``
    backbone positions, with ``S = seq_len / K`` for a CALM and ``seq_len`` for the AR model.
    """
    if not isinstance(model, CALM | ARModel):
        raise TypeError(f"{type(model).__name__} is not a CALM or ARModel")
    K = model.chunk_size if isinstance(model, CALM) else 1
    context = max(1, round((seq_len // K + 1) / 2))
    return float(tokens) * flops_per_token(model, context=context, training=True)


def _seconds_per_step(model: nn.Module, data: Any, batch_size: int, seq_len: int) -> float:
    """Median wall time of a few training steps of a throwaway copy of ``model``."""
    device = _device_of(model)
    probe = copy.deepcopy(model).train()
    params = [p for p in probe.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    loader = BlockLoader(data, seq_len, batch_size, seed=12345)
    times = []
    for i in range(5):
        batch = loader.next_batch().to(device)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        probe(batch)["loss"].backward()
        opt.step()
        _sync(device)
        if i >= 2:  # the first steps pay one-off allocation costs
            times.append(time.perf_counter() - t0)
    return float(statistics.median(times))


# ------------------------------------------------------------------------------------ stages
def _stage_tokenize(result: DemoResult, corpus: str | Path | None, data_dir: Path) -> Any:

    cfg = result.config
    docs = load_corpus(corpus)
    train_idx, val_idx = split_documents(len(docs), cfg.val_docs, cfg.seed)
    _say(
        f"[1/5] tokenize: {len(docs)} documents ({len(train_idx)} train, {len(val_idx)} held "
        f"out); training a {cfg.vocab_size}-token BPE on the training documents only"
    )
    tokenizer = Tokenizer.train_bpe((docs[i].text for i in train_idx), cfg.vocab_size)
    data_dir.mkdir(parents=True, exist_ok=True)
    index = write_data_dir(
        data_dir, docs, tokenizer, chunk_size=cfg.chunk_size, val_docs=cfg.val_docs, seed=cfg.seed
    )
    train, val = PackedDataset(data_dir, "train"), PackedDataset(data_dir, "val")
    result.data = {
        "dir": str(data_dir),
        "documents": len(docs),
        "train_documents": train.num_documents,
        "val_documents": val.num_documents,
        "train_tokens": train.num_tokens,
        "val_tokens": val.num_tokens,
        "vocab_size": tokenizer.vocab_size,
        "held_out_sources": index["splits"]["val"]["doc_sources"],
    }
    _say(f"      {train.num_tokens:,} training tokens, {val.num_tokens:,} held-out tokens")
    return train, val, tokenizer


def _stage_codec(result: DemoResult, train: Any, val: Any, out: Path) -> Any:

    cfg = result.config
    c = cfg.codec
    # the same recipe and codec builder as `calm train-codec`, shortened to the demo's steps
    plan = codec_recipe(c.recipe, steps=c.steps)
    plan["codec"]["config"].update(
        latent_size=c.latent_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size
    )

    def train_fields(steps: int) -> dict[str, Any]:
        fields = dict(codec_recipe(c.recipe, steps=steps)["train"], seed=cfg.seed)
        for key in ("batch_size", "seq_len", "lr"):
            if getattr(c, key) is not None:
                fields[key] = getattr(c, key)
        return fields

    torch.manual_seed(cfg.seed)
    codec = build_codec(TrainCodecConfig.model_validate(plan), train, result.device)
    # the recipe's lr schedule decays over its steps: fit the steps to the time budget first, so
    # that on a slow machine the schedule still completes instead of being cut off mid-way
    fields = train_fields(c.steps)
    step_s = _seconds_per_step(codec, train, fields["batch_size"], fields["seq_len"])
    steps = max(1, min(c.steps, int(0.9 * c.time_budget_s / step_s)))
    if steps < c.steps:
        fields = train_fields(steps)
    result.codec["seconds_per_step_probe"] = step_s
    _say(
        f"[2/5] codec: autoencoder K={cfg.chunk_size}, D={c.latent_size}, width "
        f"{c.hidden_size}, recipe '{c.recipe}'; {steps} steps (~{step_s:.2f} s each, budget "
        f"{c.time_budget_s:.0f} s)"
    )
    # early stop on *training* chunks: the held-out articles are only used for the final report
    sample = train.tokens[: 4096 * cfg.chunk_size]

    def reached() -> bool:
        rep = reconstruction_report(codec, sample, noise_stds=(), ignore_id=train.pad_id)
        return rep.token_accuracy >= c.target_accuracy

    stats = _train(
        codec, run_dir=out, data=train, fields=fields, budget_s=c.time_budget_s,
        reached=reached, check_every=c.check_every,
    )  # fmt: skip
    result.curves["codec"] = stats.pop("curve")
    save_pretrained(codec, out)
    train.tokenizer.save(out)
    report = reconstruction_report(codec, val.tokens, ignore_id=val.pad_id)
    result.codec.update({"dir": str(out), **stats, "reconstruction": report.to_dict()})
    _say(
        f"      held-out reconstruction: {100 * report.token_accuracy:.2f}% of tokens, "
        f"{100 * report.chunk_accuracy:.2f}% of chunks ({stats['steps']} steps, "
        f"{stats['train_s']:.0f} s)"
    )
    return codec


def _stage_lm(
    result: DemoResult, kind: str, codec_dir: Path, train: Any, out: Path, steps: int
) -> nn.Module:
    """Build (as ``calm train`` does, from its bench preset) and train the CALM or AR model."""

    cfg = result.config
    c = cfg.lm
    plan = model_recipe(kind)
    plan["backbone"].update(
        hidden_size=c.hidden_size,
        intermediate_size=c.intermediate_size,
        num_layers=c.num_layers,
        num_heads=c.num_heads,
        num_kv_heads=c.num_heads,
        max_positions=max(c.seq_len, cfg.eval.brier_block_len, 1024),
    )
    if kind == "calm":
        plan["head"]["config"].update(num_blocks=c.head_blocks, noise_size=c.noise_size)
    torch.manual_seed(cfg.seed)
    model = build_model(TrainModelConfig.model_validate(plan), train, codec_dir, result.device)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    title = "CALM (energy head)" if kind == "calm" else "AR baseline (same backbone)"
    _say(
        f"[3/5] {title}: {trainable:,} trainable parameters; up to {steps} steps / "
        f"{c.time_budget_s:.0f} s"
    )
    fields = {
        "steps": steps, "batch_size": c.batch_size, "seq_len": c.seq_len, "lr": c.lr,
        "warmup_steps": min(c.warmup_steps, steps - 1), "seed": cfg.seed,
    }  # fmt: skip
    stats = _train(model, run_dir=out, data=train, fields=fields, budget_s=c.time_budget_s)
    result.curves[kind] = stats.pop("curve")
    save_pretrained(model, out)
    train.tokenizer.save(out)
    stats["parameters"] = trainable
    stats["train_flops"] = training_flops(model, stats["tokens"], c.seq_len)
    result.models[kind] = {"dir": str(out), **stats}
    return model


def _stage_brier(result: DemoResult, kind: str, model: nn.Module, val: Any) -> None:
    """BrierLM on the first held-out blocks, with the function ``calm eval`` uses."""

    e = result.config.eval
    n_blocks = max(1, min(e.brier_blocks, val.num_tokens // e.brier_block_len))
    t0 = time.perf_counter()
    res = evaluate_brier(
        model, val.tokens, block_len=e.brier_block_len, num_blocks=n_blocks, batch_size=4,
        seed=result.config.seed + 1, pad_id=val.pad_id, progress=True,
    )  # fmt: skip
    result.models[kind]["brier"] = res.to_dict()
    result.models[kind]["brier_s"] = time.perf_counter() - t0
    result.models[kind]["brier_blocks"] = n_blocks


def _device_of(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":  # kernels run asynchronously: wait before reading the clock
        torch.cuda.synchronize(device)


def _generate(
    model: nn.Module,
    kind: str,
    prompts: torch.Tensor,
    n: int,
    temperature: float,
    *,
    seed: int,
    candidates: int,
    stop_at_eos: bool,
) -> torch.Tensor:
    """One ``generate`` call; below T=1 a CALM uses the batch approximation (N candidates)."""
    device = _device_of(model)
    prompts = prompts.to(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    kwargs: dict[str, Any] = {"generator": gen, "stop_at_eos": stop_at_eos}
    if kind == "calm" and temperature < 1.0:
        kwargs.update(sampling="batch", num_candidates=candidates)
    out: torch.Tensor = model.generate(prompts, n, temperature, **kwargs)  # type: ignore[operator]
    return out


def _stage_generate(
    result: DemoResult, models: Mapping[str, nn.Module], val: Any, tok: Any
) -> None:
    e = result.config.eval
    K = result.config.chunk_size
    plen = max(K, e.prompt_tokens - e.prompt_tokens % K)
    prompts: list[list[int]] = []
    refs: list[list[int]] = []
    for i in range(min(e.num_prompts, val.num_documents)):
        doc = [int(x) for x in val.document(i)]
        content = [x for x in doc if x not in (val.pad_id, val.eos_id)]
        if len(content) < plen + 1:
            continue
        prompts.append(content[:plen])
        refs.append(content[plen : plen + e.new_tokens])
    if not prompts:
        result.notes.append("no held-out document was long enough for a generation prompt")
        return
    batch = torch.tensor(prompts, dtype=torch.long)
    for p, r in zip(prompts, refs, strict=True):
        result.samples.append(
            {"prompt": tok.decode(p), "reference": tok.decode(r), "continuations": {}}
        )
    bar = tqdm(
        total=len(models) * (len(e.temperatures) + 2), desc="      generate", unit="run",
        file=sys.stderr, leave=False, disable=None,
    )  # fmt: skip
    for kind, model in models.items():
        model.eval()
        for t in e.temperatures:
            with torch.no_grad():
                new = _generate(
                    model, kind, batch, e.new_tokens, t, seed=result.config.seed,
                    candidates=e.num_candidates, stop_at_eos=True,
                )  # fmt: skip
            for i, row in enumerate(new.tolist()):
                result.samples[i]["continuations"][f"{kind} T={t:g}"] = tok.decode(row)
            bar.update()
        # speed probe: batch 1 and batch 8 at T=1, EOS never stops it
        speed: dict[str, float] = {}
        for b in (1, 8):
            bar.update()
            prompt = batch[:1].expand(b, -1).contiguous()
            t0 = time.perf_counter()
            with torch.no_grad():  # never stops early, so every row is timed in full
                _generate(
                    model, kind, prompt, e.speed_new_tokens, 1.0, seed=0,
                    candidates=e.num_candidates, stop_at_eos=False,
                )  # fmt: skip
            _sync(_device_of(model))
            speed[f"b{b}"] = b * e.speed_new_tokens / (time.perf_counter() - t0)
        result.models[kind]["gen_tokens_per_s"] = speed
    bar.close()


def run_demo(
    config: DemoConfig,
    out_dir: str | Path,
    *,
    corpus: str | Path | None = None,
    quick: bool = False,
    on_stage: Callable[[str], None] | None = None,
) -> DemoResult:
    """Run every stage into ``out_dir`` (which the caller has prepared) and write the report.

    Args:
        config: the resolved demo config (``QUICK_OVERRIDES`` already applied for ``--quick``).
        out_dir: output directory; receives ``data/``, ``codec/``, ``calm/``, ``ar/``,
            ``metrics.jsonl``, ``results.json``, ``report.md`` and ``training_curves.png``.
        corpus: None for the bundled WikiText-103 test articles, else the user's text.
        quick: recorded in the report (the numbers of a quick run mean nothing).
        on_stage: called with each stage's name as it starts (for tests and UIs).

    Returns:
        The :class:`DemoResult` that ``results.json`` holds.
    """
    out = Path(out_dir)
    t_start = time.perf_counter()
    corpus_name = str(corpus) if corpus is not None else "bundled WikiText-103 test articles"
    result = DemoResult(out_dir=out, config=config, quick=quick, corpus=corpus_name)
    result.device = resolve_device(config.device)

    def stage(name: str) -> float:
        if on_stage is not None:
            on_stage(name)
        return time.perf_counter()

    t = stage("tokenize")
    train, val, tok = _stage_tokenize(result, corpus, out / "data")
    result.stage_seconds["tokenize"] = time.perf_counter() - t
    for split, ds, need in (
        ("training", train, config.lm.seq_len),
        ("held-out", val, config.eval.brier_block_len),
    ):
        if ds.num_tokens < need:
            raise DataError(
                f"the {split} split has {ds.num_tokens} tokens, fewer than one block of {need}; "
                "use a larger corpus or a smaller seq_len / brier_block_len"
            )

    t = stage("codec")
    _stage_codec(result, train, val, out / "codec")
    result.stage_seconds["codec"] = time.perf_counter() - t

    t = stage("calm")
    calm = _stage_lm(result, "calm", out / "codec", train, out / "calm", config.lm.steps)
    result.stage_seconds["calm"] = time.perf_counter() - t
    t = stage("ar")
    # equal tokens: the baseline gets exactly the steps the CALM managed
    ar = _stage_lm(result, "ar", out / "codec", train, out / "ar", result.models["calm"]["steps"])
    result.stage_seconds["ar"] = time.perf_counter() - t

    t = stage("eval")
    _say("[4/5] evaluate: BrierLM of both models on held-out blocks")
    for kind, model in (("calm", calm), ("ar", ar)):
        _stage_brier(result, kind, model, val)
    result.stage_seconds["eval"] = time.perf_counter() - t

    t = stage("generate")
    _say(
        "[5/5] generate: held-out prompts at T="
        + ", ".join(f"{x:g}" for x in config.eval.temperatures)
    )
    _stage_generate(result, {"calm": calm, "ar": ar}, val, tok)
    result.stage_seconds["generate"] = time.perf_counter() - t

    if quick:
        result.notes.append(
            "--quick run: tiny models and a few seconds of training per stage; it checks that "
            "the pipeline works, and its numbers mean nothing"
        )
    result.wall_s = time.perf_counter() - t_start
    write_outputs(result)
    return result
