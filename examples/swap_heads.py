"""Swap the generative head by configuration only: one model config, several heads.

A CALM config names its head as a spec, ``{"name": ..., "config": {...}}``. Changing that spec is
all it takes to train the same backbone and codec with another head: the built-in ``energy``,
``flow`` and ``diffusion`` heads, or a third-party one such as ``example.gaussian_energy`` from
``examples/calm-head-gaussian`` once it is installed. No code changes, no imports of the heads.

The script trains the toy codec of ``compose_in_code.py`` once, then, for each head, merges a head
override into one base config (as ``calm train --config`` would), builds the CALM, trains a few
steps and reports the loss, the parameters and the sampling cost. Run from the repository root::

    python examples/swap_heads.py --steps 30
    python examples/swap_heads.py --heads energy example.gaussian_energy --steps 30

The same switch from the command line is ``calm train ... --head flow``.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch
from calm_core.calm import CALM
from calm_core.config import merge_overrides
from calm_core.registry import heads
from compose_in_code import build_codec, toy_batch, train_codec, train_model

__all__ = ["BASE_CONFIG", "HEAD_OVERRIDES", "main", "model_config"]

#: one model config (JSON-able, like a ``--config`` file); only its "head" entry changes below
BASE_CONFIG: dict[str, Any] = {
    "backbone": {
        "hidden_size": 48,
        "intermediate_size": 96,
        "num_layers": 2,
        "num_heads": 4,
        "max_positions": 64,
    },
    "head": {"name": "energy", "config": {}},
    "pad_id": 0,
}

#: per-head settings sized for the toy model; a head not listed runs with its defaults
HEAD_OVERRIDES: dict[str, dict[str, Any]] = {
    "energy": {"noise_size": 8, "num_blocks": 1, "num_target_samples": 32},
    "flow": {"num_blocks": 1, "steps": 4},
    "diffusion": {"num_blocks": 1, "sampling_steps": 10},
    "example.gaussian_energy": {"num_components": 2, "num_target_samples": 32},
}


def model_config(head: str) -> dict[str, Any]:
    """``BASE_CONFIG`` with its head replaced: the only difference between the runs."""
    override = {"head": {"name": head, "config": HEAD_OVERRIDES.get(head, {})}}
    return merge_overrides({k: v for k, v in BASE_CONFIG.items() if k != "head"}, override)


def main(argv: list[str] | None = None) -> int:
    """Train the same model with each head; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_heads = [h for h in HEAD_OVERRIDES if h in heads.names()]
    parser.add_argument("--heads", nargs="+", default=default_heads, help="registered head names")
    parser.add_argument("--steps", type=int, default=100, help="training steps per head")
    parser.add_argument("--codec-steps", type=int, default=80, help="codec training steps")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    codec = build_codec()
    train_codec(codec, args.codec_steps, torch.Generator().manual_seed(args.seed))

    rows = []
    for name in args.heads:
        config = model_config(name)
        print(f"head spec: {json.dumps(config['head'])}")
        torch.manual_seed(args.seed)
        model = CALM(config, codec=codec)
        gen = torch.Generator().manual_seed(args.seed)  # same data order for every head
        start = time.perf_counter()
        losses = train_model(model, args.steps, gen)
        seconds = time.perf_counter() - start
        prompt = toy_batch(1, 2, gen)
        sample = model.generate(prompt, max_new_tokens=4, generator=gen)[0].tolist()
        rows.append(
            (
                name,
                heads.info(name).distribution,
                sum(p.numel() for p in model.head.parameters()),
                model.head.network_calls_per_sample,
                losses[0],
                losses[-1],
                seconds,
                sample,
            )
        )

    print(f"\n{'head':<26}{'provider':<20}{'params':>8}{'calls':>7}{'loss':>16}{'train s':>9}")
    for name, dist, params, calls, first, last, secs, sample in rows:
        loss = f"{first:.2f} -> {last:.2f}"
        print(f"{name:<26}{dist:<20}{params:>8}{calls:>7}{loss:>16}{secs:>9.1f}  {sample}")
    print("\n(losses of different heads are different objectives: compare each with itself)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
