"""Process-level tuning for CPU work: let glibc malloc keep and reuse large freed buffers.

PyTorch allocates CPU tensors with ``malloc``. glibc serves blocks above its mmap threshold
(adaptive, 128 KiB to 32 MiB) with fresh ``mmap`` pages and unmaps them on ``free``, so the large
activations of every training step (the codec's ``[4096, 4096]`` logits are 64 MiB) are
page-faulted in again, step after step: on the 2-core benchmark machine that was ~29,000 minor page
faults and ~20% of a codec training step (a 64 MiB matmul output alone: 16,385 faults, 99 ms
instead of 65 ms). Raising the mmap and trim thresholds keeps freed memory
in the heap for the next step (the process's resident size stays at its peak instead).

This changes the whole process, so it is opt-in: the ``calm`` command line and the benchmarks call
:func:`tune_malloc`; programs using the library directly may call it once at start-up. Setting
``CALM_TUNE_MALLOC=0`` turns it off. It does nothing outside glibc (macOS, musl, Windows).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

import torch

__all__ = ["resolve_device", "tune_malloc"]

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: blocks up to this size come from the heap. glibc accepts it although its own adaptive threshold
#: stops at 32 MiB; the codec's logits (64 MiB) are above that and would still be mmapped afresh
MMAP_THRESHOLD = 1 << 30
#: the fallback where a C library refuses the larger value
MMAP_THRESHOLD_FALLBACK = 32 * 1024 * 1024
#: freed memory at the top of the heap is kept up to this size
TRIM_THRESHOLD = 1 << 40

_applied: bool | None = None


def tune_malloc() -> bool:
    """Raise glibc's mmap and trim thresholds; return whether the process is now tuned.

    Idempotent; returns False (and changes nothing) off Linux/glibc or with
    ``CALM_TUNE_MALLOC=0``.
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get("CALM_TUNE_MALLOC", "1").strip() in ("0", "false", "no", "off"):
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = int(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) == 1
    ok = ok or int(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_FALLBACK)) == 1
    # the trim threshold is an int in mallopt's signature: use the largest value that fits
    ok = int(mallopt(_M_TRIM_THRESHOLD, min(TRIM_THRESHOLD, 2**31 - 1))) == 1 and ok
    _applied = ok
    return ok


def _local_rank() -> int | None:
    """This process's LOCAL_RANK under torchrun (WORLD_SIZE > 1), else None."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return int(os.environ.get("LOCAL_RANK", "0"))
    return None


def resolve_device(spec: str | torch.device) -> torch.device:
    """The device a ``--device`` / ``device:`` value names.

    ``auto`` is the local rank's GPU under torchrun, else ``cuda:0`` when CUDA is available, else
    MPS, else the CPU; ``cuda`` alone is the local rank's GPU (``cuda:0`` outside torchrun).

    Raises:
        ValueError: an unknown name, or a device this machine does not have.
    """
    if isinstance(spec, torch.device):
        return spec
    name = spec.strip().lower()
    local = _local_rank()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local or 0)
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError("device 'mps' was asked for but MPS is not available; use cpu or auto")
        return torch.device("mps")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {spec!r} was asked for but CUDA is not available on this machine "
                "(torch.cuda.is_available() is False); use cpu or auto"
            )
        index = local or 0 if name == "cuda" else int(name.split(":", 1)[1])
        if index >= torch.cuda.device_count():
            raise ValueError(
                f"device {spec!r}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
        return torch.device("cuda", index)
    raise ValueError(f"unknown device {spec!r}; use auto, cpu, cuda, cuda:N or mps")
