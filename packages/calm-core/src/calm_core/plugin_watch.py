"""A message for a plugin that takes long to import (issue 23), instead of a silent block.

:func:`slow_import_notice` wraps the import of one entry point: when it has not finished after
``CALM_PLUGIN_SLOW_SECONDS`` seconds (default :data:`DEFAULT_SLOW_SECONDS`), a warning naming the
entry point and its distribution is logged (logger ``calm_core.registry``; with no logging
configured, Python prints warnings to stderr), and when it finishes, how long it took. The import
itself is never interrupted: a plugin may legitimately be slow (a large native extension).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator

__all__ = ["DEFAULT_SLOW_SECONDS", "SLOW_ENV", "slow_import_notice", "slow_seconds"]

#: seconds an entry point may take to import before a warning names it
DEFAULT_SLOW_SECONDS = 5.0
#: environment variable overriding :data:`DEFAULT_SLOW_SECONDS` (0 disables the warning)
SLOW_ENV = "CALM_PLUGIN_SLOW_SECONDS"

log = logging.getLogger("calm_core.registry")


def slow_seconds() -> float:
    """The threshold from :data:`SLOW_ENV` (the default when unset or not a number)."""
    try:
        return float(os.environ.get(SLOW_ENV, DEFAULT_SLOW_SECONDS))
    except ValueError:
        return DEFAULT_SLOW_SECONDS


@contextlib.contextmanager
def slow_import_notice(what: str, provider: str) -> Iterator[None]:
    """Log a warning if the ``with`` block (importing the entry point ``what`` of ``provider``)
    is still running after :func:`slow_seconds`."""
    limit = slow_seconds()
    if limit <= 0:
        yield
        return
    start = time.monotonic()
    fired = threading.Event()

    def warn() -> None:
        fired.set()
        log.warning(
            "still importing the plugin entry point %s (from %s) after %.0f s; set "
            "CALM_DISABLE_PLUGINS=1 to skip third-party plugins if it hangs",
            what, provider, limit,
        )  # fmt: skip

    timer = threading.Timer(limit, warn)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        if fired.is_set():
            log.warning(
                "the plugin entry point %s took %.1f s to import", what, time.monotonic() - start
            )
