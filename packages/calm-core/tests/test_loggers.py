"""Experiment trackers (calm_core.training.loggers): each writes the rows of ``metrics.jsonl`` --
TensorBoard read back from its event files, MLflow from a file store, W&B from its offline run
file -- and only once when two gloo processes train.

Run as a script (``python test_loggers.py RUN_DIR DATA_DIR NAME...``) it is one rank of the
two-process test.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from calm_core.cli import main as calm_main
from calm_core.data import PackedDataset
from calm_core.training import TrainConfig, Trainer, read_metrics
from calm_core.training.loggers import (
    LoggerNotInstalledError,
    MLflowLogger,
    TensorBoardLogger,
    TrackerCallback,
    WandbLogger,
    make_loggers,
    open_loggers,
)
from test_trainer_support import make_data_dir, make_model

pytestmark = pytest.mark.usefixtures("one_thread")

HERE = Path(__file__).resolve()
CONFIG = TrainConfig(
    steps=6, batch_size=4, seq_len=16, lr=1e-2, log_every=2, eval_every=3, checkpoint_every=3
)

Rows = dict[tuple[int, str], float]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_data_dir(tmp_path_factory.mktemp("data"))


def needs(*modules: str) -> None:
    """Skip without a tracker's extra (the nox tests session installs them all)."""
    for module in modules:
        pytest.importorskip(module)


def jsonl_rows(run: Path, first_step: int = 0) -> Rows:
    """(step, key) -> value of every number in metrics.jsonl (``step`` itself excluded)."""
    return {
        (int(r["step"]), k): float(v)
        for r in read_metrics(run)
        for k, v in r.items()
        if k != "step" and int(r["step"]) >= first_step
    }


def tensorboard_rows(log_dir: Path) -> Rows:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {(e.step, tag): e.value for tag in acc.Tags()["scalars"] for e in acc.Scalars(tag)}


def mlflow_rows(uri: str, run_id: str | None = None) -> tuple[Rows, int]:
    """The metrics of the one run (or ``run_id``) in an MLflow store, and its number of runs."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    run = next(r for r in runs if run_id in (None, r.info.run_id))
    rows = {
        (m.step, key): m.value
        for key in run.data.metrics
        for m in client.get_metric_history(run.info.run_id, key)
    }
    return rows, len(runs)


def _wandb_records(path: Path) -> list[Any]:
    """The protobuf Records of an offline run file (LevelDB-style log: 32 KiB blocks, 7-byte
    record headers: crc32c, little-endian length, type 1 full / 2 first / 3 middle / 4 last)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, pending, records = 7, 32768, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = struct.unpack("<HB", data[pos + 4 : pos + 7])
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def wandb_rows(run_dir: Path) -> Rows:
    """The history rows of the W&B offline run in ``run_dir``."""
    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    deadline = time.monotonic() + 60
    records = _wandb_records(path)
    # wandb's service process writes the file; it is complete once its exit record is in
    while not any(r.WhichOneof("record_type") == "exit" for r in records):
        assert time.monotonic() < deadline, "the W&B run file was never finished"
        time.sleep(0.2)
        records = _wandb_records(path)
    rows: Rows = {}
    for record in records:
        if record.WhichOneof("record_type") == "history":
            items = {
                i.key or "/".join(i.nested_key): json.loads(i.value_json)
                for i in record.history.item
            }
            step = int(items.pop("_step"))
            rows.update({(step, k): float(v) for k, v in items.items() if k[0] != "_"})
    return rows


def _train(data: Path, run: Path, callbacks: list[Any], **kw: Any) -> None:
    trainer = Trainer(
        make_model(), CONFIG, PackedDataset(data), run, val_data=PackedDataset(data, "val"),
        callbacks=callbacks, progress=False, **kw,
    )  # fmt: skip
    trainer.fit()


