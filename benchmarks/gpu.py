"""The device check of one CUDA GPU, in one call: ``python benchmarks/gpu.py`` (or ``nox -s gpu``).

In under 8 minutes on an H100-class card it

1. runs the CUDA-marked tests (``pytest -m cuda`` over every test directory),
2. trains the ``calm-m`` and ``transformer-m`` presets (random weights) for a few optimizer steps
   with bf16 autocast and fused AdamW, and reports tokens/s and MFU: the analytic training FLOPs
   per token (:func:`calm_core.costs.flops_per_token`) times tokens/s, against the card's dense
   bf16 peak (:data:`PEAK_BF16_TFLOPS` by device name, else a measured bf16 matmul rate),
3. times generation (prompt 32, KV cache, CALM at T=1, AR greedy) at batch 1 and 8 for both, and
   at batch 1 the weight-read rate against the card's memory bandwidth where it is known,

then prints one JSON line (and writes it to ``--json OUT``). Without CUDA it exits with status 2
and says so before doing anything. ``--device cpu`` is a dry run of the same code in fp32 on the
CPU (no CUDA tests, MFU against a measured fp32 matmul rate): use it with the tiny presets to check
the script itself where no GPU is. The calm-m preset needs the calm-heads and calm-codecs
packages installed (the ``energy`` head and the ``autoencoder`` codec).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from calm_core import costs, presets
from calm_core.builders import build_preset
from calm_core.calm import CALM
from calm_core.training import TrainConfig, build_optimizer
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ("calm-m", "transformer-m")

#: dense (no sparsity) bf16 tensor-core peak in TFLOP/s, by a substring of the device name; the
#: first match wins, so the more specific names come first
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM (the name reads "H100 80GB HBM3")
    ("H200", 989.0),
    ("A100", 312.0),
)
#: memory bandwidth in GB/s, by a substring of the device name (first match wins)
MEMORY_GBPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 2000.0),
    ("H100 NVL", 3900.0),
    ("H100", 3350.0),
    ("H200", 4800.0),
    ("A100-SXM4-80GB", 2039.0),
    ("A100 80GB PCIe", 1935.0),
    ("A100", 1555.0),
)


class NoCudaError(RuntimeError):
    """This script needs a CUDA GPU and none is visible."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--steps", type=int, default=8, help="timed optimizer steps per preset")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before them")
    p.add_argument("--batch", type=int, default=8, help="training sequences per step")
    p.add_argument("--seq-len", type=int, default=2048, help="training tokens per sequence")
    p.add_argument("--prompt", type=int, default=32, help="generation prompt length")
    p.add_argument("--new-tokens", type=int, default=64, help="tokens generated per call")
    p.add_argument("--skip-tests", action="store_true", help="do not run pytest -m cuda")
    p.add_argument("--presets", default=",".join(PRESETS), help="comma-separated preset names")
    p.add_argument("--json", metavar="OUT", help="also write the JSON line to this file")
    p.add_argument(
        "--device",
        choices=("cuda", "cpu"),
        default="cuda",
        help="cpu: a dry run in fp32 (no CUDA tests; MFU against a measured fp32 matmul)",
    )
    args = p.parse_args(argv)
    for name in ("steps", "batch", "seq_len", "prompt", "new_tokens"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.warmup < 0:
        p.error(f"--warmup must be >= 0, got {args.warmup}")
    unknown = [n for n in args.presets.split(",") if n not in presets.preset_names()]
    if unknown:
        p.error(f"unknown preset(s) {', '.join(unknown)}; see calm_core.presets.preset_names()")
    return args


def require_cuda() -> torch.device:
    """The CUDA device, or :class:`NoCudaError` saying why there is none."""
    if not torch.cuda.is_available():
        built = torch.version.cuda or "none (a CPU-only build)"
        raise NoCudaError(
            "benchmarks/gpu.py needs a CUDA GPU, but torch.cuda.is_available() is False "
            f"(torch {torch.__version__}, CUDA {built}); run it on a machine with an NVIDIA GPU "
            "and a CUDA build of torch (--device cpu is a dry run of this script on the CPU)"
        )
    return torch.device("cuda", 0)


def lookup(table: tuple[tuple[str, float], ...], device_name: str) -> float | None:
    """The first value whose key is a substring of ``device_name``."""
    for key, value in table:
        if key in device_name:
            return value
    return None


def mfu(tokens_per_s: float, flops_per_token: float, peak_tflops: float) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s over the peak (both in FLOP/s)."""
    if peak_tflops <= 0:
        raise ValueError(f"peak must be positive, got {peak_tflops} TFLOP/s")
    return tokens_per_s * flops_per_token / (peak_tflops * 1e12)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _empty_cache() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _seconds(fn: Callable[[], object], reps: int) -> float:
    """Wall seconds of ``reps`` calls, CUDA-synchronised (the kernels done, not just queued)."""
    _sync()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    _sync()
    return time.perf_counter() - start


def measured_tflops(
    device: torch.device, dtype: torch.dtype = torch.bfloat16, n: int = 8192, reps: int = 10
) -> float:
    """A dense matmul rate (the peak where the card is not in the table, and on the CPU)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    _seconds(lambda: a @ b, 3)
    return 2 * n**3 * reps / _seconds(lambda: a @ b, reps) / 1e12


def run_cuda_tests() -> dict[str, Any]:
    """``pytest -m cuda`` over every test directory (the root pyproject's ``testpaths``); exit
    status and the summary line."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240)
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    # 5: no test selected (none marked cuda): a failure of this check, not a pass
    return {"status": done.returncode, "ok": done.returncode == 0, "summary": lines[-1:] or [""]}


def _build(name: str, device: torch.device) -> Any:
    """Preset ``name`` with random weights, initialised on ``device`` (fast, no host copy)."""
    torch.manual_seed(0)
    with device:
        model: nn.Module = build_preset(name)
    return model


@dataclass
class TrainFigure:
    tokens_per_s: float
    flops_per_token: float
    mfu: float
    loss: float


def train_preset(
    name: str, device: torch.device, args: argparse.Namespace, peak_tflops: float
) -> TrainFigure:
    """A few AdamW steps of preset ``name`` on random tokens, bf16-autocast on CUDA and fp32
    elsewhere (any device; the figures mean something on CUDA)."""
    model = _build(name, device).train()
    config = TrainConfig(lr=3e-4, grad_clip=1.0)
    optimizer = build_optimizer(model, config)  # fused on CUDA
    params = [p for p in model.parameters() if p.requires_grad]
    vocab = int(model.config.vocab_size)
    tokens = torch.randint(0, vocab, (args.batch, args.seq_len), device=device)
    losses: list[torch.Tensor] = []

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = model(tokens)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        losses.append(loss.detach())

    _seconds(step, args.warmup)
    seconds = _seconds(step, args.steps)
    tokens_per_s = args.steps * args.batch * args.seq_len / seconds
    K = int(getattr(model, "chunk_size", 1))
    per_token = costs.flops_per_token(
        name, context=costs.causal_context(args.seq_len // K), training=True
    )
    achieved = mfu(tokens_per_s, per_token, peak_tflops)
    return TrainFigure(tokens_per_s, per_token, achieved, float(losses[-1]))


def _generate(
    model: Any, calm: bool, prompts: torch.Tensor, gen: torch.Generator, new: int
) -> None:
    with torch.no_grad():
        if calm:  # T=1: one head sample per step
            model.generate(prompts, new, 1.0, generator=gen, stop_at_eos=False)
        else:  # greedy, as the CPU benchmarks time it
            model.generate(prompts, new, 0.0, stop_at_eos=False)


def time_generation(name: str, device: torch.device, args: argparse.Namespace) -> dict[int, float]:
    """Generated tokens/s at batch 1 and 8 (fp32 weights, KV cache; any device)."""
    model = _build(name, device).eval()
    vocab = int(model.config.vocab_size)
    calm = isinstance(model, CALM)
    out: dict[int, float] = {}
    for batch in (1, 8):
        prompts = torch.randint(0, vocab, (batch, args.prompt), device=device)
        gen = torch.Generator(device=device).manual_seed(0)

        call = partial(_generate, model, calm, prompts, gen)
        _seconds(partial(call, 8), 1)  # warm-up: kernels, allocator
        out[batch] = batch * args.new_tokens / _seconds(partial(call, args.new_tokens), 1)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    if args.device == "cpu":
        device = torch.device("cpu")
        name, table_peak = "cpu", None
        peak = measured_tflops(device, torch.float32, n=1024, reps=3)
        source = "measured fp32 matmul"
    else:
        try:
            device = require_cuda()
        except NoCudaError as exc:
            print(f"gpu check: {exc}", file=sys.stderr)
            return 2
        name = torch.cuda.get_device_name(device)
        table_peak = lookup(PEAK_BF16_TFLOPS, name)
        peak = table_peak if table_peak is not None else measured_tflops(device)
        source = "table" if table_peak is not None else "measured bf16 matmul"
    bandwidth = lookup(MEMORY_GBPS, name)
    result: dict[str, Any] = {
        "device": name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "peak_tflops": peak,
        "peak_source": source,
        "memory_gbps": bandwidth,
        "train": {"batch": args.batch, "seq_len": args.seq_len, "steps": args.steps},
    }
    if args.skip_tests or device.type != "cuda":
        result["tests"] = {"skipped": True}
    else:
        result["tests"] = run_cuda_tests()
    for preset in args.presets.split(","):
        key = preset.replace("-", "_")
        fig = train_preset(preset, device, args, peak)
        result["train"][key] = {
            "tokens_per_s": fig.tokens_per_s,
            "mfu": fig.mfu,
            "flops_per_token": fig.flops_per_token,
            "loss": fig.loss,
        }
        _empty_cache()
        gen = time_generation(preset, device, args)
        _empty_cache()
        weights = costs.decode_weights_per_token(preset) * 4  # fp32 bytes per token
        result.setdefault("gen_tok_s", {}).update({f"{key}_b{b}": v for b, v in gen.items()})
        read = gen[1] * weights / 1e9
        result.setdefault("gen_weight_read_gbps_b1", {})[key] = read
        if bandwidth:
            result.setdefault("gen_weight_read_frac_b1", {})[key] = read / bandwidth
    result["wall_s"] = time.perf_counter() - started
    line = json.dumps(result, sort_keys=True)
    print(line)
    if args.json:
        Path(args.json).write_text(line + "\n")
    tests_ok = bool(result["tests"].get("ok", True))
    return 0 if tests_ok else 1


if __name__ == "__main__":
    sys.exit(main())
