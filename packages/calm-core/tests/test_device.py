"""resolve_device: auto picks the local rank's GPU, else cuda:0, else MPS, else the CPU; an
explicit device that is not here is a DeviceError naming what is (CUDA faked by monkeypatching)."""

from __future__ import annotations

import pytest
import torch
from calm_core.config import ConfigError, validate_config
from calm_core.runtime import DeviceError, available_devices, resolve_device
from calm_core.training import TrainConfig


def _machine(monkeypatch: pytest.MonkeyPatch, *, gpus: int = 0, mps: bool = False) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    monkeypatch.delenv("LOCAL_RANK", raising=False)


def test_auto_is_the_cpu_without_accelerators(monkeypatch: pytest.MonkeyPatch) -> None:
    _machine(monkeypatch)
    assert resolve_device() == torch.device("cpu")
    assert resolve_device("auto") == resolve_device(" CPU ") == torch.device("cpu")
    assert available_devices() == ["cpu"]


def test_auto_is_cuda_0_in_a_single_process(monkeypatch: pytest.MonkeyPatch) -> None:
    _machine(monkeypatch, gpus=2, mps=True)
    assert resolve_device() == torch.device("cuda", 0)
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert available_devices() == ["cpu", "cuda:0", "cuda:1", "mps"]


def test_auto_is_the_local_ranks_gpu_under_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    _machine(monkeypatch, gpus=2)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert resolve_device("auto") == torch.device("cuda", 1)
    assert resolve_device("cuda") == torch.device("cuda", 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)  # an explicit index wins
    monkeypatch.setenv("LOCAL_RANK", "2")  # more processes than GPUs on this node
    with pytest.raises(DeviceError, match=r"cuda:2 \(LOCAL_RANK=2\).*2 CUDA device\(s\)"):
        resolve_device()


def test_auto_falls_back_to_mps(monkeypatch: pytest.MonkeyPatch) -> None:
    _machine(monkeypatch, mps=True)
    assert resolve_device() == torch.device("mps")
    assert resolve_device("mps") == torch.device("mps")


def test_cuda_without_cuda_is_refused_naming_what_is_available(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _machine(monkeypatch)
    for spec in ("cuda", "cuda:0"):
        with pytest.raises(DeviceError, match=r"sees no CUDA GPU here; available: cpu"):
            resolve_device(spec)
    with pytest.raises(DeviceError, match="device 'mps' is not available.*available here: cpu"):
        resolve_device("mps")


def test_a_gpu_index_out_of_range_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    _machine(monkeypatch, gpus=2)
    with pytest.raises(DeviceError, match=r"has 2 CUDA device\(s\): cuda:0, cuda:1"):
        resolve_device("cuda:2")
    with pytest.raises(DeviceError, match=r"has 2 CUDA device\(s\)"):
        resolve_device(torch.device("cuda", 5))


def test_unknown_specs_are_config_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    _machine(monkeypatch)
    with pytest.raises(DeviceError, match="unknown device 'gpu'; use auto, cpu, cuda, cuda:N"):
        resolve_device("gpu")
    assert issubclass(DeviceError, ConfigError) and issubclass(DeviceError, ValueError)


def test_the_training_config_holds_a_device_spec() -> None:
    assert TrainConfig().device == "auto"
    assert TrainConfig(device="cuda:3").device == "cuda:3"  # checked where it is resolved
    with pytest.raises(ConfigError, match="device"):
        validate_config(TrainConfig, {"device": "gpu0"})
