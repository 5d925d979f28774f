"""Trainer: logging, checkpoints, exact resume (in-process and after a real SIGTERM), NaN stop,
gradient accumulation, evaluation hooks and their isolation from training randomness."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from calm_core.data import PackedDataset
from calm_core.data.packing import DataError
from calm_core.training import (
    CheckpointError,
    CheckpointWriteError,
    NonFiniteLossError,
    TrainConfig,
    Trainer,
    TrainingInterrupted,
    list_checkpoints,
    read_metrics,
)
from test_trainer_support import losses, make_data_dir, make_model

pytestmark = pytest.mark.usefixtures("one_thread")

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_data_dir(tmp_path_factory.mktemp("data"))


def cfg(**kw: object) -> TrainConfig:
    base: dict[str, object] = dict(steps=8, batch_size=4, seq_len=16, lr=1e-2, log_every=1)
    base.update(kw)
    return TrainConfig.model_validate(base)


def train(data_dir: Path, run: Path, config: TrainConfig, **kw: object) -> dict[str, object]:
    dropout = float(kw.pop("dropout", 0.0))  # type: ignore[arg-type]
    model = kw.pop("model", None) or make_model(dropout=dropout)
    trainer = Trainer(model, config, PackedDataset(data_dir), run, progress=False, **kw)  # type: ignore[arg-type]
    return trainer.fit()


def test_fit_logs_metrics_evaluates_and_keeps_last_checkpoints(data_dir: Path, tmp_path: Path):
    config = cfg(steps=6, log_every=2, checkpoint_every=2, keep_checkpoints=2)
    val = PackedDataset(data_dir, "val")
    summary = train(data_dir, tmp_path, config, val_data=val)
    records = read_metrics(tmp_path)
    train_lines = [r for r in records if "loss" in r]
    assert [r["step"] for r in train_lines] == [2, 4, 6]
    for r in train_lines:
        assert {"loss", "accuracy", "lr", "grad_norm", "tokens_per_s"} <= set(r)
        assert r["lr"] == pytest.approx(1e-2)
    assert train_lines[-1]["loss"] < train_lines[0]["loss"]  # lr 1e-2 on a tiny LM: it learns
    evals = [r for r in records if "eval/loss" in r]
    assert [r["step"] for r in evals] == [6] and evals[0]["eval/loss"] > 0
    assert [s for s, _ in list_checkpoints(tmp_path / "checkpoints")] == [4, 6]
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".tmp")]
    assert summary["steps"] == 6 and summary["tokens"] == 6 * 4 * 16
    # logged lines average their window of log_every steps; final_loss is the last step's
    assert 0 < summary["final_loss"] < train_lines[0]["loss"]
    assert summary["tokens_per_s"] > 0


def test_request_stop_then_resume_matches_uninterrupted_run(data_dir: Path, tmp_path: Path):
    config = cfg(steps=8, checkpoint_every=5)
    full = tmp_path / "full"
    train(data_dir, full, config, dropout=0.2)  # dropout: resume must restore the RNG too

    def stop_at_3(trainer: Trainer, step: int, metrics: dict[str, float]) -> None:
        if step == 3:
            trainer.request_stop()

    part = tmp_path / "part"
    with pytest.raises(TrainingInterrupted) as info:
        train(data_dir, part, config, dropout=0.2, callbacks=[stop_at_3])
    assert info.value.step == 3 and info.value.reason == "requested"
    assert info.value.summary["steps"] == 3 and info.value.summary["tokens"] == 3 * 4 * 16
    assert info.value.checkpoint == part / "checkpoints" / "step-00000003"
    assert max(losses(part)) == 3
    # a differently initialised model: everything must come from the checkpoint
    summary = train(data_dir, part, config, model=make_model(seed=123, dropout=0.2), resume=True)
    assert summary["start_step"] == 3 and summary["steps"] == 8
    assert losses(part) == losses(full)  # bit-identical


@pytest.mark.parametrize(
    ("eval_every", "checkpoint_every", "evals"), [(4, 0, [4, 8]), (0, 4, [8]), (3, 8, [3, 6, 8])]
)
def test_resuming_a_finished_run_changes_nothing(
    data_dir: Path, tmp_path: Path, eval_every: int, checkpoint_every: int, evals: list[int]
):
    # also when the last checkpoint is written inside the loop, before the final evaluation
    config = cfg(steps=8, eval_every=eval_every, checkpoint_every=checkpoint_every)
    val = PackedDataset(data_dir, "val")
    first = train(data_dir, tmp_path, config, val_data=val)
    before = (tmp_path / "metrics.jsonl").read_text()
    again = train(data_dir, tmp_path, config, val_data=val, resume=True)
    # no second final evaluation, the last loss and evaluation are the run's, not NaN / empty
    assert (tmp_path / "metrics.jsonl").read_text() == before
    assert [r["step"] for r in read_metrics(tmp_path) if "eval/loss" in r] == evals
    assert again["final_loss"] == first["final_loss"] and again["eval"] == first["eval"]
    assert again["start_step"] == again["steps"] == 8


def test_resume_applies_changed_optimizer_settings_and_refuses_another_optimizer(
    data_dir: Path, tmp_path: Path
):
    def stop_at_3(trainer: Trainer, step: int, metrics: dict[str, float]) -> None:
        if step == 3:
            trainer.request_stop()

    seen: list[list[tuple[object, ...]]] = []

    def record(trainer: Trainer, step: int, metrics: dict[str, float]) -> None:
        assert trainer.optimizer is not None
        groups = trainer.optimizer.param_groups
        seen.append([(g["weight_decay"], tuple(g["betas"]), g["eps"]) for g in groups])

    with pytest.raises(TrainingInterrupted):
        train(data_dir, tmp_path, cfg(steps=6), callbacks=[stop_at_3])
    changed = cfg(steps=6, weight_decay=0.5, betas=(0.5, 0.6), eps=1e-3)
    train(data_dir, tmp_path, changed, callbacks=[record], resume=True)
    # the matrices' group decays at the new rate, the others not at all; betas and eps are new
    assert seen[0] == [(0.5, (0.5, 0.6), 1e-3), (0.0, (0.5, 0.6), 1e-3)]
    with pytest.raises(CheckpointError, match="trained with optimizer='adamw', this run has"):
        train(data_dir, tmp_path, cfg(steps=8, optimizer="sgd"), resume=True)


def test_a_failed_checkpoint_write_names_the_last_good_one(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    import calm_core.training.checkpoint as ckpt_module

    train(data_dir, tmp_path, cfg(steps=2, checkpoint_every=2))
    real = ckpt_module.save_model_state

    def disk_full(model: torch.nn.Module, path: Path) -> None:
        real(model, path)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt_module, "save_model_state", disk_full)
    with pytest.raises(CheckpointWriteError, match=r"step 4 .*No space left.*step-00000002"):
        train(data_dir, tmp_path, cfg(steps=4, checkpoint_every=2), resume=True)
    names = [p.name for p in (tmp_path / "checkpoints").iterdir()]
    assert names == ["step-00000002"]  # the half-written one is gone, the good one kept
    monkeypatch.undo()
    # a torn last line of metrics.jsonl (a full disk) does not block the resume
    with (tmp_path / "metrics.jsonl").open("a") as fh:
        fh.write('{"step": 3, "lo')
    assert train(data_dir, tmp_path, cfg(steps=4), resume=True)["steps"] == 4
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3, 4]


def test_half_deleted_checkpoints_are_never_resumed_from(data_dir: Path, tmp_path: Path):
    train(data_dir, tmp_path, cfg(steps=4, checkpoint_every=2, keep_checkpoints=2))
    root = tmp_path / "checkpoints"
    # a kill inside rmtree of the newest one: its weights are gone, its state file is not
    (root / "step-00000004" / "model.safetensors").unlink()
    (root / ".tmp-del-step-00000000").mkdir()  # and a cut delete from an earlier prune
    assert [s for s, _ in list_checkpoints(root)] == [2]
    summary = train(data_dir, tmp_path, cfg(steps=4, checkpoint_every=2), resume=True)
    assert summary["start_step"] == 2
    assert not (root / ".tmp-del-step-00000000").exists()


def test_a_validation_split_shorter_than_one_block_fails_before_training(
    data_dir: Path, tmp_path: Path
):
    val = PackedDataset(data_dir, "val")
    config = cfg(steps=4, seq_len=(val.num_tokens // 4 + 1) * 4)
    with pytest.raises(DataError, match="fewer than one block of seq_len"):
        train(data_dir, tmp_path, config, val_data=val)
    assert not (tmp_path / "metrics.jsonl").exists() or not read_metrics(tmp_path)


def test_sigterm_mid_run_saves_checkpoint_and_resume_matches(data_dir: Path, tmp_path: Path):
    config = cfg(steps=10)
    full = tmp_path / "full"
    train(data_dir, full, config, dropout=0.2)

    run = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, str(HERE / "test_trainer_support.py"), str(run), str(data_dir)]
    cmd += ["--config", config.model_dump_json(), "--dropout", "0.2", "--sleep", "0.2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.strip() == "STEP 3":
            proc.send_signal(signal.SIGTERM)
            break
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0, err
    assert "SIGTERM" in err and "TrainingInterrupted" in err
    saved = list_checkpoints(run / "checkpoints")
    assert saved and 3 <= saved[-1][0] < 10
    summary = train(data_dir, run, config, model=make_model(seed=7, dropout=0.2), resume=True)
    assert summary["start_step"] == saved[-1][0]
    assert losses(run) == losses(full)


def test_nan_loss_stops_with_the_step_and_no_checkpoint(data_dir: Path, tmp_path: Path):
    model = make_model()
    model.poison_at_call = 4
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss nan at step 4") as info:
        train(data_dir, tmp_path, cfg(checkpoint_every=2), model=model)
    assert info.value.step == 4
    # step 2's checkpoint is the last one; nothing was written for the failing step
    assert [s for s, _ in list_checkpoints(tmp_path / "checkpoints")] == [2]
    assert max(losses(tmp_path)) == 3


def test_gradient_accumulation_matches_the_full_batch(data_dir: Path, tmp_path: Path):
    train(data_dir, tmp_path / "a", cfg(steps=4))
    train(data_dir, tmp_path / "b", cfg(steps=4, grad_accum_steps=2))
    a, b = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert a.keys() == b.keys()
    for step in a:  # same blocks, mean of two half-batch means == full-batch mean
        assert b[step] == pytest.approx(a[step], rel=1e-5, abs=1e-6)


def test_evaluation_runs_in_eval_mode_and_does_not_disturb_training(data_dir: Path, tmp_path):
    seen: list[tuple[int, bool]] = []

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        seen.append((len(seen), model.training))
        torch.rand(1000)  # consumes RNG: must not change the training run
        return {"score": 1.5}

    config = cfg(steps=4)
    train(data_dir, tmp_path / "plain", config, dropout=0.2)
    train(data_dir, tmp_path / "eval", cfg(steps=4, eval_every=2), dropout=0.2, evaluate=evaluate)
    assert seen == [(0, False), (1, False)]
    assert losses(tmp_path / "eval") == losses(tmp_path / "plain")
    evals = [r for r in read_metrics(tmp_path / "eval") if "eval/score" in r]
    assert [(r["step"], r["eval/score"]) for r in evals] == [(2, 1.5), (4, 1.5)]


def test_resume_sweeps_torn_checkpoints_and_rejects_a_changed_seq_len(data_dir: Path, tmp_path):
    train(data_dir, tmp_path, cfg(steps=2))
    torn = tmp_path / "checkpoints" / ".tmp-step-00000009"
    torn.mkdir()
    (torn / "model.safetensors").write_bytes(b"half")
    summary = train(data_dir, tmp_path, cfg(steps=3), resume=True)
    assert summary["start_step"] == 2 and not torn.exists()
    with pytest.raises(CheckpointError, match="seq_len=16.*seq_len=32"):
        train(data_dir, tmp_path, cfg(steps=4, seq_len=32), resume=True)


def test_model_output_must_be_a_dict_with_a_scalar_loss(data_dir: Path, tmp_path: Path):
    class Bad(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(2))

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            return self.w.sum()

    with pytest.raises(TypeError, match="must return a dict with a scalar 'loss'"):
        train(data_dir, tmp_path, cfg(steps=1), model=Bad())


def test_train_config_validation_names_the_field():
    with pytest.raises(ValueError, match="divisible by grad_accum_steps"):
        TrainConfig(batch_size=6, grad_accum_steps=4)
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig.model_validate({"schedule": "step"})
    with pytest.raises(ValueError, match=r"unknown optimizer 'adamx'. Did you mean: adamax"):
        TrainConfig(optimizer="adamx")
    with pytest.raises(ValueError, match=r"each beta must lie in \[0, 1\), got \[1.5, 0.95\]"):
        TrainConfig(betas=(1.5, 0.95))
    with pytest.raises(ValueError, match="seed"):
        TrainConfig(seed=-1)
    assert TrainConfig(optimizer="SGD").optimizer == "SGD"
    assert json.loads(TrainConfig().model_dump_json())["betas"] == [0.9, 0.95]


@pytest.mark.parametrize("mode", ["bf16", "fp16"])
def test_autocast_on_request_tracks_fp32(data_dir: Path, tmp_path: Path, mode: str):
    train(data_dir, tmp_path / "fp32", cfg(steps=3))  # "auto" on CPU = fp32
    train(data_dir, tmp_path / mode, cfg(steps=3, autocast=mode))
    ref, low = losses(tmp_path / "fp32"), losses(tmp_path / mode)
    assert ref.keys() == low.keys() and low != ref  # autocast really ran in low precision
    for step in ref:  # bf16 keeps 8 mantissa bits: about 0.4% per rounding
        assert low[step] == pytest.approx(ref[step], rel=5e-3)
    state = json.loads(
        (tmp_path / mode / "checkpoints" / "step-00000003" / "trainer_state.json").read_text()
    )
    assert (state["scaler"] is not None) == (mode == "fp16")  # the fp16 loss scale is resumable


def test_progress_prints_plain_lines_when_not_a_tty():
    import io

    from calm_core.training.logging import Progress

    stream = io.StringIO()  # isatty() is False: no tqdm bar, one line per logged step
    progress = Progress(total=10, initial=0, enabled=True, stream=stream)
    progress.update(1, None)
    progress.update(5, {"loss": 2.5, "lr": 3e-4, "tokens_per_s": 1234.0})
    progress.message("eval at step 5: loss 2.4")
    progress.close()
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("step 5/10 loss 2.5000 lr 0.0003 tok/s 1234 eta ")
    assert lines[1] == "eval at step 5: loss 2.4" and len(lines) == 2
