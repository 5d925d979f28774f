"""Quality at equal compute on the bundled corpus: ``python benchmarks/run.py --quality``.

Protocol (BENCHMARKS.md "Quality of the reference at this scale"): BPE 4096 trained on the 56
training articles of the bundled WikiText-103 test set, 6 articles held out (split seed 0); bench
shapes; AdamW (0.9, 0.95), wd 0.1, clip 1.0, batch 8 x 512, constant lr after warm-up, through the
project's ``Trainer``; a wall-clock budget per model (15 minutes). Two deliberate deviations, the
same for CALM and AR: peak lr 1e-3 instead of 3e-4 and 50 warm-up steps instead of 200 (a
15-minute budget buys only several hundred steps); the codec uses the library's default recipe.
Phases, each resumable from its result file in the work directory:

1. ``data``: tokenizer + packed data for K=4.
2. ``codec``: the bench codec, trained for 0.8 x the budget; held-out token accuracy.
3. ``ar`` and ``calm``: the AR baseline and CALM (energy head, K=4), each for the budget, with
   snapshots at steps 10, 20, 50, 100, ... (the lr is constant after warm-up, so a snapshot at
   step s is the model a run of s steps would have produced).
4. ``eval_ar``, ``eval_calm``: held-out Brier-1..4 and BrierLM of every snapshot (plus perplexity
   for AR, the energy loss for CALM) on consecutive 512-token held-out blocks (all by default,
   the first N with ``--eval-blocks N``): the quality-vs-training-FLOPs curve.
5. ``baselines``: context-free predictors on the same blocks (:mod:`benchmarks.baselines`).

Training FLOPs are the analytic FLOPs per token of :mod:`calm_core.costs` times tokens seen. A
phase that cannot run is recorded with its reason, never filled in. A finished training run is
reused for an equal request (its ``trained.json``), so deleting a phase's result file and running
again re-evaluates it without retraining. The diagnosis probes of 2026-11 are recorded in
``docs/benchmarks-diagnosis-2026-12.md`` (with the heads and K comparisons at 100 steps).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from calm_core.corpus import load_bundled_corpus
from calm_core.costs import causal_context, flops_per_token
from calm_core.data import BPETokenizer, PackedDataset, Tokenizer, write_data_dir
from calm_core.data.packing import split_documents
from calm_core.model_dir import load_pretrained, save_pretrained
from calm_core.recipes import codec_recipe
from calm_core.training import TrainConfig, Trainer
from safetensors.torch import load_model, save_model
from torch import Tensor, nn

from benchmarks import models as M
from benchmarks.baselines import chunk_sampler_brier, chunk_sampler_energy, unigram_brier
from benchmarks.speed import brier_eval

__all__ = ["QualityPlan", "run_quality"]

SPLIT_SEED = 0
VAL_DOCS = 6
SNAPSHOT_STEPS = (10, 20, 50, 100, 200, 400, 800, 1600, 3200, 6400)


def _log(msg: str) -> None:
    print(f"[quality {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass
class QualityPlan:
    """Budgets of one quality run."""

    lm_minutes: float = 15.0
    codec_minutes: float = 12.0
    batch: int = M.TRAIN_BATCH
    seq_len: int = M.SEQ_LEN
    warmup_steps: int = 50
    lr: float = 1e-3
    max_steps: int = 100_000
    eval_blocks: int | None = None  # every held-out block
    snapshot_steps: tuple[int, ...] = SNAPSHOT_STEPS
    phases: tuple[str, ...] = (
        "data", "codec", "ar", "calm", "eval_ar", "eval_calm", "baselines"
    )  # fmt: skip

    @classmethod
    def for_run(
        cls, minutes: float | None, quick: bool, codec_minutes: float | None = None
    ) -> QualityPlan:
        if quick:  # a smoke test of the whole pipeline, a few minutes; not a measurement
            return cls(
                lm_minutes=1.0, codec_minutes=1.0, batch=2, seq_len=128, warmup_steps=2,
                max_steps=6, eval_blocks=2, snapshot_steps=(2, 4),
            )  # fmt: skip
        m = 15.0 if minutes is None else minutes
        c = 0.8 * m if codec_minutes is None else codec_minutes
        return cls(lm_minutes=m, codec_minutes=c)


@dataclass
class State:
    """Where the run keeps its files and what it found."""

    work: Path
    plan: QualityPlan
    results: dict[str, Any] = field(default_factory=dict)

    def path(self, *parts: str) -> Path:
        p = self.work.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def phase_file(self, name: str) -> Path:
        return self.path("phases", f"{name}.json")

    def done(self, name: str) -> dict[str, Any] | None:
        f = self.phase_file(name)
        return json.loads(f.read_text()) if f.is_file() else None

    def record(self, name: str, data: dict[str, Any]) -> None:
        self.phase_file(name).write_text(json.dumps(data, indent=1) + "\n")
        self.results[name] = data


# ---------------------------------------------------------------------------------------- data
def _data_dir(state: State, chunk: int) -> Path:
    return state.work / f"data_k{chunk}"


def _phase_data(state: State, chunks: tuple[int, ...]) -> dict[str, Any]:
    docs = load_bundled_corpus()
    source = "calm_core.corpus (bundled WikiText-103 test articles)"
    train_idx, val_idx = split_documents(len(docs), VAL_DOCS, SPLIT_SEED)
    tok_dir = state.work / "tokenizer"
    if (tok_dir / "tokenizer.json").is_file():
        tokenizer = Tokenizer.load(tok_dir)
    else:  # trained on the training articles only
        tokenizer = BPETokenizer.train([docs[i].text for i in train_idx], M.VOCAB)
        tokenizer.save(tok_dir)
    info: dict[str, Any] = {"source": source, "documents": len(docs), "val_docs": val_idx}
    for k in chunks:
        out = _data_dir(state, k)
        if not (out / "index.json").is_file():
            out.mkdir(parents=True, exist_ok=True)
            write_data_dir(out, docs, tokenizer, chunk_size=k, val_docs=VAL_DOCS, seed=SPLIT_SEED)
        index = json.loads((out / "index.json").read_text())
        info[f"k{k}"] = {s: index["splits"][s]["num_tokens"] for s in ("train", "val")}
    return info


def _datasets(state: State, chunk: int) -> tuple[Any, Any]:
    d = _data_dir(state, chunk)
    return PackedDataset(d, "train"), PackedDataset(d, "val")


def _val_blocks(val: Any, seq_len: int, limit: int | None) -> Tensor:
    """Consecutive ``seq_len``-token blocks of the held-out split, ``[n, seq_len]``."""
    tokens = np.asarray(val.tokens, dtype=np.int64)
    n = len(tokens) // seq_len
    if limit is not None:
        n = min(n, limit)
    return torch.from_numpy(tokens[: n * seq_len].reshape(n, seq_len).copy())


# ------------------------------------------------------------------------------------ training
def _train_config(plan: QualityPlan, steps: int | None, fields: dict[str, Any] | None) -> Any:
    """The protocol's trainer settings (``fields`` replace some) for ``steps`` or the plan's cap."""
    total = steps if steps is not None else plan.max_steps
    return TrainConfig.model_validate(
        {
            "steps": total, "batch_size": plan.batch, "seq_len": plan.seq_len, "lr": plan.lr,
            "betas": (0.9, 0.95), "weight_decay": 0.1, "grad_clip": 1.0,
            "warmup_steps": min(plan.warmup_steps, total), "log_every": 10, "eval_every": 0,
            "seed": 0, **(fields or {}),
        }
    )  # fmt: skip


def _train(
    state: State,
    model: nn.Module,
    train_data: Any,
    name: str,
    *,
    minutes: float | None,
    steps: int | None,
    snapshots: tuple[int, ...] = (),
    fields: dict[str, Any] | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Train with the project's Trainer until the time or step budget; save snapshots.

    ``fields`` replaces trainer settings of the protocol (the codec uses its own recipe);
    ``resume`` continues exactly from the latest checkpoint in the run directory.

    A finished run leaves ``trained.json`` (what it was asked to do and what it did) beside its
    weights: called again with the same request, it loads the final weights into ``model`` and
    returns the same record without training, so phases can be re-evaluated (e.g. on other
    held-out blocks) without retraining."""
    config = _train_config(state.plan, steps, fields)
    run_dir = state.work / "runs" / name
    request = train_request(config.model_dump(mode="json"), minutes, snapshots, resume)
    record = run_dir / TRAINED_RECORD
    if record.is_file():
        prior = json.loads(record.read_text())
        if prior.get("request") == request and Path(prior["final"]).is_file():
            load_model(model, prior["final"])
            _log(f"{name}: trained before, reusing {record}")
            return {k: v for k, v in prior.items() if k != "request"}
    saved: dict[int, str] = {}
    start, cpu_start = time.perf_counter(), time.process_time()
    deadline = None if minutes is None else start + 60 * minutes

    def on_step(trainer: Any, step: int, metrics: dict[str, float]) -> None:
        if step in snapshots:
            path = run_dir / f"snapshot-{step}.safetensors"
            save_model(trainer.model, str(path))
            saved[step] = str(path)
        if deadline is not None and time.perf_counter() > deadline:
            trainer.request_stop("time budget")

    trainer = Trainer(
        model,
        config,
        train_data=train_data,
        run_dir=run_dir,
        callbacks=[on_step],
        progress=False,
        resume=resume,
    )
    try:
        summary = trainer.fit()
    except KeyboardInterrupt as exc:  # TrainingInterrupted after the time budget
        if "time budget" not in str(exc):
            raise
        summary = {"steps": trainer.step, "stopped": "time budget"}
    final = run_dir / "final.safetensors"
    save_model(model, str(final))
    info = {
        "steps": int(trainer.step),
        "wall_s": round(time.perf_counter() - start, 1),
        # CPU seconds of this process: on a shared machine, wall time overstates the compute
        "cpu_s": round(time.process_time() - cpu_start, 1),
        "summary": {k: v for k, v in summary.items() if isinstance(v, int | float | str)},
        "snapshots": {str(k): v for k, v in sorted(saved.items())},
        "final": str(final),
    }
    tmp = record.with_suffix(".tmp")
    tmp.write_text(json.dumps({**info, "request": request}, indent=1) + "\n")
    tmp.replace(record)  # atomic: a run interrupted before this point trains again
    return info


