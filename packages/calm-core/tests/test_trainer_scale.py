"""The training-config fields for scale: activation checkpointing and ``compile`` leave the losses
as they are, the device is resolved at construction, AdamW takes the fused or foreach path, and a
trainer is whole (state, info, device) before ``fit()``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from calm_core.data import PackedDataset
from calm_core.runtime import DeviceError
from calm_core.training import CompileError, TrainConfig, Trainer, build_optimizer
from calm_core.training.distributed import setup_distributed
from calm_core.training.parallel import find_blocks
from calm_core.training.state import RunState
from test_trainer_support import TinyLM, losses, make_data_dir, make_model
from torch import nn

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_data_dir(tmp_path_factory.mktemp("scale") / "data")


def _train(kind: str, data: Path, run: Path, **fields: object) -> dict[int, float]:
    config = TrainConfig(steps=6, batch_size=4, seq_len=16, lr=1e-2, log_every=1, **fields)
    model = make_model(kind=kind)
    Trainer(model, config, PackedDataset(data), run, progress=False).fit()
    return losses(run)


@pytest.mark.parametrize("kind", ["calm", "ar"])
def test_activation_checkpointing_gives_the_same_losses(kind: str, data: Path, tmp_path: Path):
    plain = _train(kind, data, tmp_path / "plain")
    recomputed = _train(kind, data, tmp_path / "ckpt", activation_checkpointing=True)
    assert sorted(recomputed) == list(range(1, 7))
    for step, loss in plain.items():
        assert recomputed[step] == pytest.approx(loss, abs=1e-6)


def test_activation_checkpointing_recomputes_and_is_undone_after_fit(data: Path, tmp_path: Path):
    model = make_model(kind="ar")
    blocks = find_blocks(model)
    assert blocks == list(model.backbone.layers)  # the backbone's two layers
    calm = make_model(kind="calm")
    assert find_blocks(calm) == list(calm.backbone.layers)  # not the head's, nor the codec's
    calls = []
    inner = blocks[0].mlp.forward

    def counted(x: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return inner(x)

    vars(blocks[0].mlp)["forward"] = counted
    config = TrainConfig(
        steps=1, batch_size=4, seq_len=16, log_every=1, activation_checkpointing=True
    )
    Trainer(model, config, PackedDataset(data), tmp_path / "r", progress=False).fit()
    # the block's inner modules run twice in the step: forward, and again in the backward
    assert len(calls) == 2
    assert all("forward" not in vars(b) for b in blocks)  # the model is plain again


def test_activation_checkpointing_without_blocks_is_refused(data: Path, tmp_path: Path):
    config = TrainConfig(steps=1, batch_size=4, seq_len=16, activation_checkpointing=True)
    trainer = Trainer(make_model(), config, PackedDataset(data), tmp_path / "r", progress=False)
    with pytest.raises(ValueError, match="no trainable nn.ModuleList named layers or blocks"):
        trainer.fit()


def test_compile_gives_the_same_losses_on_a_tiny_model(data: Path, tmp_path: Path):
    plain = _train("tiny", data, tmp_path / "plain")
    try:
        compiled = _train("tiny", data, tmp_path / "compiled", compile=True)
    except CompileError as exc:  # the only acceptable failure: the clear one
        pytest.fail(f"torch.compile failed on this machine: {exc}")
    for step, loss in plain.items():
        assert compiled[step] == pytest.approx(loss, abs=1e-5)


class _InductorError(RuntimeError):
    """Stands for an inductor failure (e.g. no C++ compiler)."""


_InductorError.__module__ = "torch._inductor.exc"


class _FailsCompiled(TinyLM):
    def forward(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        raise _InductorError("C++ compile error\ng++: not found")


def test_a_failing_compile_says_how_to_turn_it_off(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(nn.Module, "compile", lambda self, *a, **k: None)
    config = TrainConfig(steps=2, batch_size=4, seq_len=16, compile=True)
    trainer = Trainer(_FailsCompiled(), config, PackedDataset(data), tmp_path / "r", progress=False)
    with pytest.raises(
        CompileError, match=r"step 1 \(_InductorError: C\+\+ compile error\).*compile: false"
    ):
        trainer.fit()


def test_a_trainer_is_whole_before_fit(data: Path, tmp_path: Path):
    trainer = Trainer(make_model(), TrainConfig(), PackedDataset(data), tmp_path, progress=False)
    assert trainer.state == RunState()
    assert trainer.step == 0 and trainer.last_eval == {}
    assert trainer.info.world_size == 1 and trainer.is_main
    assert trainer.device == torch.device("cpu")  # auto, without CUDA or MPS
    assert trainer.optimizer is None and trainer.prepared is None


def test_the_trainer_resolves_its_device_before_any_work(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    def trainer(config: TrainConfig, **kw: object) -> Trainer:
        return Trainer(make_model(), config, PackedDataset(data), tmp_path, progress=False, **kw)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="device 'cuda' is not available"):
        trainer(TrainConfig(device="cuda"))
    with pytest.raises(DeviceError, match="unknown device 'gpu'"):
        trainer(TrainConfig(), device="gpu")
    assert not tmp_path.joinpath("metrics.jsonl").exists()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert trainer(TrainConfig()).device == torch.device("cuda", 0)  # auto
    assert trainer(TrainConfig(device="cpu")).device == torch.device("cpu")
    assert trainer(TrainConfig(device="cpu"), device="cuda:1").device == torch.device("cuda", 1)
    monkeypatch.setenv("LOCAL_RANK", "1")  # under torchrun: the local rank's GPU
    assert trainer(TrainConfig()).device == torch.device("cuda", 1)


def test_adamw_is_fused_on_cpu_and_foreach_on_other_devices():
    cpu = build_optimizer(nn.Linear(4, 4), TrainConfig())
    assert cpu.defaults["fused"] is True
    meta = build_optimizer(nn.Linear(4, 4, device="meta"), TrainConfig())
    assert meta.defaults["foreach"] is True and not meta.defaults["fused"]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_auto_trains_in_bf16_with_fused_adamw_and_resumes(data: Path, tmp_path: Path):
    config = TrainConfig(steps=6, batch_size=4, seq_len=16, lr=1e-2, log_every=1)
    full = tmp_path / "full"
    trainer = Trainer(make_model(kind="calm"), config, PackedDataset(data), full, progress=False)
    assert trainer.device == torch.device("cuda", 0)  # device "auto"
    trainer.fit()
    assert trainer.optimizer is not None and trainer.optimizer.defaults["fused"] is True
    assert isinstance(trainer._amp, torch.autocast) and trainer._amp.fast_dtype == torch.bfloat16
    assert next(trainer.model.parameters()).device.type == "cuda"

    def stop_at_3(t: Trainer, step: int, metrics: dict[str, float]) -> None:
        if step == 3:
            t.request_stop()

    part = tmp_path / "part"
    with pytest.raises(KeyboardInterrupt):
        Trainer(
            make_model(kind="calm"), config, PackedDataset(data), part, callbacks=[stop_at_3],
            progress=False,
        ).fit()  # fmt: skip
    Trainer(
        make_model(kind="calm"), config, PackedDataset(data), part, resume=True, progress=False
    ).fit()
    one, two = losses(full), losses(part)
    assert sorted(two) == list(range(1, 7))
    for step in one:  # cuBLAS may pick other kernels across processes: rounding only
        assert two[step] == pytest.approx(one[step], rel=1e-3)


def test_the_group_backend_follows_the_training_device(monkeypatch: pytest.MonkeyPatch):
    made: list[str] = []
    devices: list[object] = []
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend: made.append(backend))
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", devices.append)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    # device: cpu under torchrun on a GPU machine: gloo, which reduces CPU tensors
    info = setup_distributed(torch.device("cpu"))
    assert (made, devices, info.rank, info.initialized_here) == (["gloo"], [], 1, True)
    setup_distributed(torch.device("cuda", 1))
    assert made[-1] == "nccl" and devices == [torch.device("cuda", 1)]
