"""docs/errors.md states how many tests each fault class has: the table matches the suite."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
PAGE = HERE.parents[1] / "docs" / "errors.md"


def test_the_fault_table_counts_the_suite() -> None:
    rows = re.findall(r"^\|[^|\n]+\| `(test_\w+\.py)` \| (\d+) \|$", PAGE.read_text(), re.M)
    documented = {name: int(n) for name, n in rows}
    total = re.search(
        r"^\| \*\*total\*\* \| (\d+) files \| \*\*(\d+)\*\* \|$", PAGE.read_text(), re.M
    )
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", str(HERE)],
        capture_output=True, text=True, timeout=300, cwd=HERE.parents[1],
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ids = [line for line in proc.stdout.splitlines() if "::" in line]
    counts = Counter(Path(i.split("::", 1)[0]).name for i in ids)
    del counts[Path(__file__).name]  # this check is not a fault class
    assert documented == dict(counts)
    assert total is not None
    assert (int(total[1]), int(total[2])) == (len(counts), sum(counts.values()))
