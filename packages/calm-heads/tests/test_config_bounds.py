"""Config bounds are visible in the JSON schema, and the diffusion head's optional x0 clip."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from calm_core.cli import main
from calm_core.config import ConfigError
from calm_core.registry import heads
from calm_core.testing import perturb_parameters


def _plugin_schemas(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    assert main(["plugins", "--json"]) == 0
    return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]


def test_energy_alpha_bounds_are_in_the_plugins_json_schema(
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = _plugin_schemas(capsys)
    alpha = out["heads"]["energy"]["config_schema"]["properties"]["alpha"]
    assert alpha["exclusiveMinimum"] == 0 and alpha["exclusiveMaximum"] == 2
    clip = out["heads"]["diffusion"]["config_schema"]["properties"]["clip_x0"]
    assert {"type": "number", "exclusiveMinimum": 0} in clip["anyOf"]
    assert clip["default"] is None


def test_every_numeric_field_of_the_builtins_states_a_bound(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Every int/float field of a built-in head or codec shows its lower bound in the schema
    (bounds that depend on another field, e.g. ``mask_token < vocab_size``, stay validators)."""
    out = _plugin_schemas(capsys)
    keys = ("minimum", "exclusiveMinimum")
    unbounded = []
    for group in ("heads", "codecs"):
        for name, info in out[group].items():
            if info["distribution"] not in ("calm-heads", "calm-codecs"):
                continue
            for field, prop in info["config_schema"]["properties"].items():
                options = prop.get("anyOf", [prop])
                numeric = [o for o in options if o.get("type") in ("integer", "number")]
                if numeric and not all(any(k in o for k in keys) for o in numeric):
                    unbounded.append(f"{name}.{field}")
    assert unbounded == []


def test_alpha_error_still_says_why() -> None:
    with pytest.raises(ConfigError, match="a = 2 scores only the mean"):
        heads.build({"name": "energy", "config": {"alpha": 2}}, hidden_size=8, latent_size=4)
    with pytest.raises(ConfigError, match="alpha"):
        heads.build({"name": "energy", "config": {"alpha": "wide"}}, hidden_size=8, latent_size=4)


def _diffusion_samples(clip_x0: float | None) -> torch.Tensor:
    torch.manual_seed(0)
    config = {"num_blocks": 2, "sampling_steps": 20, "clip_x0": clip_x0}
    head = heads.build({"name": "diffusion", "config": config}, hidden_size=16, latent_size=8)
    perturb_parameters(head)  # an untrained denoiser: its noise predictions are off
    hidden = torch.randn(32, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return head.sample(hidden, 4, torch.Generator().manual_seed(2))


def test_clip_x0_bounds_diffusion_samples() -> None:
    free = _diffusion_samples(None)
    clipped = _diffusion_samples(3.0)
    # the last reverse step returns the (clamped) predicted x0 itself: no noise is added at t=0
    assert float(free.abs().max()) > 100.0, "the unclipped sampler no longer explodes here"
    assert float(clipped.abs().max()) <= 3.0
    assert torch.isfinite(clipped).all() and float(clipped.std()) > 0.1


def test_clip_x0_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="clip_x0"):
        heads.build({"name": "diffusion", "config": {"clip_x0": 0}}, hidden_size=8, latent_size=4)
