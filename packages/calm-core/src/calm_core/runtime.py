"""Process-level settings: the device (:func:`resolve_device`) and glibc malloc tuning on CPU.

PyTorch allocates CPU tensors with ``malloc``. glibc serves blocks above its mmap threshold
(adaptive, 128 KiB to 32 MiB) with fresh ``mmap`` pages and unmaps them on ``free``, so the large
activations of every training step (the codec's ``[4096, 4096]`` logits are 64 MiB) are
page-faulted in again, step after step, a visible share of a small model's step on a CPU.
Raising the mmap and trim thresholds keeps freed memory in the heap for the next step (the
process's resident size stays at its peak instead).

This changes the whole process, so it is opt-in: the ``calm`` command line and the benchmarks call
:func:`tune_malloc`; programs using the library directly may call it once at start-up. Setting
``CALM_TUNE_MALLOC=0`` turns it off. It does nothing outside glibc (macOS, musl, Windows).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
import sys

import torch

from calm_core.config import ConfigError

__all__ = [
    "DEVICE_PATTERN",
    "DeviceError",
    "available_devices",
    "available_memory",
    "check_device_spec",
    "resolve_device",
    "tune_malloc",
]

#: the device specs calm accepts (``TrainConfig.device``, ``--device``)
DEVICE_PATTERN = r"^(auto|cpu|cuda|cuda:\d+|mps)$"


class DeviceError(ConfigError):
    """A device spec that is malformed or names a device this machine does not have."""


def available_devices() -> list[str]:
    """The devices torch can use here: ``cpu``, then ``cuda:0`` ... and ``mps`` where present."""
    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if _mps_available():
        found.append("mps")
    return found


def check_device_spec(spec: str | torch.device) -> str:
    """``spec`` normalised (``" CUDA:1"`` -> ``"cuda:1"``), or a :class:`DeviceError` when it is
    not one of auto, cpu, cuda, cuda:N, mps; whether the device exists is checked by
    :func:`resolve_device`."""
    text = str(spec).strip().lower()
    if not re.match(DEVICE_PATTERN, text):
        raise DeviceError(
            f"unknown device {str(spec)!r}; use auto, cpu, cuda, cuda:N or mps "
            f"(available here: {', '.join(available_devices())})"
        )
    return text


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """The ``torch.device`` that ``spec`` names on this machine.

    ``"auto"`` (and a bare ``"cuda"``) pick the local rank's CUDA device under ``torchrun``
    (``LOCAL_RANK``), else ``cuda:0``; ``"auto"`` falls back to MPS, then the CPU. An explicit
    device that is not available (``"cuda"`` without CUDA, ``"cuda:N"`` past the last GPU,
    ``"mps"`` off Apple silicon) raises :class:`DeviceError` listing what is available.
    """
    text = check_device_spec(spec)
    if text == "auto":
        if torch.cuda.is_available():
            return _cuda(None, text)
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "mps":
        if not _mps_available():
            raise DeviceError(
                "device 'mps' is not available (it needs Apple silicon and a torch built with "
                f"MPS); available here: {', '.join(available_devices())}"
            )
        return torch.device("mps")
    if not torch.cuda.is_available():
        raise DeviceError(
            f"device {text!r} is not available: torch {torch.__version__} sees no CUDA GPU "
            f"here; available: {', '.join(available_devices())} (use auto or cpu)"
        )
    return _cuda(int(text.split(":")[1]) if ":" in text else None, text)


def _cuda(index: int | None, spec: str) -> torch.device:
    count = torch.cuda.device_count()
    local = os.environ.get("LOCAL_RANK")
    if index is None:  # under torchrun each process takes the GPU of its local rank
        index = int(local) if local is not None and local.strip().isdigit() else 0
        why = f" (LOCAL_RANK={local})" if local is not None else ""
    else:
        why = ""
    if index >= count:
        have = ", ".join(f"cuda:{i}" for i in range(count)) or "none"
        raise DeviceError(
            f"device {spec!r} resolves to cuda:{index}{why}, but this machine has {count} CUDA "
            f"device(s): {have}; pick one of them, or start fewer processes per node"
        )
    return torch.device("cuda", index)


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


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


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation now (None where the OS does not say)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None
