"""Compose a CALM in code: a codec, a backbone and a head built by hand, trained, then sampled.

Everything here is public API; nothing reads files. The data is a toy language of 16 four-token
"words" visited in a fixed stride, so a tiny model learns it in seconds:

1. build the codec through the codec registry and train it briefly (reconstruction + clipped KL);
2. build a CALM around the frozen codec with a backbone config and a head chosen by name;
3. train the backbone and head with the energy loss for a few steps;
4. save the model directory, load it back and generate a continuation.

Run from the repository root::

    python examples/compose_in_code.py --steps 300 --head energy

Sizes are deliberately tiny (the script runs in seconds on a laptop CPU); the numbers it prints
mean nothing beyond "it learns".
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from calm_core.backbone import BackboneConfig
from calm_core.calm import CALM
from calm_core.interfaces import Codec
from calm_core.model_dir import load_pretrained
from calm_core.registry import codecs

__all__ = ["build_codec", "build_model", "main", "toy_batch", "train_codec", "train_model"]

VOCAB = 32
K = 4


#: the toy language's 16 "words", each a fixed chunk of K tokens
WORDS = torch.randint(1, VOCAB, (16, K), generator=torch.Generator().manual_seed(1234))


def toy_batch(batch: int, chunks: int, generator: torch.Generator) -> torch.Tensor:
    """Token ids ``[batch, chunks * K]`` of the toy language.

    A row is a walk over the 16 words: it starts at a random word and moves by a fixed stride
    (1 or 3, chosen per row), so the next word depends on the previous two.
    """
    start = torch.randint(0, 16, (batch, 1), generator=generator)
    stride = 1 + 2 * torch.randint(0, 2, (batch, 1), generator=generator)
    index = (start + stride * torch.arange(chunks)) % 16  # [batch, chunks]
    return WORDS[index].reshape(batch, chunks * K)


def build_codec() -> Codec:
    """The robust chunk autoencoder at a tiny size, built by its registered name."""
    return codecs.build(
        {
            "name": "autoencoder",
            "config": {
                "vocab_size": VOCAB,
                "chunk_size": K,
                "latent_size": 8,
                "hidden_size": 48,
                "intermediate_size": 96,
            },
        }
    )


def train_codec(codec: Codec, steps: int, generator: torch.Generator) -> float:
    """A few AdamW steps on the codec's own objective; returns the last loss."""
    opt = torch.optim.AdamW(codec.parameters(), lr=3e-3)
    codec.train()
    loss = torch.tensor(0.0)
    for _ in range(steps):
        opt.zero_grad()
        loss = codec.loss(toy_batch(16, 8, generator))["loss"]
        loss.backward()
        opt.step()
    codec.eval()
    return loss.item()


def build_model(codec: Codec, head: str) -> CALM:
    """A CALM around the (frozen) codec: backbone shape by config, head by registered name."""
    backbone = BackboneConfig.model_validate(
        {
            "hidden_size": 48,
            "intermediate_size": 96,
            "num_layers": 2,
            "num_heads": 4,
            "max_positions": 64,
        }
    )
    head_config = {"energy": {"noise_size": 8, "num_blocks": 1, "num_target_samples": 32}}
    return CALM.from_codec(
        codec,
        backbone=backbone,
        head={"name": head, "config": head_config.get(head, {})},
        pad_id=0,
    )


def train_model(model: CALM, steps: int, generator: torch.Generator) -> list[float]:
    """Plain training loop: only parameters with ``requires_grad`` (not the codec) are optimised."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-3, betas=(0.9, 0.95), weight_decay=0.1)
    model.train()
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = model(toy_batch(8, 8, generator))["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
    return losses


def main(argv: list[str] | None = None) -> int:
    """Run the whole example; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="CALM training steps")
    parser.add_argument("--codec-steps", type=int, default=80, help="codec training steps")
    parser.add_argument("--head", default="energy", help="registered head name")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="save the model here (default: a temp dir)")
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    codec = build_codec()
    codec_loss = train_codec(codec, args.codec_steps, gen)
    check = toy_batch(64, 4, gen)
    with torch.no_grad():
        recon = codec.decode_tokens(codec.encode(check).mean).reshape(check.shape)
    print(
        f"codec: {sum(p.numel() for p in codec.parameters())} parameters, loss {codec_loss:.3f}, "
        f"reconstruction {(recon == check).float().mean().item():.1%}"
    )

    model = build_model(codec, args.head)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"CALM with head {args.head!r}: {trainable} trainable parameters (codec frozen)")
    losses = train_model(model, args.steps, gen)
    print(f"loss: first {losses[0]:.3f}, last {losses[-1]:.3f}")

    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / "model"
        model.save_pretrained(out)
        loaded = load_pretrained(out)
        assert isinstance(loaded, CALM)
        walks = toy_batch(16, 4, gen)  # prompt: the first two words; truth: the next two
        new = loaded.generate(walks[:, : 2 * K], max_new_tokens=2 * K, generator=gen)
        correct = (new == walks[:, 2 * K :]).all(dim=1).float().mean().item()
        print(f"prompt {walks[0, : 2 * K].tolist()} -> {new[0].tolist()}")
        print(f"continuations exactly right: {correct:.0%} of {len(walks)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
