"""Head behaviour beyond the conformance suite: sampling cost, schedules, configs, init."""

from __future__ import annotations

import math

import pytest
import torch
from calm_core.config import ConfigError
from calm_core.interfaces import GenerativeHead, LatentPosterior
from calm_core.registry import heads
from calm_heads.diffusion import DiffusionHead
from calm_heads.diffusion_schedule import DiffusionSchedule, named_betas, space_timesteps
from calm_heads.energy import EnergyHead
from calm_heads.flow import FlowHead

H, D, N = 16, 4, 5


def _build(name: str, **config: object) -> GenerativeHead:
    torch.manual_seed(0)
    return heads.build({"name": name, "config": config}, hidden_size=H, latent_size=D)


def _count_calls(module: torch.nn.Module, head: GenerativeHead, num_samples: int) -> list[int]:
    """Rows seen by each call of ``module`` while ``head`` draws ``num_samples`` samples."""
    rows: list[int] = []

    def hook(_m: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        rows.append(int(args[0].shape[:-1].numel()))

    handle = module.register_forward_pre_hook(hook)
    with torch.no_grad():
        out = head.sample(torch.randn(N, H), num_samples=num_samples)
    handle.remove()
    assert out.shape == (num_samples, N, D)
    return rows


@pytest.mark.parametrize(
    ("name", "config", "expected"),
    [
        ("energy", {}, 1),
        ("flow", {"steps": 10}, 20),
        ("flow", {"steps": 7, "solver": "euler"}, 7),
        ("flow", {"steps": 3, "solver": "midpoint"}, 6),
        ("diffusion", {"train_steps": 1000, "sampling_steps": 100}, 100),
        ("diffusion", {"train_steps": 200, "sampling_steps": 25}, 25),
    ],
)
def test_sampling_cost_is_what_the_config_says(
    name: str, config: dict[str, object], expected: int
) -> None:
    head = _build(name, num_blocks=1, **config)
    assert head.network_calls_per_sample == expected
    # the whole network runs exactly `expected` times, each on all samples of all positions
    module = head.out_mlp if isinstance(head, EnergyHead) else head.net  # type: ignore[union-attr]
    rows = _count_calls(module, head, num_samples=3)
    assert rows == [3 * N] * expected


def test_default_configs_match_spec() -> None:
    energy = _build("energy")
    assert isinstance(energy, EnergyHead)
    cfg = energy.config
    assert (cfg.noise_size, cfg.num_blocks, cfg.num_samples, cfg.num_target_samples, cfg.alpha) == (
        64,
        4,
        8,
        100,
        1.0,
    )
    diffusion = _build("diffusion")
    assert isinstance(diffusion, DiffusionHead)
    assert diffusion.config.train_steps == 1000 and diffusion.config.sampling_steps == 100
    assert diffusion.config.schedule == "cosine" and diffusion.config.num_target_samples == 8
    flow = _build("flow")
    assert isinstance(flow, FlowHead)
    assert (flow.config.steps, flow.config.solver, flow.config.num_target_samples) == (
        10,
        "midpoint",
        8,
    )


def test_untrained_energy_head_outputs_zero() -> None:
    """The generator's last Linear starts at zero (SPEC §4)."""
    head = _build("energy", noise_size=8, num_blocks=2)
    with torch.no_grad():
        out = head.sample(torch.randn(N, H), num_samples=4)
    assert torch.equal(out, torch.zeros_like(out))


def test_energy_head_loss_matches_explicit_computation() -> None:
    """loss() = energy_loss(generate(noise)) with the same random draws."""
    from calm_heads.energy_score import energy_loss

    head = _build("energy", noise_size=8, num_blocks=2, num_samples=4, num_target_samples=10)
    assert isinstance(head, EnergyHead)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(0.1 * torch.randn_like(p))
    hidden = torch.randn(N, H)
    target = LatentPosterior(torch.randn(N, D), 0.5 * torch.ones(N, D))
    torch.manual_seed(11)
    got = head.loss(hidden, target)
    torch.manual_seed(11)
    noise = torch.rand(4, N, 8) - 0.5
    eps = torch.randn(N, 10, D).transpose(0, 1)
    want = energy_loss(head.generate(hidden, noise), target.mean, target.std, target_eps=eps)
    torch.testing.assert_close(got, want)


def test_energy_generate_shares_condition_across_samples() -> None:
    """Splitting the first block Linear equals the concatenated form [LN(x), c] @ W^T + b."""
    head = _build("energy", noise_size=8, num_blocks=1)
    assert isinstance(head, EnergyHead)
    block = head.blocks[0]
    x, c = torch.randn(3, N, H), torch.randn(N, H)
    split = block.mlp[0](torch.cat([block.norm(x), c.expand(3, N, H)], dim=-1))
    fused = torch.nn.functional.linear(block.norm(x), block.mlp[0].weight[:, :H])
    torch.testing.assert_close(fused + block.condition_term(c), split)


# -------------------------------------------------------------------------------- diffusion maths
def test_cosine_schedule_and_respacing() -> None:
    sched = DiffusionSchedule.named("cosine", 1000)
    abar = sched.alphas_cumprod

    def f(s: float) -> float:
        return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

    for i in (0, 10, 500, 998):
        assert abar[i].item() == pytest.approx(f((i + 1) / 1000) / f(0), rel=1e-9)
    assert bool((abar[1:] < abar[:-1]).all())
    short = sched.respaced(100)
    assert short.num_steps == 100
    kept = short.timestep_map
    assert kept[0] == 0 and kept[-1] == 999 and kept == space_timesteps(1000, 100)
    # respacing keeps the noise level of every kept timestep
    torch.testing.assert_close(short.alphas_cumprod, abar[kept], rtol=1e-9, atol=0)
    # respacing to every step is the identity
    torch.testing.assert_close(sched.respaced(1000).alphas_cumprod, abar, rtol=1e-9, atol=0)


def test_vb_is_zero_for_the_true_reverse_process() -> None:
    """With the true noise and the posterior variance (v = -1), KL(q || p) = 0 and mse = 0."""
    head = _build("diffusion", num_blocks=1, train_steps=100, sampling_steps=10)
    assert isinstance(head, DiffusionHead)
    sched = head.train_schedule
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(6, D, generator=gen, dtype=torch.float64)
    noise = torch.randn(6, D, generator=gen, dtype=torch.float64)
    t = torch.tensor([1, 5, 20, 50, 90, 99])
    xt = sched.q_sample(x0, t, noise)
    vb = sched.vb_bits(noise, -torch.ones_like(noise), x0, xt, t)
    assert vb.abs().max() < 1e-9
    # a wrong noise prediction costs a positive KL
    assert bool((sched.vb_bits(noise + 0.1, -torch.ones_like(noise), x0, xt, t) > 0).all())
    # t = 0 uses the discretised decoder likelihood: near-certain for an exact mean
    t0 = torch.zeros(6, dtype=torch.long)
    xt0 = sched.q_sample(x0.clamp(-0.9, 0.9), t0, noise)
    nll = sched.vb_bits(noise, -torch.ones_like(noise), x0.clamp(-0.9, 0.9), xt0, t0)
    assert bool((nll >= 0).all()) and bool(torch.isfinite(nll).all())


def test_diffusion_sampler_follows_dtype_of_inputs() -> None:
    head = _build("diffusion", num_blocks=1, train_steps=20, sampling_steps=4).double()
    out = head.sample(torch.randn(N, H, dtype=torch.float64), 2)
    assert out.dtype == torch.float64
    head = head.to(torch.bfloat16)
    out = head.sample(torch.randn(N, H, dtype=torch.bfloat16), 2)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_diffusion_exposes_respaced_timesteps() -> None:
    head = _build("diffusion", num_blocks=1, train_steps=1000, sampling_steps=50)
    assert isinstance(head, DiffusionHead)
    assert len(head.sampling_timesteps) == 50 and head.sampling_timesteps[-1] == 999


def test_diffusion_with_one_sampling_step_draws_finite_samples() -> None:
    head = _build("diffusion", num_blocks=1, train_steps=50, sampling_steps=1)
    assert isinstance(head, DiffusionHead) and head.sampling_timesteps == [49]
    gen = torch.Generator().manual_seed(0)
    out = head.sample(torch.randn(N, H, generator=gen), 3, generator=gen)
    assert out.shape == (3, N, D) and bool(torch.isfinite(out).all())


def test_linear_schedule_needs_enough_steps_to_keep_signal() -> None:
    # the linear end point 0.02 * 1000 / T reaches 1 (alpha-bar 0, NaN samples) at T = 20
    sched = DiffusionSchedule.named("linear", 21)
    assert float(sched.alphas_cumprod[-1]) > 0
    with pytest.raises(ValueError, match="linear schedule needs at least 21 steps"):
        named_betas("linear", 20)
    with pytest.raises(ConfigError, match=r"train_steps >= 21 .*schedule='cosine'"):
        _build("diffusion", train_steps=20, sampling_steps=2, schedule="linear")
    head = _build("diffusion", num_blocks=1, train_steps=21, sampling_steps=2, schedule="linear")
    gen = torch.Generator().manual_seed(1)
    hidden = torch.randn(N, H, generator=gen)
    target = LatentPosterior(torch.randn(N, D, generator=gen), torch.full((N, D), 0.1))
    assert bool(torch.isfinite(head.loss(hidden, target)).all())
    assert bool(torch.isfinite(head.sample(hidden, 2, generator=gen)).all())


def test_a_beta_of_one_is_refused() -> None:
    with pytest.raises(ValueError, match=r"values in \(0, 1\); a beta of 1 leaves no signal"):
        DiffusionSchedule(torch.tensor([0.1, 1.0], dtype=torch.float64))


def test_flow_euler_integrates_a_constant_field_exactly() -> None:
    """With a zero-initialised net (v = 0) samples are the initial noise; with v = c they move c."""
    head = _build("flow", num_blocks=1, steps=4, solver="euler")
    assert isinstance(head, FlowHead)
    x = torch.randn(N, D)
    with torch.no_grad():
        assert torch.equal(head.integrate(x, torch.randn(N, H)), x)
        head.net.final_layer.linear.bias.fill_(0.5)
        torch.testing.assert_close(head.integrate(x, torch.randn(N, H)), x + 0.5)


@pytest.mark.parametrize(
    ("name", "config", "message"),
    [
        ("diffusion", {"train_steps": 50, "sampling_steps": 100}, "cannot exceed train_steps"),
        ("diffusion", {"schedule": "sigmoid"}, "schedule"),
        ("flow", {"solver": "rk4"}, "solver"),
        ("flow", {"steps": 0}, "steps"),
        ("energy", {"noise_dim": 3}, "noise_size"),
    ],
)
def test_bad_configs_are_refused_with_the_field(
    name: str, config: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        heads.build({"name": name, "config": config}, hidden_size=H, latent_size=D)


@pytest.mark.parametrize("name", ["energy", "diffusion", "flow"])
def test_bad_hidden_shape_is_refused(name: str) -> None:
    head = _build(name, num_blocks=1)
    with pytest.raises(ValueError, match="flatten batch and positions"):
        head.sample(torch.randn(2, N, H))
    with pytest.raises(ValueError, match="target posterior"):
        head.loss(torch.randn(N, H), LatentPosterior(torch.zeros(N, D + 1), torch.ones(N, D + 1)))


def test_energy_generate_accepts_repeated_hidden_only() -> None:
    head = _build("energy", noise_size=8, num_blocks=1)
    assert isinstance(head, EnergyHead)
    hidden, noise = torch.randn(N, H), torch.rand(3, N, 8) - 0.5
    with torch.no_grad():
        flat = head.generate(hidden, noise)
        torch.testing.assert_close(head.generate(hidden.expand(3, N, H), noise), flat)
    with pytest.raises(ValueError, match="repeat one"):
        head.generate(torch.randn(3, N, H), noise)
