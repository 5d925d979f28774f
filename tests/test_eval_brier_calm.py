"""The CALM BrierLM estimator on a real (tiny, random) CALM: batched rollouts are exact."""

from __future__ import annotations

import pytest
import torch
from calm_core.calm import CALM
from calm_core.metrics.brier import BrierAccumulator
from calm_core.metrics.brier_calm import calm_brier_scores
from calm_core.registry import codecs


def tiny_calm(K: int, seed: int = 0) -> CALM:
    torch.manual_seed(seed)
    codec = codecs.build(
        {
            "name": "autoencoder",
            "config": {
                "vocab_size": 9,
                "chunk_size": K,
                "latent_size": 4,
                "hidden_size": 16,
                "intermediate_size": 24,
            },
        }
    )
    backbone = {
        "hidden_size": 16,
        "intermediate_size": 24,
        "num_layers": 2,
        "num_heads": 2,
        "max_positions": 64,
    }
    head = {"name": "energy", "config": {"noise_size": 4, "num_blocks": 1}}
    model = CALM.from_codec(codec, backbone=backbone, head=head).eval()
    with torch.no_grad():  # the energy head's last layer starts at zero: give it some output
        for p in model.head.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.5)
    return model


@pytest.mark.parametrize("K", [1, 2])
def test_calm_rollout_matches_sequential_forward(K: int) -> None:
    """Each rolled-out hidden state equals a fresh forward over true prefix + fed chunks."""
    model = tiny_calm(K)
    gen = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, 9, (2, 7 * K), generator=gen)
    record: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def head_sample(hidden: torch.Tensor, step: int, starts: torch.Tensor) -> torch.Tensor:
        # both samples from the same noise: they always agree, so every start rolls out fully
        noise = torch.rand(1, hidden.shape[0], 4, generator=gen) - 0.5
        latents = model.head.generate(hidden, noise.expand(2, -1, -1))  # type: ignore[operator]
        record[step] = (hidden.clone(), starts.clone(), model.codec.decode_tokens(latents[0]))
        return latents

    calm_brier_scores(model, tokens, head_sample=head_sample)
    s = -(-4 // K)
    assert sorted(record) == list(range(s))
    B = tokens.shape[0]
    with torch.no_grad():
        for step in range(1, s):
            hidden, starts, _ = record[step]
            hidden = hidden.view(B, len(starts), -1)
            for c, i in enumerate(starts.tolist()):
                fed = []
                for j in range(step):  # the first sample's chunk of each earlier step
                    _, st_j, chunks_j = record[j]
                    col = st_j.tolist().index(i)
                    fed.append(chunks_j.view(B, len(st_j), K)[:, col])
                seq = torch.cat([tokens[:, : (i + 1) * K], *fed], dim=1)
                want = model.hidden_states(seq)[:, -1]
                torch.testing.assert_close(hidden[:, c], want, rtol=1e-4, atol=1e-5)


def test_calm_brier_on_untrained_model_is_finite_and_accumulates() -> None:
    model = tiny_calm(4)
    tokens = torch.randint(0, 9, (3, 24), generator=torch.Generator().manual_seed(0))
    acc = BrierAccumulator()
    r = calm_brier_scores(model, tokens, generator=torch.Generator().manual_seed(1), pad_id=0)
    assert r.scores.shape == (3, 5, 4)
    assert bool(((r.scores >= -1) & (r.scores <= 2)).all())
    acc.update(r)
    res = acc.result()
    assert len(res.brier) == 4 and all(se >= 0 for se in res.brier_se)
