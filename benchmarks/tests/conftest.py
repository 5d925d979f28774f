"""The harness runs as scripts (``python benchmarks/run.py``), not as an installed package: make
``benchmarks`` importable from the repository root for its tests."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
