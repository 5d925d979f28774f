"""Every built-in head through the plugin contract (calm_core.testing.HeadConformance)."""

from __future__ import annotations

from typing import Any, ClassVar

from calm_core.testing import HeadConformance


class TestEnergyHeadConformance(HeadConformance):
    head_name = "energy"
    head_config: ClassVar[dict[str, Any]] = {
        "noise_size": 8,
        "num_blocks": 2,
        "num_samples": 4,
        "num_target_samples": 16,
    }


class TestDiffusionHeadConformance(HeadConformance):
    head_name = "diffusion"
    head_config: ClassVar[dict[str, Any]] = {
        "num_blocks": 2,
        "train_steps": 50,
        "sampling_steps": 5,
        "num_target_samples": 2,
    }


class TestFlowHeadConformance(HeadConformance):
    head_name = "flow"
    head_config: ClassVar[dict[str, Any]] = {"num_blocks": 2, "steps": 3, "num_target_samples": 2}


class TestFlowEulerHeadConformance(HeadConformance):
    head_name = "flow"
    head_config: ClassVar[dict[str, Any]] = {"num_blocks": 1, "steps": 4, "solver": "euler"}
