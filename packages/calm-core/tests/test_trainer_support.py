"""Shared pieces of the trainer, resume and DDP tests (no tests here).

A tiny deterministic language model and a tiny byte-tokenized data directory, plus a command-line
entry (``python test_trainer_support.py RUN_DIR DATA_DIR [options]``) used by the subprocess tests
(signals, torchrun-style DDP), so the child processes train exactly what the parent compares with.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from calm_core.ar import ARConfig, ARModel
from calm_core.backbone import BackboneConfig
from calm_core.calm import CALM
from calm_core.data import Tokenizer, write_data_dir
from calm_core.data.packing import Document
from calm_core.registry import codecs, heads
from safetensors.torch import save_model
from tiny_components import TinyCodec, TinyCodecConfig, TinyHead
from torch import nn

HERE = Path(__file__).resolve().parent
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


def make_model(seed: int = 0, dropout: float = 0.0, kind: str = "tiny") -> nn.Module:
    """``tiny``: :class:`TinyLM`; ``calm`` / ``ar``: a 2-layer, width-32 CALM (tiny head and
    frozen codec, K=4) or transformer LM over the byte vocabulary."""
    torch.manual_seed(seed)
    if kind == "tiny":
        return TinyLM(dropout=dropout)
    backbone = BackboneConfig(
        hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2, max_positions=64
    )
    if kind == "ar":
        return ARModel(ARConfig(vocab_size=VOCAB, backbone=backbone))
    if kind != "calm":
        raise ValueError(f"unknown model kind {kind!r}")
    # names of their own: test modules that register "test.tiny" / "test.codec" in a fixture
    # would find these (kept for the rest of the process) and refuse to register
    heads.register("test.trainer_head", TinyHead, replace=True)
    codecs.register("test.trainer_codec", TinyCodec, replace=True)
    config = TinyCodecConfig(vocab_size=VOCAB, chunk_size=4, latent_size=4)
    codec = codecs.build({"name": "test.trainer_codec", "config": config.model_dump()})
    return CALM.from_codec(codec, backbone=backbone, head="test.trainer_head")


def losses(run_dir: Path) -> dict[int, float]:
    """step -> training loss from a run's metrics.jsonl."""
    from calm_core.training import read_metrics

    return {int(r["step"]): float(r["loss"]) for r in read_metrics(run_dir) if "loss" in r}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


#: seconds a launched group may run before its ranks are killed (a hang fails, never blocks)
LAUNCH_TIMEOUT_S = 300
#: once one rank has failed, seconds the others get to exit before they are killed (a peer
#: blocked in a collective would otherwise wait for gloo's 30-minute timeout)
PEER_GRACE_S = 10


def launch_ranks(run: Path, data: Path, config: Any, *extra: str, nproc: int = 2) -> list[str]:
    """Run this file as ``nproc`` gloo ranks (the environment torchrun gives them); their stdouts.

    ``config`` is a TrainConfig; extra arguments go to :func:`main`. A launch whose rendezvous
    port was taken by another process in the meantime is retried on a new port (twice at most).
    """
    for attempt in range(3):
        codes, outputs = _launch(run, data, config, extra, nproc, _free_port())
        errors = "".join(err for _, err in outputs).lower()
        if attempt < 2 and any(codes) and "address already in use" in errors:
            continue
        failed = [
            f"rank {rank} exited with {code}:\n{err[-3000:]}"
            for rank, (code, (_, err)) in enumerate(zip(codes, outputs, strict=True))
            if code != 0
        ]
        assert not failed, "\n".join(failed)
        break
    return [out for out, _ in outputs]


def _launch(
    run: Path, data: Path, config: Any, extra: tuple[str, ...], nproc: int, port: int
) -> tuple[list[int], list[tuple[str, str]]]:
    """Start the ranks, wait for them all (killing the rest when one fails or time runs out)."""
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="calm-ranks-") as tmp:
        logs = [(Path(tmp, f"{r}.out"), Path(tmp, f"{r}.err")) for r in range(nproc)]
        try:
            for rank, (out, err) in enumerate(logs):
                env = {
                    **os.environ,
                    "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
                    "RANK": str(rank),
                    "LOCAL_RANK": str(rank),
                    "WORLD_SIZE": str(nproc),
                    "LOCAL_WORLD_SIZE": str(nproc),
                    "MASTER_ADDR": "127.0.0.1",
                    "MASTER_PORT": str(port),
                    "CUDA_VISIBLE_DEVICES": "",
                }
                cmd = [sys.executable, str(Path(__file__).resolve()), str(run), str(data)]
                cmd += ["--config", config.model_dump_json(), *extra]
                # files, not pipes: a rank that writes much never blocks on a full pipe
                with out.open("wb") as o, err.open("wb") as e:
                    procs.append(subprocess.Popen(cmd, env=env, stdout=o, stderr=e))
            _wait_all(procs)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        outputs = [(o.read_text(errors="replace"), e.read_text(errors="replace")) for o, e in logs]
    return [int(p.returncode) for p in procs], outputs


def _wait_all(procs: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + LAUNCH_TIMEOUT_S
    failed_at: float | None = None
    while any(p.poll() is None for p in procs):
        now = time.monotonic()
        if failed_at is None and any(p.returncode not in (None, 0) for p in procs):
            failed_at = now
        if failed_at is not None and now - failed_at > PEER_GRACE_S:
            return  # the caller kills the peers; the failed rank's stderr says why
        if now > deadline:
            raise AssertionError(f"the ranks did not finish within {LAUNCH_TIMEOUT_S} s")
        time.sleep(0.05)


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
    p.add_argument("--model", default="tiny", choices=["tiny", "calm", "ar"])
    p.add_argument("--save", help="rank 0 saves the trained model's weights here (safetensors)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    config = TrainConfig(**json.loads(args.config))

    def slow(trainer: Trainer, step: int, metrics: dict[str, float]) -> None:
        print(f"STEP {step}", flush=True)
        time.sleep(args.sleep)
        if step == args.stop_at:
            trainer.request_stop()

    model = make_model(dropout=args.dropout, kind=args.model)
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
    if args.save and trainer.is_main:
        save_model(model, args.save)
    print("SUMMARY " + json.dumps(summary), flush=True)
    # what held the process group (the DDP wrapper, FSDP's sharded copy) is gone after fit
    print(f"RELEASED {trainer.prepared is None}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
