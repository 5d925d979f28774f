"""Test helpers for plugin authors: conformance suites every head and codec must pass."""

import contextlib

# pytest explains a failed ``assert`` (the values compared) only in modules it rewrites: the
# suites live in this installed package, so ask for it before they are imported
with contextlib.suppress(ImportError):
    import pytest

    pytest.register_assert_rewrite("calm_core.testing.conformance")

from calm_core.testing.conformance import (
    CodecConformance,
    HeadConformance,
    perturb_parameters,
)

__all__ = ["CodecConformance", "HeadConformance", "perturb_parameters"]
