"""benchmarks/gpu.py where no GPU is: its arguments, the MFU arithmetic and peak table, the clear
refusal without CUDA, and a ``--device cpu`` dry run of the whole script on tiny presets."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from calm_core import costs

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import gpu  # noqa: E402


def test_mfu_is_model_flops_per_second_over_the_peak() -> None:
    # 10k tokens/s x 6e9 FLOPs/token = 60 TFLOP/s, against 989: 0.0607
    assert gpu.mfu(10_000, 6e9, 989.0) == pytest.approx(60 / 989)
    with pytest.raises(ValueError, match="peak must be positive"):
        gpu.mfu(1.0, 1.0, 0.0)


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


def test_a_cpu_dry_run_prints_the_one_json_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "gpu.json"
    argv = ["--device", "cpu", "--presets", "transformer-tiny,calm-tiny", "--steps", "1"]
    argv += ["--warmup", "0", "--batch", "2", "--seq-len", "32", "--new-tokens", "4"]
    assert gpu.main([*argv, "--json", str(out)]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    result = json.loads(line)
    assert out.read_text() == line + "\n"
    assert result["device"] == "cpu" and result["tests"] == {"skipped": True}
    assert result["peak_source"] == "measured fp32 matmul" and result["peak_tflops"] > 0
    assert result["memory_gbps"] is None and "gen_weight_read_frac_b1" not in result
    for key in ("transformer_tiny", "calm_tiny"):
        train = result["train"][key]
        assert train["tokens_per_s"] > 0 and math.isfinite(train["loss"])
        # MFU is the model FLOP rate over the peak, with the analytic FLOPs of the preset
        rate = train["tokens_per_s"] * train["flops_per_token"] / 1e12
        assert train["mfu"] == pytest.approx(rate / result["peak_tflops"])
        assert result["gen_tok_s"][f"{key}_b1"] > 0 and result["gen_tok_s"][f"{key}_b8"] > 0
        assert result["gen_weight_read_gbps_b1"][key] > 0
    # K = 4 tokens per CALM step: causal context over 32 / 4 = 8 positions
    want = costs.flops_per_token("calm-tiny", context=costs.causal_context(8), training=True)
    assert result["train"]["calm_tiny"]["flops_per_token"] == want
