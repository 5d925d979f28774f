"""Timing primitives: warm-up + median of repetitions, fp32 GEMM throughput, machine description.

What is unusual: every figure is the *median* of >= 3 timed repetitions taken after untimed
warm-up calls, because the machines this runs on are shared and a single call can be 1.6x off.
The fp32 matmul throughput is measured in the same process, with the same thread count, so that
achieved FLOP/s can be expressed as a fraction of what this machine delivered at that moment.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = [
    "Measurement",
    "cpu_model",
    "gemm_call",
    "machine_info",
    "matmul_gflops",
    "measure",
    "measure_interleaved",
    "paired_speedup",
    "set_threads",
]


@dataclass(frozen=True)
class Measurement:
    """Seconds per call of one figure: the median and every repetition, in order.

    Attributes:
        seconds: median of ``reps`` (the figure).
        reps: each timed repetition, seconds.
        warmup: untimed calls made before the first timed one.
    """

    seconds: float
    reps: list[float] = field(default_factory=list)
    warmup: int = 0

    @property
    def spread(self) -> float:
        """max / min of the repetitions: how noisy this figure was (1.0 = perfectly stable)."""
        lo = min(self.reps)
        return max(self.reps) / lo if lo > 0 else float("inf")

    def as_dict(self) -> dict[str, Any]:
        return {"median_s": self.seconds, "reps_s": self.reps, "warmup": self.warmup}


def measure(fn: Callable[[], object], *, reps: int = 3, warmup: int = 1) -> Measurement:
    """Call ``fn`` ``warmup`` times untimed, then ``reps`` times timed; report the median.

    Args:
        fn: the work of one repetition; its result is discarded.
        reps: timed repetitions (at least 3, the benchmark rule).
        warmup: untimed calls first (allocator, lazy init, optimizer state, caches).

    Raises:
        ValueError: fewer than 3 repetitions or a negative warm-up.
    """
    return measure_interleaved({"": fn}, reps=reps, warmup=warmup)[""]


def measure_interleaved(
    fns: dict[str, Callable[[], object]], *, reps: int = 3, warmup: int = 1
) -> dict[str, Measurement]:
    """:func:`measure` for figures whose *ratio* matters: repetition ``r`` of every figure runs
    before repetition ``r + 1`` of any, so a drift of the shared machine's speed (it moves within
    a minute) slows all of them alike instead of one figure of the ratio.

    Args:
        fns: figure name -> the work of one repetition; called in this order within a round.
        reps: timed rounds (at least 3, the benchmark rule).
        warmup: untimed rounds first.

    Returns:
        figure name -> its :class:`Measurement` (median of its ``reps`` timings).
    """
    if reps < 3:
        raise ValueError(f"the benchmark rule is a median of >= 3 repetitions, got reps={reps}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: Measurement(statistics.median(t), t, warmup) for name, t in times.items()}


def paired_speedup(num: Measurement, den: Measurement) -> float:
    """How many times faster ``num`` ran than ``den`` (equal work per repetition), as the median
    over the rounds of :func:`measure_interleaved` of ``den``'s time over ``num``'s.

    Pairing by round cancels the shared machine's load, which moves within a round far less than
    between rounds (one quick run here timed the same AR call at 11.9 s and at 0.21 s).
    """
    if len(num.reps) != len(den.reps) or not num.reps:
        raise ValueError(
            f"paired figures need the same rounds, got {len(num.reps)} and {len(den.reps)}"
        )
    return statistics.median(d / n for n, d in zip(num.reps, den.reps, strict=True))


def set_threads(threads: int) -> int:
    """``torch.set_num_threads`` (intra-op) and report what torch actually uses."""
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
    return torch.get_num_threads()


def gemm_call(n: int = 1024) -> tuple[Callable[[], object], float]:
    """One fp32 ``[n, n] @ [n, n]`` product to time, and its FLOPs (``2 n^3``); timed
    interleaved with a figure, it gives the GEMM rate the machine delivered beside that figure."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen, dtype=torch.float32)
    b = torch.randn(n, n, generator=gen, dtype=torch.float32)
    out = torch.empty(n, n, dtype=torch.float32)
    return (lambda: torch.mm(a, b, out=out)), 2.0 * n**3


def matmul_gflops(n: int = 1024, *, reps: int = 5, warmup: int = 2) -> tuple[float, Measurement]:
    """Measured fp32 GEMM throughput: ``2 n^3`` FLOPs per ``[n, n] @ [n, n]``, median time.

    Returns:
        (GFLOP/s, the timing of one matmul).
    """
    call, flops = gemm_call(n)
    m = measure(call, reps=reps, warmup=warmup)
    return flops / m.seconds / 1e9, m


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (Linux), else what :mod:`platform` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _memory_gib() -> float | None:
    try:
        pages = os.sysconf("SC_PHYS_PAGES")
        size = os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
    return round(pages * size / 2**30, 1)


def machine_info() -> dict[str, Any]:
    """CPU model, logical cores, torch threads and version, Python, memory, load, UTC date."""
    try:
        load: list[float] | None = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "memory_gib": _memory_gib(),
        "load_average_at_start": load,
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }
