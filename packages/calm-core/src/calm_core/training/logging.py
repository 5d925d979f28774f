"""Run logging: ``metrics.jsonl`` in the run directory and a progress display.

Every logged step appends one JSON object (``step``, ``loss``, the model's other metrics, lr,
grad norm, tokens/s); evaluations append ``eval/``-prefixed lines. On resume, lines past the
checkpoint's step are dropped first, so an interrupted-then-resumed run leaves the same file as an
uninterrupted one. On a terminal progress is a tqdm bar (loss, tokens/s, ETA); otherwise plain
lines go to stderr at each logged step.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, TextIO

__all__ = ["METRICS_FILE", "MetricsLog", "Progress", "read_metrics"]

METRICS_FILE = "metrics.jsonl"


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every JSON line of a run's ``metrics.jsonl`` (empty when it does not exist)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _parsable(path: Path) -> list[dict[str, Any]]:
    """The lines of ``path`` that parse (a crash or a full disk can leave a torn last line)."""
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


def _clean(value: Any) -> Any:
    # JSON has no NaN/inf; write them as strings so the file stays parseable
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricsLog:
    """Appends JSON lines to ``run_dir/metrics.jsonl`` (line-buffered, one write per record)."""

    def __init__(self, run_dir: Path, *, resume_step: int | None = None) -> None:
        self.path = run_dir / METRICS_FILE
        if resume_step is not None and self.path.is_file():
            kept = [r for r in _parsable(self.path) if int(r.get("step", 0)) <= resume_step]
            tmp = self.path.with_name(f".{METRICS_FILE}.tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
            tmp.replace(self.path)
        elif resume_step is None and self.path.is_file():
            self.path.unlink()
        self._fh: TextIO | None = self.path.open("a", encoding="utf-8", buffering=1)

    def write(self, record: dict[str, Any]) -> None:
        if self._fh is not None:
            self._fh.write(json.dumps({k: _clean(v) for k, v in record.items()}) + "\n")

    def close(self, *, quiet: bool = False) -> None:
        """Close the file; ``quiet`` drops an error while flushing (used while another error,
        e.g. a full disk, is already on its way up: that one is the one to report)."""
        fh, self._fh = self._fh, None
        if fh is not None:
            with contextlib.suppress(OSError) if quiet else contextlib.nullcontext():
                fh.close()


class Progress:
    """A tqdm bar on a terminal, plain lines otherwise; silent when ``enabled`` is False."""

    def __init__(self, total: int, initial: int, *, enabled: bool, stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        self.total = total
        self.enabled = enabled
        self.start = time.perf_counter()
        self.first_step = initial
        self._bar: Any = None
        if enabled and self.stream.isatty():
            from tqdm import tqdm

            self._bar = tqdm(
                total=total, initial=initial, file=self.stream, unit="step", dynamic_ncols=True
            )

    def update(self, step: int, record: dict[str, Any] | None) -> None:
        """Advance to ``step``; ``record`` (a logged step's metrics) refreshes the display."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(step - self._bar.n)
            if record is not None:
                self._bar.set_postfix(
                    loss=f"{record['loss']:.4f}", tok_s=f"{record.get('tokens_per_s', 0):.0f}"
                )
            return
        if record is None:
            return
        elapsed = time.perf_counter() - self.start
        done = step - self.first_step
        eta = elapsed / done * (self.total - step) if done > 0 else float("nan")
        print(
            f"step {step}/{self.total} loss {record['loss']:.4f} "
            f"lr {record.get('lr', 0.0):.3g} tok/s {record.get('tokens_per_s', 0.0):.0f} "
            f"eta {_fmt_time(eta)}",
            file=self.stream,
            flush=True,
        )

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _fmt_time(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(seconds)
    return (
        f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
    )
