"""DDP: two CPU processes (gloo, launched the way torchrun launches them) follow the same loss
trajectory as one process with the same global batch."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from calm_core.data import PackedDataset
from calm_core.training import TrainConfig, Trainer, list_checkpoints, read_metrics
from test_trainer_support import losses, make_data_dir, make_model

HERE = Path(__file__).resolve().parent
pytestmark = pytest.mark.ddp


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_two_gloo_processes_match_one_process_with_the_same_global_batch(tmp_path: Path):
    data = make_data_dir(tmp_path / "data")
    config = TrainConfig(
        steps=6, batch_size=4, seq_len=16, lr=1e-2, log_every=1, checkpoint_every=3
    )
    single = tmp_path / "single"
    Trainer(make_model(), config, PackedDataset(data), single, progress=False).fit()

    run = tmp_path / "ddp"
    port = _free_port()
    procs = []
    for rank in range(2):
        env = {
            **os.environ,
            "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2",
            "LOCAL_WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "CUDA_VISIBLE_DEVICES": "",
        }
        cmd = [sys.executable, str(HERE / "test_trainer_support.py"), str(run), str(data)]
        cmd += ["--config", config.model_dump_json()]
        procs.append(
            subprocess.Popen(
                cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    outputs = [p.communicate(timeout=240) for p in procs]
    for p, (out, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-3000:]
        assert '"world_size": 2' in out

    one, two = losses(single), losses(run)
    assert sorted(two) == list(range(1, 7))
    for step in one:  # mean over ranks of per-rank means == the single process's batch mean
        assert two[step] == pytest.approx(one[step], rel=1e-5, abs=1e-6)
    # rank 0 alone logs; every rank leaves its RNG state in each checkpoint
    assert len([r for r in read_metrics(run) if "loss" in r]) == 6
    step, path = list_checkpoints(run / "checkpoints")[-1]
    assert step == 6
    assert {p.name for p in path.glob("rng-rank*.json")} == {"rng-rank0.json", "rng-rank1.json"}
