"""Test helpers for plugin authors: conformance suites every head and codec must pass."""

from calm_core.testing.conformance import CodecConformance, HeadConformance, perturb_parameters

__all__ = ["CodecConformance", "HeadConformance", "perturb_parameters"]