#: the record of a finished training run, in its run directory (see :func:`_train`)
TRAINED_RECORD = "trained.json"


def train_request(
    config: dict[str, Any], minutes: float | None, snapshots: tuple[int, ...], resume: bool
) -> dict[str, Any]:
    """What a training run was asked to do: equal requests reuse one finished run."""
    return {"config": config, "minutes": minutes, "snapshots": list(snapshots), "resume": resume}


def _phase_codec(state: State, chunk: int, minutes: float) -> dict[str, Any]:
    """The bench-shape codec trained with the library's default recipe (``calm train-codec``):
    its codec options and schedule, stopped early only if ``minutes`` run out."""
    default = codec_recipe("default")
    train, val = _datasets(state, chunk)
    codec = M.build_codec(chunk=chunk, **default["codec"]["config"]).eval()
    plan_owned = ("eval_every", "checkpoint_every", "log_every", "batch_size", "seq_len")
    fields = {k: v for k, v in default["train"].items() if k not in plan_owned}
    if state.plan.max_steps < fields["steps"]:  # the --quick smoke test
        fields = {**fields, "steps": state.plan.max_steps, "warmup_steps": 1}
    info = _train(
        state, codec, train, f"codec_k{chunk}", minutes=minutes, steps=None, fields=fields
    )
    codec_dir = state.work / f"codec_k{chunk}"
    save_pretrained(codec, codec_dir)
    codec.eval()
    blocks = _val_blocks(val, state.plan.seq_len, state.plan.eval_blocks)
    with torch.no_grad():
        acc = [float(codec.loss(b[None])["token_accuracy"]) for b in blocks]
    info["codec_dir"] = str(codec_dir)
    info["recipe"] = {"codec": default["codec"], "train": fields}
    info["val_token_accuracy"] = float(np.mean(acc))
    return info


