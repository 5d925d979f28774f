"""A real learning test: a tiny codec trained briefly on corpus text reconstructs held-out text.

Byte-level tokens of the bundled WikiText articles (training on slices of some articles, scoring
on an article never trained on), K=4, a few hundred AdamW steps: seconds on a CPU.
"""

from __future__ import annotations

import numpy as np
import torch
from calm_codecs import AutoencoderConfig, ChunkAutoencoder
from calm_core.corpus import load_bundled_corpus
from calm_core.data import Tokenizer
from calm_core.metrics.reconstruction import reconstruction_report

K = 4


def _packed(texts: list[str], tok: Tokenizer) -> torch.Tensor:
    ids: list[int] = []
    for text in texts:
        doc = [*tok.encode(text), tok.eos_id]
        ids += doc + [tok.pad_id] * (-len(doc) % K)
    return torch.tensor(ids, dtype=torch.long)


def test_tiny_codec_learns_to_reconstruct_held_out_text() -> None:
    torch.manual_seed(0)
    docs = load_bundled_corpus()
    tok = Tokenizer.byte_level()
    train = _packed([d.text[:6000] for d in docs[:20]], tok).view(-1, K)
    held_out = _packed([docs[-1].text[:4000]], tok)
    config = AutoencoderConfig(
        vocab_size=tok.vocab_size,
        chunk_size=K,
        latent_size=16,
        hidden_size=64,
        intermediate_size=128,
    )
    model = ChunkAutoencoder(config)
    before = reconstruction_report(model, held_out, noise_stds=[0.3], ignore_id=tok.pad_id)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3, betas=(0.9, 0.95), weight_decay=0.0)
    gen = torch.Generator().manual_seed(0)
    steps = 200
    model.train()
    for step in range(steps):
        for group in opt.param_groups:  # linear decay: the last steps polish
            group["lr"] = 5e-3 * (1 - 0.9 * step / steps)
        batch = train[torch.randint(0, train.shape[0], (128,), generator=gen)]
        loss = model.loss(batch, generator=gen)["loss"]
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    after = reconstruction_report(model, held_out, noise_stds=[0.3], ignore_id=tok.pad_id)
    # chance: the most frequent byte of the held-out text
    counts = np.bincount(held_out.numpy(), minlength=tok.vocab_size)
    majority = counts.max() / counts.sum()
    assert before.token_accuracy < 2 * majority
    assert after.token_accuracy > 0.45, after.format()
    assert after.token_accuracy > 2.5 * majority, (majority, after.format())
    assert after.chunk_accuracy > 0.05, after.format()
    assert after.noisy_token_accuracy[0.3] > 1.5 * majority, after.format()
    assert after.collapsed_dims < config.latent_size
