"""Checks of a model directory before and after its weights are read (issue 23).

Before anything real is allocated, :func:`read_header` parses the safetensors header of
``model.safetensors`` itself (a regular file, a sane header, every tensor inside the file) and
:func:`check_against_header` compares it with the model that ``config.json`` describes, built on
the ``meta`` device (:func:`meta_build`: no memory, no time): the same tensor names, shapes and a
floating dtype where the model has one. So an edited config cannot allocate gigabytes or hang,
and a FIFO or a device in place of the weights is refused without being opened. After loading,
:func:`check_finite` refuses NaN or infinite weights (one pass over the tensors, cheap next to
reading them).

What is unusual: the checks raise :class:`ModelCheckError`, which :mod:`calm_core.model_dir`
turns into its ``ModelLoadError`` naming the directory (this module does not import it, so the
model directory code can import this one).
"""

from __future__ import annotations

import json
import os
import stat
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from calm_core.runtime import available_memory

__all__ = [
    "MAX_HEADER_BYTES",
    "ModelCheckError",
    "TensorEntry",
    "check_against_header",
    "check_finite",
    "check_memory",
    "meta_build",
    "read_header",
]

#: a safetensors header larger than this is refused (the format's own limit is 100 MB)
MAX_HEADER_BYTES = 100_000_000

_ITEMSIZE = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2,
    "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip


class ModelCheckError(ValueError):
    """A model directory whose config and weights do not agree, or whose weights are unusable."""


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a safetensors header."""

    dtype: str
    shape: tuple[int, ...]

    @property
    def is_float(self) -> bool:
        return self.dtype.startswith(("F", "BF"))


def read_header(path: Path) -> tuple[dict[str, TensorEntry], dict[str, str]]:
    """The tensors (name -> dtype, shape) and metadata of a safetensors file, checked against
    the file's size; the file is opened only when it is a regular file."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ModelCheckError(f"weights file {path.name} does not exist") from None
    except OSError as exc:
        raise ModelCheckError(f"weights file {path.name} cannot be read ({exc})") from None
    if not stat.S_ISREG(st.st_mode):
        raise ModelCheckError(
            f"{path.name} is not a regular file (a FIFO, device or socket); replace it with the "
            "saved weights"
        )
    size = st.st_size
    corrupt = f"weights file {path.name} is corrupted or truncated"
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise ModelCheckError(f"{corrupt} ({size} bytes); re-save or re-download it")
        (n,) = struct.unpack("<Q", head)
        if n > min(MAX_HEADER_BYTES, size - 8):
            raise ModelCheckError(
                f"{corrupt} (header of {n} bytes in a {size}-byte file); re-save or re-download it"
            )
        raw = fh.read(n)
    try:
        header = json.loads(raw)
        if not isinstance(header, dict):
            raise ValueError("not an object")
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelCheckError(f"{corrupt} (unreadable header: {exc}); re-save it") from None
    meta = header.pop("__metadata__", None) or {}
    data_bytes = size - 8 - n
    out: dict[str, TensorEntry] = {}
    for name, entry in header.items():
        try:
            dtype = str(entry["dtype"])
            shape = tuple(int(s) for s in entry["shape"])
            start, end = (int(o) for o in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise ModelCheckError(f"{corrupt} (tensor '{name}' is malformed); re-save it") from None
        numel = 1
        for s in shape:
            numel *= s
        if dtype not in _ITEMSIZE or min(shape, default=0) < 0:
            raise ModelCheckError(f"{corrupt} (tensor '{name}': dtype {dtype}, shape {shape})")
        if not 0 <= start <= end <= data_bytes or end - start != numel * _ITEMSIZE[dtype]:
            raise ModelCheckError(
                f"{corrupt} (tensor '{name}' lies outside the file); re-save or re-download it"
            )
        out[str(name)] = TensorEntry(dtype, shape)
    return out, {str(k): str(v) for k, v in dict(meta).items()}


def meta_build(
    build: Callable[[], nn.Module], *, passthrough: tuple[type[BaseException], ...] = ()
) -> nn.Module:
    """``build()`` on the ``meta`` device: the model's tensors without memory. A config that
    cannot be built (a missing key, a wrong type, a negative size) is a :class:`ModelCheckError`;
    exceptions of the ``passthrough`` types (e.g. a component that is not installed) propagate."""
    try:
        with torch.device("meta"):
            return build()
    except passthrough:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError) as exc:
        what = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc).split("\n")[0]
        raise ModelCheckError(
            f"config.json does not describe a model this library can build ({what}); fix the "
            "field or save the model again"
        ) from None


def check_memory(model: nn.Module) -> None:
    """Refuse a model whose parameters and buffers (as built on ``meta``) exceed the memory
    available to this process."""
    need = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    free = available_memory()
    if free is not None and need > free:
        raise ModelCheckError(
            f"config.json describes a model of {need / 2**30:.1f} GiB, more than the "
            f"{free / 2**30:.1f} GiB of memory available; the config's sizes are wrong or the "
            "model needs a larger machine"
        )


def check_against_header(
    model: nn.Module,
    header: Mapping[str, TensorEntry],
    aliases: Mapping[str, str],
    where: str = "the weights file",
) -> None:
    """The model's state (names, shapes, floating dtypes) is exactly what the header of the
    weights file ``where`` holds."""
    expected = model.state_dict()
    stored = set(header) | set(aliases)
    missing = [k for k in expected if k not in stored]
    extra = [k for k in stored if k not in expected]
    if missing or extra:
        bad = f"lacks tensor '{missing[0]}'" if missing else f"has an unknown tensor '{extra[0]}'"
        more = len(missing) + len(extra) - 1
        raise ModelCheckError(
            f"{where} {bad}{f' (and {more} more)' if more else ''}: config.json does "
            "not match the weights; restore the config that was saved with them"
        )
    for name, ref in expected.items():
        entry = header.get(aliases.get(name, name))
        if entry is None:
            continue  # an alias of a missing tensor: loading names it
        if entry.shape != tuple(ref.shape):
            raise ModelCheckError(
                f"tensor '{name}' has shape {entry.shape} in {where} but config.json expects "
                f"{tuple(ref.shape)}; restore the config that was saved with these weights"
            )
        if ref.is_floating_point() and not entry.is_float:
            raise ModelCheckError(
                f"tensor '{name}' is stored as {entry.dtype}, not a floating-point type; the "
                "weights file was not written by calm, re-save it from the model"
            )


def check_finite(state: Mapping[str, torch.Tensor]) -> None:
    """Every floating tensor of ``state`` is finite (NaN or inf weights are refused)."""
    for name, t in state.items():
        if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise ModelCheckError(
                f"tensor '{name}' holds {bad} NaN or infinite values; these weights are broken "
                "(a diverged run?): retrain, or load an earlier checkpoint"
            )
