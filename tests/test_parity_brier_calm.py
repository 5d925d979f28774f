"""CALM BrierLM estimator vs the reference implementation, end to end on converted models.

* ``energy_*`` fixtures: the eval-mode Brier of the main forward, with the first two stored
  generator draws (``gen_uniform``) fed to the energy head (K >= 4: the within-chunk formula;
  K < 4: the rollout branch, when the reference made no extra generator call).
* ``brier_*`` fixtures with ``ar_uniform_*`` tensors: the K < 4 rollout branch with the stored
  draws of every extra generator call. The reference calls the generator start by start (start
  outer, step inner); ours rolls all starts out at once, so the call order is recovered by a
  fixed-point iteration over which (start, step) pairs were rolled out.
"""

from __future__ import annotations

import math
import re
from typing import Any

import pytest
import torch
from calm_core.calm import CALM
from calm_core.metrics.brier_calm import calm_brier_scores
from calm_core.reference import calm_from_reference
from calm_core.testing.fixtures import Fixture, fixture_names, load_fixture, require_fixture

RTOL, ATOL = 1e-5, 1e-6


def _calm(energy: Fixture, overrides: dict[str, torch.Tensor] | None = None) -> CALM:
    ae = load_fixture(energy.meta["ae_fixture"])
    state = energy.params("calm.")
    state.update({"ae_model." + k: v for k, v in ae.params("ae.").items()})
    state.update(overrides or {})
    return calm_from_reference(
        state, energy.meta["calm_config"], codec_config=ae.meta["ae_config"]
    ).eval()


def _main_draw(model: CALM, uniform: torch.Tensor) -> Any:
    """Step-0 head draws from the stored uniforms (first two samples); None at later steps."""

    def head_sample(hidden: torch.Tensor, step: int, starts: torch.Tensor) -> torch.Tensor:
        assert step == 0, "this fixture recorded no rollout draws"
        return model.head.generate(hidden, uniform[:2] - 0.5)  # type: ignore[operator]

    return head_sample


ENERGY = [n for n in fixture_names("energy_")] or ["energy_k4"]


@pytest.mark.parametrize("name", ENERGY)
def test_parity_calm_brier_energy_main_forward(name: str) -> None:
    fx = require_fixture(name)
    if "eval_brier" not in fx.tensors:
        pytest.skip(f"{name} records no eval_brier")
    if int(fx.meta.get("eval_brier_extra_rand_draws") or 0) > 0:
        pytest.skip(f"{name}: the reference rolled out with draws that were not stored")
    model = _calm(fx)
    t = fx.tensors
    tokens = t["input_ids"]
    K = model.chunk_size

    def run(m: CALM) -> torch.Tensor:
        r = calm_brier_scores(
            m, tokens, head_sample=_main_draw(m, t["gen_uniform"]), reference_starts=True
        )
        return r.scores.mean(dim=(0, 1))

    torch.testing.assert_close(run(model), t["eval_brier"], rtol=RTOL, atol=ATOL)
    if K >= 4 and "eval_brier_pred1" in t:  # the decoded samples themselves
        pred = _decoded_samples(model, tokens, t["gen_uniform"])
        assert torch.equal(pred[0], t["eval_brier_pred1"])
        assert torch.equal(pred[1], t["eval_brier_pred2"])
    # perturbing a weight breaks parity (K >= 4: the decoded samples, which random weights and
    # random targets leave nearly without hits)
    with torch.no_grad():
        model.embed_proj[0].weight.mul_(3.0)
    if K >= 4:
        pred = _decoded_samples(model, tokens, t["gen_uniform"])
        assert not torch.equal(pred[0], t["eval_brier_pred1"])
    else:
        assert not torch.allclose(run(model), t["eval_brier"], rtol=RTOL, atol=ATOL)


def _decoded_samples(model: CALM, tokens: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """The two decoded head samples ``[2, B, L-1, K]`` from the stored uniforms."""
    K = model.chunk_size
    hidden = model.hidden_states(tokens[:, :-K])
    latents = model.head.generate(hidden.reshape(-1, hidden.shape[-1]), uniform[:2] - 0.5)  # type: ignore[operator]
    return model.codec.decode_tokens(latents).view(2, tokens.shape[0], -1, K)


def _rollout_fixtures() -> list[str]:
    names = [n for n in fixture_names("brier_") if n != "brier_k4_formula"]
    return names or ["brier_k2_ar"]


def _energy_source(fx: Fixture) -> str:
    m = re.search(r"fixture (energy_\w+)", str(fx.meta.get("weights", "")))
    if m is None:
        pytest.skip(f"{fx.name}: cannot tell which energy fixture holds its weights")
    return m.group(1)


def _run_with_stored_draws(model: CALM, fx: Fixture, tokens: torch.Tensor) -> Any:
    t = fx.tensors
    uniforms = [t[k] for k in sorted(t) if k.startswith("ar_uniform_")]
    B = tokens.shape[0]
    order: list[tuple[int, int]] | None = None
    for _ in range(8):  # converges in at most ceil(4/K) passes
        index = {pair: k for k, pair in enumerate(order or [])}
        rolled: list[tuple[int, int]] = []

        def head_sample(
            hidden: torch.Tensor,
            step: int,
            starts: torch.Tensor,
            index: dict[tuple[int, int], int] = index,
            rolled: list[tuple[int, int]] = rolled,
        ) -> torch.Tensor:
            if step == 0:
                noise = t["main_uniform"][:2] - 0.5
            else:
                S = len(starts)
                rolled.extend((int(i), step) for i in starts)
                cols = []
                for b in range(B):
                    for i in starts.tolist():
                        k = index.get((i, step))
                        cols.append(
                            uniforms[k][:, b, 0]
                            if k is not None and k < len(uniforms)
                            else torch.full_like(uniforms[0][:, 0, 0], 0.5)
                        )
                noise = torch.stack(cols, dim=1) - 0.5
                assert noise.shape[1] == B * S
            return model.head.generate(hidden, noise)  # type: ignore[operator]

        result = calm_brier_scores(model, tokens, head_sample=head_sample, reference_starts=True)
        new_order = sorted(rolled)  # reference order: start outer, step inner
        if new_order == order:
            return result, order
        order = new_order
    raise AssertionError("the rollout call order did not converge")


@pytest.mark.parametrize("name", _rollout_fixtures())
def test_parity_calm_brier_rollout_with_stored_draws(name: str) -> None:
    fx = require_fixture(name)
    if not any(k.startswith("ar_uniform_") for k in fx.tensors):
        pytest.skip(f"{name} has no stored rollout draws")
    energy = require_fixture(_energy_source(fx))
    overrides = {k[len("calm.") :]: v for k, v in fx.tensors.items() if k.startswith("calm.")}
    model = _calm(energy, overrides)
    tokens = fx.tensors["input_ids"]
    result, order = _run_with_stored_draws(model, fx, tokens)
    assert len(order) == int(fx.meta.get("ar_uniform_count", len(order)))
    assert len(order) > 0, "the fixture is meant to exercise the rollout"
    assert math.ceil(4 / model.chunk_size) > 1
    torch.testing.assert_close(
        result.scores.mean(dim=(0, 1)), fx.tensors["brier"], rtol=RTOL, atol=ATOL
    )
    # perturbing a backbone weight must break parity
    with torch.no_grad():
        model.backbone.layers[0].self_attn.v_proj.weight.mul_(-2.0)
    bad, _ = _run_with_stored_draws(model, fx, tokens)
    assert not torch.allclose(
        bad.scores.mean(dim=(0, 1)), fx.tensors["brier"], rtol=RTOL, atol=ATOL
    )
