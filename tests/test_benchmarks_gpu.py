"""benchmarks/gpu.py where no GPU is: its arguments, the MFU arithmetic and peak table, the clear
refusal without CUDA, and its training and generation timers run on tiny presets on the CPU."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import gpu  # noqa: E402


def test_mfu_is_model_flops_per_second_over_the_peak() -> None:
    # 10k tokens/s x 6e9 FLOPs/token = 60 TFLOP/s, against 989: 0.0607
    assert gpu.mfu(10_000, 6e9, 989.0) == pytest.approx(60 / 989)
    with pytest.raises(ValueError, match="peak must be positive"):
        gpu.mfu(1.0, 1.0, 0.0)
    assert gpu.causal_context(512) == 256  # (512 + 1) / 2, rounded
    assert gpu.causal_context(1) == 1


def test_the_peak_table_matches_device_names_most_specific_first() -> None:
    assert gpu.lookup(gpu.PEAK_BF16_TFLOPS, "NVIDIA H100 80GB HBM3") == 989.0
    assert gpu.lookup(gpu.PEAK_BF16_TFLOPS, "NVIDIA H100 PCIe") == 756.0
    assert gpu.lookup(gpu.PEAK_BF16_TFLOPS, "NVIDIA H200") == 989.0
    assert gpu.lookup(gpu.PEAK_BF16_TFLOPS, "NVIDIA A100-SXM4-80GB") == 312.0
    assert gpu.lookup(gpu.PEAK_BF16_TFLOPS, "NVIDIA GeForce RTX 4090") is None  # -> measured
    assert gpu.lookup(gpu.MEMORY_GBPS, "NVIDIA H200") == 4800.0


def test_arguments_are_checked_before_any_work(capsys: pytest.CaptureFixture[str]) -> None:
    args = gpu.parse_args([])
    assert (args.steps, args.batch, args.seq_len, args.new_tokens) == (8, 8, 2048, 64)
    assert args.presets == "calm-m,transformer-m"
    for bad, message in (
        (["--steps", "0"], "--steps must be positive"),
        (["--presets", "calm-q"], "unknown preset(s) calm-q"),
    ):
        with pytest.raises(SystemExit):
            gpu.parse_args(bad)
        assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_without_cuda_it_exits_2_and_says_why() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--skip-tests"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "needs a CUDA GPU, but torch.cuda.is_available() is False" in done.stderr
    assert done.stdout == ""


def test_the_timers_run_the_real_code_on_tiny_presets() -> None:
    args = gpu.parse_args(["--steps", "1", "--warmup", "0", "--batch", "2", "--seq-len", "32"])
    args.new_tokens = 4
    cpu = torch.device("cpu")
    for name in ("transformer-tiny", "calm-tiny"):
        fig = gpu.train_preset(name, cpu, args, peak_tflops=1.0)
        assert fig.tokens_per_s > 0 and math.isfinite(fig.loss)
        assert fig.mfu == pytest.approx(fig.tokens_per_s * fig.flops_per_token / 1e12)
        gen = gpu.time_generation(name, cpu, args)
        assert sorted(gen) == [1, 8] and all(v > 0 for v in gen.values())
