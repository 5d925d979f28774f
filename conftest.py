"""Test configuration for every test directory of the repository (the root pyproject's
``testpaths``)."""

from __future__ import annotations

import pytest

# The conformance suites (calm_core.testing) skip their CUDA checks where no GPU is present. They
# cannot carry this project's `cuda` marker themselves (a plugin's --strict-markers would refuse an
# unknown marker), so it is added here: `pytest -m cuda` (benchmarks/gpu.py) runs them too.
CUDA_CONFORMANCE_TESTS = frozenset({"test_device_follows_the_module"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if getattr(item, "originalname", item.name) in CUDA_CONFORMANCE_TESTS:
            item.add_marker(pytest.mark.cuda)
