"""The run-directory lock: one writer per output directory.

A trainer (``calm train``, ``calm train-codec``, ``calm demo``, the recipes ``train_model`` /
``train_codec``) takes ``<out>/.calm.lock`` before it writes anything else there and removes it
when it ends, also on an exception or Ctrl-C. The file holds JSON: the pid, the host, the start
time and the command. A second run on the same directory is refused with a message naming them.

What is unusual: the lock is created with ``O_CREAT | O_EXCL`` (atomic on local filesystems and
NFSv3+), not ``flock``, so it also works across hosts sharing a filesystem and survives a
``kill -9`` as evidence. A lock whose process is gone (same host, pid not running) is *stale*: it
is reported with the command that clears it, never taken over silently, because a run killed
mid-save may have left files that deserve a look (``--resume`` continues from its last complete
checkpoint once the lock is removed). Under ``torchrun`` only rank 0 takes the lock; the other
ranks write only inside rank 0's checkpoint directories, after rank 0 holds it.

``calm train`` holds the lock around its output-directory check, and
:meth:`calm_core.recipes.Recipe.run` takes it again with ``reentrant=True`` (so a Python program
that runs a recipe directly is covered too): that inner hold is a no-op when this process holds
the lock already.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["LOCK_NAME", "RunLockError", "lock_info", "run_lock"]

#: the lock file inside a run directory (hidden, so it never counts as a run's output)
LOCK_NAME = ".calm.lock"

#: run directories whose lock this process holds (resolved paths), for the re-entrant holds
_HELD: set[Path] = set()


class RunLockError(RuntimeError):
    """The run directory is in use by another run, or holds the stale lock of a dead one."""


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


def lock_info(path: str | Path) -> dict[str, Any] | None:
    """The JSON held by the lock of run directory ``path`` (None: no lock; ``{}``: unreadable)."""
    lock = Path(path) / LOCK_NAME
    try:
        text = lock.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return data if isinstance(data, dict) else {}


def _refusal(out: Path, info: dict[str, Any]) -> RunLockError:
    lock = out / LOCK_NAME
    pid = info.get("pid")
    host = info.get("host", "?")
    started = info.get("started", "?")
    command = info.get("command", "?")
    who = f"pid {pid} on host {host}, started {started}: {command}"
    clear = f"rm {shlex.quote(str(lock))}"
    if host == socket.gethostname() and isinstance(pid, int) and not _pid_alive(pid):
        return RunLockError(
            f"{out} holds the stale lock of a run that is no longer running ({who}); check the "
            f"directory, then clear the lock with `{clear}` and run again (--resume continues "
            "from its last checkpoint)"
        )
    if not info:
        return RunLockError(
            f"{out} is locked by {lock}, which is unreadable; if no run is using the directory, "
            f"clear it with `{clear}`"
        )
    return RunLockError(
        f"{out} is in use by another run ({who}); wait for it to finish or stop it, or pass "
        f"another --out. If that process is gone, clear the lock with `{clear}`"
    )


@contextlib.contextmanager
def run_lock(
    out: str | Path, *, command: str | None = None, reentrant: bool = False
) -> Iterator[Path]:
    """Hold the lock of run directory ``out`` (created if missing) for the ``with`` block.

    ``reentrant``: when this process holds the lock already (an outer ``with run_lock``), go on
    under that hold instead of refusing.

    Raises:
        RunLockError: another run holds it (live or stale), named with its pid and host.
    """
    p = Path(out)
    if int(os.environ.get("RANK", "0")) != 0:  # torchrun: rank 0 holds it for the job
        yield p
        return
    key = p.resolve()
    if reentrant and key in _HELD:
        yield p
        return
    lock = p / LOCK_NAME
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": command or shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }
    try:
        p.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        if not p.is_dir():  # a file in the way: the output-directory check says so
            yield p
            return
        raise _refusal(p, lock_info(p) or {}) from None
    except OSError:  # not writable: nothing can be written there, and the caller says so
        yield p
        return
    try:
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(info, fh)
        except BaseException:  # e.g. a full disk: leave no empty lock behind
            lock.unlink(missing_ok=True)
            raise
        _HELD.add(key)
        yield p
    finally:
        _HELD.discard(key)
        # only our own lock: never remove one another run wrote after ours was cleared by hand
        if lock_info(p) == info:
            lock.unlink(missing_ok=True)