def _load_codec(state: State, chunk: int) -> Any:
    codec = load_pretrained(state.work / f"codec_k{chunk}")
    codec.eval()
    for p in codec.parameters():
        p.requires_grad_(False)
    return codec


def _flops_per_token(kind: str, chunk: int = M.CHUNK) -> float:
    """Training FLOPs per token, attention over the causal average of a training sequence."""
    if kind == "ar":
        return flops_per_token(
            M.preset_data("ar"), context=causal_context(M.SEQ_LEN), training=True
        )
    context = causal_context(M.SEQ_LEN // chunk)
    return flops_per_token(M.preset_data("calm", chunk), context=context, training=True)


def _build(
    state: State, kind: str, pad_id: int, *, head: str = "energy", chunk: int = M.CHUNK
) -> nn.Module:
    """The AR baseline or a CALM on the trained codec, ignoring the data's PAD id."""
    if kind == "ar":
        return M.build_ar(pad_id=pad_id)
    return M.build_calm(head, codec=_load_codec(state, chunk), chunk=chunk, pad_id=pad_id)


def _phase_lm(state: State, kind: str) -> dict[str, Any]:
    train, _ = _datasets(state, M.CHUNK)
    model = _build(state, kind, train.pad_id)
    info = _train(
        state, model, train, kind, minutes=state.plan.lm_minutes, steps=None,
        snapshots=state.plan.snapshot_steps,
    )  # fmt: skip
    info["train_flops_per_token"] = _flops_per_token(kind)
    return info


# ---------------------------------------------------------------------------------- evaluation
def _eval_model(model: nn.Module, blocks: Tensor, kind: str, pad_id: int) -> dict[str, Any]:
    """Held-out Brier-1..4, BrierLM (x100), the loss; perplexity for AR."""
    model.eval()
    res: dict[str, Any] = brier_eval(model, blocks, pad_id=pad_id)
    with torch.no_grad():
        outs = [model(b[None]) for b in blocks]
    res["val_loss"] = float(np.mean([float(o["loss"]) for o in outs]))
    if kind == "ar":  # from the cross-entropy, also for a model trained on another loss
        ce = [float(o.get("cross_entropy", o["loss"])) for o in outs]
        res["perplexity"] = math.exp(float(np.mean(ce)))
    return res


def _eval_snapshots(
    state: State, model: nn.Module, trained: dict[str, Any], blocks: Tensor, kind: str, pad_id: int
) -> list[dict[str, Any]]:
    """Every snapshot of a training phase (and its final weights) on ``blocks``, in step order."""
    fpt = trained["train_flops_per_token"]
    tokens_per_step = state.plan.batch * state.plan.seq_len
    points = dict(trained["snapshots"])
    points[str(trained["steps"])] = trained["final"]
    curve = []
    for step_s, path in sorted(points.items(), key=lambda kv: int(kv[0])):
        load_model(model, path)
        step = int(step_s)
        row: dict[str, Any] = {"step": step, "train_flops": step * tokens_per_step * fpt}
        row.update(_eval_model(model, blocks, kind, pad_id))
        curve.append(row)
        _log(f"eval {kind} step {step}: brier {row['brier']} loss {row['val_loss']:.4g}")
    return curve


def _phase_eval(state: State, kind: str) -> dict[str, Any]:
    """Every snapshot of one trained model on the held-out blocks: the quality-vs-FLOPs curve."""
    trained = state.done(kind)
    if trained is None:
        raise RuntimeError(f"the {kind} training phase has not run; run it first")
    _, val = _datasets(state, M.CHUNK)
    blocks = _val_blocks(val, state.plan.seq_len, state.plan.eval_blocks)
    model = _build(state, kind, val.pad_id)
    return {
        "val_blocks": int(blocks.shape[0]),
        "curve": _eval_snapshots(state, model, trained, blocks, kind, val.pad_id),
        "steps": trained["steps"],
        "wall_s": trained["wall_s"],
    }


def _phase_baselines(state: State) -> dict[str, Any]:
    """Context-free predictors on the held-out blocks (:mod:`benchmarks.baselines`)."""
    train, val = _datasets(state, M.CHUNK)
    blocks = _val_blocks(val, state.plan.seq_len, state.plan.eval_blocks)
    train_tokens = np.asarray(train.tokens, dtype=np.int64)
    K = M.CHUNK
    train_chunks = train_tokens[: len(train_tokens) // K * K].reshape(-1, K)
    targets = blocks[:, K:].reshape(-1, K).numpy()  # the chunks CALM predicts (1..L-1 per block)
    codec = _load_codec(state, K)
    return {
        "val_blocks": int(blocks.shape[0]),
        "unigram": {"brier_n": unigram_brier(train_tokens, blocks, val.pad_id)},
        "chunk_sampler": {
            "brier_n": chunk_sampler_brier(train_chunks, targets, val.pad_id, M.VOCAB),
            "energy_loss": chunk_sampler_energy(codec, train_chunks, targets),
        },
        "first_token_oracle": {
            "energy_loss": chunk_sampler_energy(
                codec, train_chunks, targets, first_token_oracle=True
            )
        },
    }


# ------------------------------------------------------------------------------------- driver
def run_quality(
    root: Path,
    *,
    minutes: float | None,
    work_dir: Path | None,
    quick: bool,
    out: Path,
    phases: tuple[str, ...] | None = None,
    codec_minutes: float | None = None,
    eval_blocks: int | None = None,
    stop_at: float | None = None,
) -> int:
    """Run (or resume) the quality phases; write the collected results to ``out``.

    ``eval_blocks`` replaces the plan's number of held-out blocks (0: all of them)."""
    plan = QualityPlan.for_run(minutes, quick, codec_minutes)
    if eval_blocks is not None:
        if eval_blocks < 0:
            raise ValueError(
                f"eval_blocks must be >= 0 (0 = every held-out block), got {eval_blocks}"
            )
        plan.eval_blocks = eval_blocks or None
    load_average = [round(x, 2) for x in os.getloadavg()]
    if phases:
        plan.phases = phases
    work = work_dir or (root / "benchmarks" / ".work" / ("quality_quick" if quick else "quality"))
    state = State(work=work, plan=plan)
    # phases (and K-sweep points) not started by ``stop_at`` (epoch seconds) are skipped
    deadline = time.perf_counter() + (stop_at - time.time() if stop_at else 3 * 3600)
    steps: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("data", lambda: _phase_data(state, (M.CHUNK,))),
        ("codec", lambda: _phase_codec(state, M.CHUNK, plan.codec_minutes)),
        ("ar", lambda: _phase_lm(state, "ar")),
        ("calm", lambda: _phase_lm(state, "calm")),
        ("eval_ar", lambda: _phase_eval(state, "ar")),
        ("eval_calm", lambda: _phase_eval(state, "calm")),
        ("baselines", lambda: _phase_baselines(state)),
    ]
    missing: dict[str, str] = {}
    for name, fn in steps:
        if name not in plan.phases:
            continue
        if time.perf_counter() > deadline:
            missing[name] = "not run: out of the time budget (--stop-at)"
            continue
        prior = state.done(name)
        if prior is not None:
            state.results[name] = prior
            _log(f"{name}: done before, reusing {state.phase_file(name)}")
            continue
        _log(f"{name}: start")
        try:
            state.record(name, fn())
        except M.MissingFigureError as exc:
            missing[name] = f"missing code: {exc}"
        except Exception as exc:  # record and continue with the phases that do not need it
            traceback.print_exc()
            missing[name] = f"error: {type(exc).__name__}: {exc}"
        _log(f"{name}: {'failed: ' + missing[name] if name in missing else 'done'}")
    # every finished phase in the work directory, also those run by other invocations
    for f in sorted(state.work.joinpath("phases").glob("*.json")):
        state.results.setdefault(f.stem, json.loads(f.read_text()))
    result = {
        "plan": asdict(plan),
        "quick": quick,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "threads": torch.get_num_threads(),
        "load_average": load_average,
        "work_dir": str(work),
        "phases": state.results,
        "missing": missing,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    _log(f"wrote {out}")
    return 0
