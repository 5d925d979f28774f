"""Importing calm_core scans nothing and imports no plugin module; names() imports none either."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = r"""
import json, sys
import calm_core
after_import = sorted(m for m in sys.modules if m.startswith(("calm_heads", "calm_codecs", "acme")))
torch_loaded = "torch" in sys.modules
from calm_core.registry import heads, codecs
scanned_before = heads._entries is not None or codecs._entries is not None
names = heads.names() + codecs.names()
after_names = sorted(m for m in sys.modules if m.startswith(("calm_heads", "calm_codecs", "acme")))
print(json.dumps({"after_import": after_import, "torch": torch_loaded, "scanned": scanned_before,
                  "after_names": after_names, "names": names}))
"""


def test_import_and_names_import_no_plugin_module() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True
    ).stdout
    data = json.loads(out.strip().splitlines()[-1])
    assert data["after_import"] == []
    assert data["torch"] is False, "importing calm_core should not even import torch"
    assert data["scanned"] is False, "importing the registry must not scan entry points"
    assert data["after_names"] == [], "names() must read metadata only"
