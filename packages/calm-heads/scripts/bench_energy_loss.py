"""Scratch benchmark: the energy loss and generator against naive forms (not a test).

Sizes follow the shared benchmark configuration (BENCHMARKS.md "bench"): 8 x 512 tokens at K=4
give 8 x 127 = 1016 predicted positions, D=64, N=8 model samples, M=100 target draws, width 256,
2 generator blocks, noise 32, fp32, 2 threads. Each figure is the median of repeated
forward+backward calls after a warm-up.

    python packages/calm-heads/scripts/bench_energy_loss.py [--positions 1016] [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from calm_heads.energy import EnergyHead, EnergyHeadConfig
from calm_heads.energy_score import energy_loss, energy_loss_naive


def _median_seconds(fn: Callable[[], None], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--positions", type=int, default=1016)
    parser.add_argument("--latent", type=int, default=64)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    p, d, n, m = args.positions, args.latent, 8, 100
    gen = torch.Generator().manual_seed(0)
    samples = torch.randn(n, p, d, generator=gen).requires_grad_(True)
    mean = torch.randn(p, d, generator=gen)
    std = 0.1 + torch.rand(p, d, generator=gen)
    eps = torch.randn(m, p, d, generator=gen)

    def fast() -> None:
        samples.grad = None
        energy_loss(samples, mean, std, target_eps=eps).sum().backward()

    def fast_drawn() -> None:
        samples.grad = None
        energy_loss(samples, mean, std, num_target_samples=m).sum().backward()

    def naive() -> None:
        samples.grad = None
        energy_loss_naive(samples, mean, std, eps).sum().backward()

    with torch.no_grad():
        a = energy_loss(samples, mean, std, target_eps=eps)
        b = energy_loss_naive(samples, mean, std, eps)
    t_fast, t_drawn, t_naive = (_median_seconds(f, args.repeats) for f in (fast, fast_drawn, naive))
    print(f"energy loss fwd+bwd, P={p} N={n} M={m} D={d}:")
    print(f"  naive (materialises N x M x P x D): {1e3 * t_naive:8.2f} ms")
    for label, t in (("explicit eps", t_fast), ("drawing eps itself", t_drawn)):
        print(f"  ours, {label:28s}  {1e3 * t:8.2f} ms  ({t_naive / t:.1f}x faster)")
    print(f"  max |ours - naive| = {(a - b).abs().max().item():.2e}")
    print(
        f"  largest temporary: naive {n * m * p * d * 4 / 2**20:.0f} MiB, "
        f"ours {p * n * m * 4 / 2**20:.1f} MiB distances + {p * m * d * 4 / 2**20:.0f} MiB draws"
    )

    head = EnergyHead(
        EnergyHeadConfig(noise_size=32, num_blocks=2), hidden_size=args.width, latent_size=d
    )
    torch.nn.init.normal_(head.out_mlp[2].weight, std=0.02)
    hidden = torch.randn(p, args.width, generator=gen)
    noise = torch.rand(n, p, 32, generator=gen) - 0.5

    def gen_ours() -> None:
        head.zero_grad()
        head.generate(hidden, noise).sum().backward()

    def gen_repeated() -> None:
        # The reference layout: the hidden state repeated N times through every layer.
        head.zero_grad()
        h = hidden.unsqueeze(0).expand(n, p, args.width)
        c = head.hidden_norm(head.hidden_proj(h))
        x = head.noise_norm(head.noise_proj(noise))
        for block in head.blocks:
            r = block.mlp(torch.cat([block.norm(x), c], dim=-1))
            g, u = r.chunk(2, dim=-1)
            x = x + block.down(torch.nn.functional.silu(g) * u)
        head.out_mlp(head.out_norm(x)).sum().backward()

    t_ours, t_rep = (_median_seconds(f, args.repeats) for f in (gen_ours, gen_repeated))
    print(f"generator fwd+bwd, {n} samples x {p} positions, width {args.width}, 2 blocks:")
    print(f"  hidden repeated N times: {1e3 * t_rep:8.2f} ms")
    print(f"  ours (condition once):   {1e3 * t_ours:8.2f} ms  ({t_rep / t_ours:.2f}x)")


if __name__ == "__main__":
    main()