def test_tensorboard_event_files_hold_the_metrics_jsonl_rows(data_dir: Path, tmp_path: Path):
    needs("tensorboard")
    run = tmp_path / "run"
    for _ in range(2):  # a fresh run over an earlier one starts the event files over
        with TensorBoardLogger() as tb:
            _train(data_dir, run, [tb])
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 1
    expected = jsonl_rows(run)
    assert {(2, "loss"), (6, "loss"), (3, "eval/loss"), (6, "eval/loss")} <= set(expected)
    got = tensorboard_rows(run / "tensorboard")
    assert got.keys() == expected.keys()
    for key, value in expected.items():  # TensorBoard stores float32
        assert got[key] == pytest.approx(value, rel=1e-6), key


def test_mlflow_file_store_holds_the_metrics_jsonl_rows(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    needs("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps file stores opt-in
    uri = (tmp_path / "mlruns").as_uri()
    logger = MLflowLogger(tracking_uri=uri, experiment="tiny", run_name="r1")
    with logger:
        _train(data_dir, tmp_path / "run", [logger])
    got, runs = mlflow_rows(uri)
    assert runs == 1 and got == jsonl_rows(tmp_path / "run")
    from mlflow.tracking import MlflowClient

    run = MlflowClient(tracking_uri=uri).get_run(logger.run_id)
    assert run.info.run_name == "r1" and run.info.status == "FINISHED"
    params = run.data.params
    assert params["lr"] == "0.01" and params["log_every"] == "2"
    assert params["schedule"] == "constant" and params["betas"] == "[0.9, 0.95]"


def test_wandb_offline_run_holds_the_metrics_jsonl_rows(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    needs("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    with WandbLogger(project="calm-test") as wb:
        _train(data_dir, run, [wb])
    assert wandb_rows(run) == jsonl_rows(run)


def test_a_resumed_run_sends_only_its_new_rows(data_dir: Path, tmp_path: Path) -> None:
    needs("tensorboard")
    run = tmp_path / "run"

    def stop_at_4(trainer: Trainer, step: int, metrics: dict[str, float]) -> None:
        if step == 4:
            trainer.request_stop()

    first = TensorBoardLogger(log_dir=tmp_path / "tb1")
    with first, pytest.raises(KeyboardInterrupt):  # TrainingInterrupted, checkpoint at step 4
        _train(data_dir, run, [first, stop_at_4])
    with TensorBoardLogger(log_dir=tmp_path / "tb2") as second:
        _train(data_dir, run, [second], resume=True)
    all_rows = jsonl_rows(run)
    assert tensorboard_rows(tmp_path / "tb1") == pytest.approx(
        {k: v for k, v in all_rows.items() if k[0] <= 4}, rel=1e-6
    )
    assert tensorboard_rows(tmp_path / "tb2") == pytest.approx(
        {k: v for k, v in all_rows.items() if k[0] > 4}, rel=1e-6
    )


class _Flaky(TrackerCallback):
    """Records rows; the second one fails (a tracker's network error)."""

    name = "flaky"

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[int, dict[str, float]]] = []
        self.events: list[str] = []

    def start_run(self, run_dir: Path, run_name: str, config: Any) -> None:
        self.events.append(f"start {run_name} lr={config['lr']}")

    def log_row(self, step: int, values: Any) -> None:
        if len(self.rows) == 1:
            raise ConnectionError("tracker server went away")
        self.rows.append((step, dict(values)))

    def finish_run(self) -> None:
        self.events.append("finish")


def test_a_failing_tracker_is_dropped_with_one_warning_and_training_goes_on(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flaky = _Flaky()
    with open_loggers([]) as callbacks, flaky:
        _train(data_dir, tmp_path / "run", [*callbacks, flaky])
    assert flaky.events == ["start run lr=0.01", "finish"]
    assert [step for step, _ in flaky.rows] == [2]
    err = capsys.readouterr().err
    assert err.count("the flaky logger failed (ConnectionError: tracker server went away)") == 1
    assert max(int(r["step"]) for r in read_metrics(tmp_path / "run")) == 6  # the run finished


def test_names_and_missing_extras_are_refused_up_front(monkeypatch: pytest.MonkeyPatch) -> None:
    needs("tensorboard", "mlflow")
    assert make_loggers(["jsonl"]) == []
    kinds = [type(x) for x in make_loggers(["tensorboard", "jsonl", "tensorboard", "mlflow"])]
    assert kinds == [TensorBoardLogger, MLflowLogger]
    with pytest.raises(ValueError, match="unknown logger 'tensorbord'; choose from jsonl, tens"):
        make_loggers(["tensorbord"])
    for module, extra in (("mlflow", "mlflow"), ("wandb", "wandb")):
        monkeypatch.setitem(sys.modules, module, None)
        with pytest.raises(LoggerNotInstalledError, match=rf"pip install 'calm-core\[{extra}\]'"):
            open_loggers([extra])
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(LoggerNotInstalledError, match=r"calm-core\[tensorboard\]"):
        TensorBoardLogger()


def _ar_config(path: Path) -> Path:
    path.write_text(
        json.dumps(
            {
                "backbone": {
                    "hidden_size": 16,
                    "intermediate_size": 32,
                    "num_layers": 1,
                    "num_heads": 2,
                    "num_kv_heads": 1,
                    "max_positions": 64,
                },
                "train": {
                    "batch_size": 4,
                    "seq_len": 16,
                    "log_every": 2,
                    "eval_every": 3,
                    "warmup_steps": 1,
                },
            }
        )
    )
    return path


def test_calm_train_logger_flag(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    needs("tensorboard", "mlflow")
    cfg = _ar_config(tmp_path / "ar.json")
    out = tmp_path / "ar"
    argv = ["train", "--model", "ar", "--data", str(data_dir), "--out", str(out), "--config"]
    argv += [str(cfg), "--steps", "6", "--no-progress", "--json"]
    assert (
        calm_main([*argv, "--logger", "jsonl", "--logger", "tensorboard", "--logger", "mlflow"])
        == 0
    )
    assert json.loads(capsys.readouterr().out)["steps"] == 6  # stdout stays one JSON line
    expected = jsonl_rows(out)
    assert (6, "loss") in expected and (6, "eval/loss") in expected
    got = tensorboard_rows(out / "tensorboard")
    assert got.keys() == expected.keys()
    assert got == pytest.approx(expected, rel=1e-6)
    rows, runs = mlflow_rows(f"sqlite:///{out / 'mlflow.db'}")  # the default store
    assert runs == 1 and rows == expected
    # a missing extra is a usage error before any work (no output directory is made)
    monkeypatch.setitem(sys.modules, "wandb", None)
    bad = [a if a != str(out) else str(tmp_path / "never") for a in argv]
    assert calm_main([*bad, "--logger", "wandb"]) == 2
    assert "pip install 'calm-core[wandb]'" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()


# ------------------------------------------------------------------------------ two processes
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.ddp
def test_two_gloo_processes_log_once(data_dir: Path, tmp_path: Path) -> None:
    needs("tensorboard", "mlflow", "wandb")
    run, port, procs = tmp_path / "ddp", _free_port(), []
    for rank in range(2):
        env = {
            **os.environ,
            "PYTHONPATH": f"{HERE.parent}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
            "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
            "CUDA_VISIBLE_DEVICES": "", "WANDB_MODE": "offline", "WANDB_SILENT": "true",
        }  # fmt: skip
        cmd = [sys.executable, str(HERE), str(run), str(data_dir), "tensorboard", "mlflow", "wandb"]
        procs.append(subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True))
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    expected = jsonl_rows(run)
    assert len([k for k in expected if k[1] == "loss"]) == 3  # steps 2, 4, 6
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert tensorboard_rows(run / "tensorboard") == pytest.approx(expected, rel=1e-6)
    rows, runs = mlflow_rows(f"sqlite:///{run / 'mlflow.db'}")
    assert runs == 1 and rows == expected
    assert wandb_rows(run) == expected  # and exactly one offline run (wandb_rows unpacks one)


def _rank_main(argv: list[str]) -> int:
    run, data, *names = argv
    torch.set_num_threads(1)
    with open_loggers(names) as callbacks:
        Trainer(
            make_model(), CONFIG, PackedDataset(data), run, val_data=PackedDataset(data, "val"),
            callbacks=callbacks, progress=False,
        ).fit()  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(_rank_main(sys.argv[1:]))
