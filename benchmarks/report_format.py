"""Number and table formatting shared by the benchmark report's modules."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["fmt", "md_table"]


def fmt(x: float | None, digits: int = 3) -> str:
    """A number for a table cell: ``digits`` significant digits, scientific when tiny or huge,
    thousands separated, and an em dash for a missing or non-finite value."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    if x != 0 and (abs(x) >= 1e5 or abs(x) < 1e-3):
        return f"{x:.{digits - 1}e}"
    return f"{x:,.{digits}g}" if abs(x) < 1000 else f"{x:,.0f}"


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A Markdown table (and the blank line after it) as lines."""
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return [*out, ""]
