"""Process-level tuning for CPU work: let glibc malloc keep and reuse large freed buffers.

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
import sys

__all__ = ["tune_malloc"]

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
