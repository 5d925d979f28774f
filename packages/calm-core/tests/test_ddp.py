"""DDP: two CPU processes (gloo, launched the way torchrun launches them) follow the same loss
trajectory as one process with the same global batch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from calm_core.data import PackedDataset
from calm_core.training import TrainConfig, Trainer, list_checkpoints, read_metrics
from test_trainer_support import launch_ranks, losses, make_data_dir, make_model

pytestmark = [pytest.mark.ddp, pytest.mark.usefixtures("one_thread")]


def test_two_gloo_processes_match_one_process_with_the_same_global_batch(tmp_path: Path):
    data = make_data_dir(tmp_path / "data")
    config = TrainConfig(
        steps=6, batch_size=4, seq_len=16, lr=1e-2, log_every=1, checkpoint_every=3
    )
    single = tmp_path / "single"
    Trainer(make_model(), config, PackedDataset(data), single, progress=False).fit()

    run = tmp_path / "ddp"
    for out in launch_ranks(run, data, config):
        assert '"world_size": 2' in out
        assert "RELEASED True" in out  # the DDP wrapper went before the group

    one, two = losses(single), losses(run)
    assert sorted(two) == list(range(1, 7))
    for step in one:  # mean over ranks of per-rank means == the single process's batch mean
        assert two[step] == pytest.approx(one[step], rel=1e-5, abs=1e-6)
    # rank 0 alone logs; every rank leaves its RNG state in each checkpoint
    assert len([r for r in read_metrics(run) if "loss" in r]) == 6
    step, path = list_checkpoints(run / "checkpoints")[-1]
    assert step == 6
    assert {p.name for p in path.glob("rng-rank*.json")} == {"rng-rank0.json", "rng-rank1.json"}


def test_ddp_resume_restores_every_ranks_unflushed_metric_window(tmp_path: Path):
    # log_every=5 with a stop inside the window: each rank holds the loss sums of its *own* data
    # since the last line; the logged step-5 line averages both, so a resume must restore each
    data = make_data_dir(tmp_path / "data")
    config = TrainConfig(steps=6, batch_size=4, seq_len=16, lr=1e-2, log_every=5)
    full, part = tmp_path / "full", tmp_path / "part"
    launch_ranks(full, data, config)
    # a stop asked for at step 3 is agreed on by the ranks in the next step's all-reduce
    outs = launch_ranks(part, data, config, "--stop-at", "3")
    assert all("STOPPED 4" in out for out in outs), outs
    step, path = list_checkpoints(part / "checkpoints")[-1]
    assert step == 4
    windows = [json.loads((path / f"window-rank{r}.json").read_text()) for r in range(2)]
    assert windows[0]["count"] == windows[1]["count"] == 4
    assert windows[0]["sums"]["loss"] != windows[1]["sums"]["loss"]  # the ranks saw other data
    launch_ranks(part, data, config, "--resume")
    assert sorted(losses(full)) == [5, 6]
    assert losses(part) == losses(full)  # bit-identical, the step-5 line included


def test_resume_on_another_number_of_processes_keeps_the_logged_means(tmp_path: Path):
    # stopped inside a logging window on 2 ranks, resumed alone: the step-5 line must still be
    # the mean over the whole window (the saved per-rank windows are merged)
    data = make_data_dir(tmp_path / "data")
    config = TrainConfig(steps=6, batch_size=4, seq_len=16, lr=1e-2, log_every=5)
    full, part = tmp_path / "full", tmp_path / "part"
    launch_ranks(full, data, config)
    assert all("STOPPED 4" in out for out in launch_ranks(part, data, config, "--stop-at", "3"))
    Trainer(
        make_model(seed=5), config, PackedDataset(data), part, resume=True, progress=False
    ).fit()
    one, two = losses(full), losses(part)
    assert sorted(two) == [5, 6]
    for step in one:  # other reduction order: equal up to float rounding
        assert two[step] == pytest.approx(one[step], rel=1e-5, abs=1e-6)
