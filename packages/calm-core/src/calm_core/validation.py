"""One validation pass over what a run, an evaluation or a generation will use (issue 23).

Every check here runs before any work starts and raises the library's own input errors
(:class:`~calm_core.config.ConfigError` for settings, :class:`~calm_core.data.packing.DataError`
for data), which the CLI reports as one-line usage errors (exit status 2). Model directories are
checked by :mod:`calm_core.model_checks`.

The documented bounds:

* every float of a config is finite (an ``inf`` learning rate, weight decay or epsilon, a NaN
  anywhere), and the codec's evaluation noise stds are >= 0;
* ``--threads`` lies in ``[1, MAX_THREADS_PER_CPU * os.cpu_count()]``;
* a batch must fit in memory: the logits a step materialises (``LOGITS_COPIES`` float32 copies of
  ``[tokens, vocab]``) are compared with the memory available now (``MemAvailable``), so an absurd
  ``--batch-size``, ``--seq-len`` or ``--num-candidates`` is refused instead of killed or
  segfaulted. The estimate is a lower bound: a batch it passes can still be too large, one it
  refuses never fits;
* a data split's index is consistent (K > 0, ids of EOS/PAD inside the vocabulary, document
  offsets increasing from 0 inside the token file) and every token id is below the vocabulary,
  scanned in chunks of ``SCAN_CHUNK`` tokens when the split is opened.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
from pydantic import BaseModel

from calm_core.config import ConfigError
from calm_core.data.packing import DataError
from calm_core.runtime import available_memory

__all__ = [
    "LOGITS_COPIES",
    "MAX_THREADS_PER_CPU",
    "SCAN_CHUNK",
    "check_batch_memory",
    "check_finite_config",
    "check_noise_stds",
    "check_packed_split",
    "check_run_config",
    "check_threads",
    "check_train_memory",
    "max_threads",
]

#: ``--threads`` may be at most this many per CPU core of the machine
MAX_THREADS_PER_CPU = 4
#: float32 copies of a step's ``[tokens, vocab]`` logits counted by the memory estimate
LOGITS_COPIES = 2
#: token ids checked per chunk when a data split is opened
SCAN_CHUNK = 1 << 22


def max_threads() -> int:
    """The largest ``--threads`` accepted on this machine."""
    return MAX_THREADS_PER_CPU * (os.cpu_count() or 1)


def _floats(value: Any, path: str) -> list[tuple[str, float]]:
    if isinstance(value, float):
        return [(path, value)]
    if isinstance(value, dict):
        return [f for k, v in value.items() for f in _floats(v, f"{path}.{k}" if path else k)]
    if isinstance(value, list | tuple):
        return [f for i, v in enumerate(value) for f in _floats(v, f"{path}[{i}]")]
    return []


def check_finite_config(config: BaseModel | dict[str, Any], what: str = "config") -> None:
    """Refuse a NaN or infinite float anywhere in ``config`` (naming its field path)."""
    data = config.model_dump(mode="python") if isinstance(config, BaseModel) else config
    bad = [(p, v) for p, v in _floats(data, "") if not math.isfinite(v)]
    if bad:
        path, value = bad[0]
        raise ConfigError(
            f"{what}: {path} = {value} is not a finite number; give a finite value "
            "(a learning rate, weight decay or epsilon of inf or NaN can only diverge)",
            [(p, "not finite") for p, _ in bad],
        )


def check_threads(threads: int | None, flag: str = "threads") -> None:
    """``threads`` in ``[1, max_threads()]`` (None: torch's default)."""
    if threads is None:
        return
    top = max_threads()
    if not 1 <= threads <= top:
        raise ConfigError(
            f"{flag} = {threads} is out of range: use 1 to {top} ({MAX_THREADS_PER_CPU} per CPU "
            f"core of this machine, which has {os.cpu_count()})"
        )


def check_batch_memory(tokens: int, vocab_size: int, what: str, fix: str) -> None:
    """Refuse a step whose ``[tokens, vocab]`` logits alone exceed the available memory."""
    need = LOGITS_COPIES * 4 * max(0, tokens) * max(1, vocab_size)
    free = available_memory()
    if free is not None and need > free:
        raise ConfigError(
            f"{what} needs at least {need / 2**30:.1f} GiB for its logits ({tokens} tokens x "
            f"{vocab_size} vocabulary), more than the {free / 2**30:.1f} GiB available; {fix}"
        )


def check_run_config(config: Any) -> None:
    """A training recipe's config (``TrainModelConfig`` / ``TrainCodecConfig``): finite
    numbers, thread count, evaluation settings (checked now, not after the last step)."""
    check_finite_config(config)
    train = config.train
    check_threads(train.num_threads, "train.num_threads (--threads)")
    check_noise_stds(getattr(config, "noise_stds", None) or [], "noise_stds")


def check_noise_stds(stds: list[float], what: str = "--noise") -> None:
    """The reconstruction report's latent noise stds: finite and >= 0."""
    for i, std in enumerate(stds):
        if not (math.isfinite(std) and std >= 0):
            raise ConfigError(
                f"{what}[{i}] = {std}: a noise std must be a finite number >= 0 (it scales the "
                "latent noise of the reconstruction report)"
            )


def check_train_memory(config: Any, vocab_size: int) -> None:
    """The memory of one micro-batch's logits against the memory available (see the bounds)."""
    train = config.train
    micro = max(1, train.batch_size // train.grad_accum_steps)
    check_batch_memory(
        micro * train.seq_len, vocab_size, "one training step",
        "lower --batch-size or --seq-len, or raise train.grad_accum_steps",
    )  # fmt: skip


def check_packed_split(tokens: np.ndarray, index: dict[str, Any], split: str, where: str) -> None:
    """Index consistency and token ids of one opened split (raises :class:`DataError`)."""
    fix = "the data directory is corrupt; re-run `calm tokenize`"
    try:
        vocab, k = int(index["vocab_size"]), int(index["chunk_size"])
        eos, pad = int(index["eos_id"]), int(index["pad_id"])
        info = index["splits"][split]
        offsets = np.asarray([int(o) for o in info["doc_offsets"]], dtype=np.int64)
        num_docs = int(info["num_documents"])
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{where}: index.json is malformed ({exc!r}); {fix}") from None
    if k <= 0 or vocab <= 0:
        raise DataError(f"{where}: index.json has chunk_size={k}, vocab_size={vocab}; {fix}")
    if not (0 <= eos < vocab and 0 <= pad < vocab):
        raise DataError(f"{where}: EOS {eos} / PAD {pad} outside the vocabulary {vocab}; {fix}")
    n = len(tokens)
    if len(offsets) != num_docs or (num_docs and offsets[0] != 0):
        raise DataError(
            f"{where}: split {split!r} lists {len(offsets)} document offsets for {num_docs} "
            f"documents (the first must be 0); {fix}"
        )
    if num_docs and (np.any(np.diff(offsets) <= 0) or offsets[-1] >= n):
        raise DataError(
            f"{where}: split {split!r} has document offsets that do not increase inside its "
            f"{n} tokens; {fix}"
        )
    for start in range(0, n, SCAN_CHUNK):
        top = int(np.max(tokens[start : start + SCAN_CHUNK]))
        if top >= vocab:
            at = start + int(np.argmax(np.asarray(tokens[start : start + SCAN_CHUNK]) >= vocab))
            raise DataError(
                f"{where}: split {split!r} holds token id {top} (first bad at position {at}) but "
                f"the vocabulary has {vocab} ids; {fix}"
            )
