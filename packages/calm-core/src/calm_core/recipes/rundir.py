"""Output directories of the recipes (and the ``calm`` verbs that write one): refuse to mix a new
run into an old one's files, before any work starts.

The refusals name the options by their command-line spelling (``--overwrite``, ``--resume``);
the recipe functions take the same names as keyword arguments (``overwrite=True``,
``resume=True``).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from calm_core.runlock import LOCK_NAME
from calm_core.training.checkpoint import latest_checkpoint

__all__ = ["RUN_OUTPUTS", "OutputDirError", "prepare_output_dir"]

#: what a training run writes at its end (its checkpoints are replaced by the trainer itself)
RUN_OUTPUTS = ("config.json", "model.safetensors", "reconstruction.json")


class OutputDirError(ValueError):
    """An output directory that cannot take this run (occupied, not writable, nothing to resume)."""


def prepare_output_dir(
    path: str | Path, *, overwrite: bool, resume: bool = False, resumable: bool = False
) -> Path:
    """Create an output directory; refuse a non-empty one unless ``overwrite`` or ``resume``.

    ``resumable`` runs (the trainers) mention ``--resume`` in the refusal; ``resume`` into a
    non-empty directory needs a checkpoint there to continue from, or nothing would be resumed
    and the directory's files silently replaced. ``overwrite`` of a resumable run removes the old
    model files first, so a run cut short cannot leave the old model loadable as the new one.
    """
    p = Path(path)
    if int(os.environ.get("RANK", "0")) != 0:
        # under torchrun only rank 0 checks: the others would see rank 0's files and probes
        p.mkdir(parents=True, exist_ok=True)
        return p
    if p.exists() and not p.is_dir():
        raise OutputDirError(f"output path {p} exists and is not a directory")
    if overwrite and resume:
        raise OutputDirError(
            "--resume continues the run in the output directory and --overwrite starts it over; "
            "pass one of them"
        )
    # the run's own lock (calm_core.runlock, taken before this check) is not an output
    occupied = p.is_dir() and any(c.name != LOCK_NAME for c in p.iterdir())
    if occupied and not (overwrite or resume):
        hint = " (or --resume to continue a run)" if resumable else ""
        raise OutputDirError(
            f"output directory {p} is not empty; pass --overwrite to replace its contents{hint}"
        )
    if resume and occupied and latest_checkpoint(p / "checkpoints") is None:
        raise OutputDirError(
            f"--resume: {p} holds no checkpoint to continue from; drop --resume for a new "
            "run in an empty directory, or pass --overwrite to replace its contents"
        )
    try:
        p.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=p, prefix=".calm-write-test-"):
            pass
        if overwrite and resumable:
            for name in RUN_OUTPUTS:
                (p / name).unlink(missing_ok=True)
    except OSError as exc:
        raise OutputDirError(
            f"output directory {p} is not writable: {exc.strerror or exc}"
        ) from None
    return p
