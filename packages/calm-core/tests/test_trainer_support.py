"""Shared pieces of the trainer, resume and DDP tests (no tests here).

A tiny deterministic language model and a tiny byte-tokenized data directory, plus a command-line
entry (``python test_trainer_support.py RUN_DIR DATA_DIR [options]``) used by the subprocess tests
(signals, torchrun-style DDP), so the child processes train exactly what the parent compares with.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from calm_core.data import Tokenizer, write_data_dir
from calm_core.data.packing import Document
from torch import nn

VOCAB = 258  # the byte tokenizer
TEXT = (
    "the quick brown fox jumps over the lazy dog while the cat sleeps on a warm mat "
    "and a bird sings softly in the old oak tree near the quiet river bank "
)


def make_data_dir(path: Path, *, docs: int = 24, chunk_size: int = 4, val_docs: int = 2) -> Path:
    """A byte-tokenized data directory with ``docs`` varied documents."""
    words = TEXT.split()
    documents = [
        Document(" ".join(words[(i * 7 + j) % len(words)] for j in range(20 + 3 * i)), f"doc{i}")
        for i in range(docs)
    ]
    path.mkdir(parents=True, exist_ok=True)
    write_data_dir(
        path,
        documents,
        Tokenizer.byte_level(),
        chunk_size=chunk_size,
        val_docs=val_docs,
        seed=0,
    )
    return path


class TinyLM(nn.Module):
    """Bigram-ish LM: embedding -> LayerNorm -> (dropout) -> linear; loss = next-token CE."""

    def __init__(self, vocab: int = VOCAB, hidden: int = 16, dropout: float = 0.0) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, vocab)
        self.poison_at_call: int | None = None
        self.calls = 0

    def forward(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        self.calls += 1
        logits = self.out(self.drop(self.norm(self.embed(tokens[:, :-1]))))
        loss = nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1)
        )
        if self.poison_at_call is not None and self.calls >= self.poison_at_call:
            loss = loss * float("nan")
        acc = (logits.argmax(-1) == tokens[:, 1:]).float().mean()
        return {"loss": loss, "accuracy": acc}


def make_model(seed: int = 0, dropout: float = 0.0) -> TinyLM:
    torch.manual_seed(seed)
    return TinyLM(dropout=dropout)


def losses(run_dir: Path) -> dict[int, float]:
    """step -> training loss from a run's metrics.jsonl."""
    from calm_core.training import read_metrics

    return {int(r["step"]): float(r["loss"]) for r in read_metrics(run_dir) if "loss" in r}


def main(argv: list[str]) -> int:
    """Train TinyLM as the subprocess tests ask (also under torchrun-style env vars)."""
    from calm_core.data import PackedDataset
    from calm_core.training import TrainConfig, Trainer, TrainingInterrupted

    p = argparse.ArgumentParser()
    p.add_argument("run_dir")
    p.add_argument("data_dir")
    p.add_argument("--config", default="{}", help="TrainConfig overrides as JSON")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--sleep", type=float, default=0.0, help="seconds to sleep after each step")
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--stop-at", type=int, default=0, help="request a stop after this step")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    config = TrainConfig(**json.loads(args.config))

    def slow(trainer: Trainer, step: int, metrics: dict[str, float]) -> None:
        print(f"STEP {step}", flush=True)
        time.sleep(args.sleep)
        if step == args.stop_at:
            trainer.request_stop()

    model = make_model(dropout=args.dropout)
    trainer = Trainer(
        model,
        config,
        PackedDataset(args.data_dir),
        args.run_dir,
        resume=args.resume,
        callbacks=[slow],
        progress=False,
    )
    try:
        summary: dict[str, Any] = trainer.fit()
    except TrainingInterrupted as stop:
        if not args.stop_at:  # a signal: let the caller see the traceback and exit status
            raise
        print(f"STOPPED {stop.step}", flush=True)
        return 0
    print("SUMMARY " + json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
