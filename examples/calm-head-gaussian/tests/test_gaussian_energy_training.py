"""End to end: a tiny CALM trains with ``example.gaussian_energy``, in code and via ``calm train``.

The head is chosen by its registered name only; nothing in calm knows this package.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

HEAD = "example.gaussian_energy"
TINY_CODEC = {
    "vocab_size": 64,
    "chunk_size": 4,
    "latent_size": 8,
    "hidden_size": 32,
    "intermediate_size": 64,
}
TINY_BACKBONE = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_layers": 2,
    "num_heads": 2,
    "max_positions": 64,
}
TINY_HEAD = {"num_components": 2, "width": 32, "num_samples": 4, "num_target_samples": 16}


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny ops run faster on one thread than on two contended ones."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _calm() -> type:
    calm = pytest.importorskip("calm_core.calm", reason="calm_core.calm (the CALM model) is absent")
    pytest.importorskip("calm_codecs", reason="calm-codecs (the chunk autoencoder) is absent")
    return calm.CALM  # type: ignore[no-any-return]


def test_calm_trains_with_the_plugin_head_in_code(one_thread: None, tmp_path: Path) -> None:
    CALM = _calm()
    from calm_core.model_dir import load_pretrained
    from calm_core.registry import codecs
    from calm_head_gaussian import GaussianEnergyHead

    torch.manual_seed(0)
    # predictable data: each row repeats two chunks, so the next chunk's latent is learnable
    pair = torch.randint(0, 64, (4, 8), generator=torch.Generator().manual_seed(1))
    tokens = pair.repeat(1, 4)
    codec = codecs.build({"name": "autoencoder", "config": TINY_CODEC})
    # a few codec steps make its posterior informative (at init it is close to N(0, I))
    codec_opt = torch.optim.AdamW(codec.parameters(), lr=1e-2)
    codec.train()
    for _ in range(60):
        codec_opt.zero_grad()
        codec.loss(tokens)["loss"].backward()
        codec_opt.step()
    model = CALM.from_codec(codec, backbone=TINY_BACKBONE, head={"name": HEAD, "config": TINY_HEAD})
    assert isinstance(model.head, GaussianEnergyHead)
    params = [p for p in model.parameters() if p.requires_grad]
    assert not any(p.requires_grad for p in model.codec.parameters()), "codec must stay frozen"
    opt = torch.optim.AdamW(params, lr=3e-3)

    def eval_loss() -> float:
        torch.manual_seed(123)  # common random numbers: the same draws before and after training
        with torch.no_grad():
            return sum(model(tokens)["loss"].item() for _ in range(4)) / 4

    model.train()
    first = eval_loss()
    for _ in range(40):
        opt.zero_grad()
        model(tokens)["loss"].backward()
        opt.step()
    last = eval_loss()
    assert last < 0.5 * first, f"energy loss did not go down: {first:.3f} -> {last:.3f}"

    model.save_pretrained(tmp_path / "model")
    record = json.loads((tmp_path / "model" / "config.json").read_text())
    head_record = next(r for r in record["components"].values() if r["name"] == HEAD)
    assert head_record["distribution"] == "calm-head-gaussian"
    loaded = load_pretrained(tmp_path / "model")
    assert isinstance(loaded.head, GaussianEnergyHead)
    prompt = tokens[:1, :8]
    gen = loaded.generate(prompt, 8, generator=torch.Generator().manual_seed(0))
    again = model.eval().generate(prompt, 8, generator=torch.Generator().manual_seed(0))
    assert gen.shape == (1, 8) and torch.equal(gen, again)


def test_calm_train_cli_with_the_plugin_head(one_thread: None, tmp_path: Path) -> None:
    """`calm train --head example.gaussian_energy`: tokenize, train a codec, train, generate."""
    _calm()
    from calm_core.cli import VERBS, main

    missing = {"tokenize", "train-codec", "train", "generate"} - set(VERBS)
    if missing:
        pytest.skip(f"calm verbs not available yet: {sorted(missing)}")
    corpus = tmp_path / "corpus.jsonl"
    words = ["alpha", "beta", "gamma", "delta", "omega"]
    lines = [
        json.dumps({"text": " ".join(words[(i + j) % 5] for j in range(40))}) for i in range(12)
    ]
    corpus.write_text("\n".join(lines) + "\n")
    data, codec, model = tmp_path / "data", tmp_path / "codec", tmp_path / "model"
    train = {"batch_size": 4, "seq_len": 32, "warmup_steps": 1, "log_every": 1}
    codec_cfg, model_cfg = tmp_path / "codec.json", tmp_path / "model.json"
    codec_spec = {"name": "autoencoder", "config": TINY_CODEC | {"vocab_size": 258}}
    codec_cfg.write_text(json.dumps({"codec": codec_spec, "train": train}))
    model_cfg.write_text(
        json.dumps(
            {
                "backbone": TINY_BACKBONE | {"num_kv_heads": 2},
                "head": {"name": HEAD, "config": TINY_HEAD},
                "train": train,
            }
        )
    )
    common = ["--no-progress", "--steps", "4"]
    assert (
        main(["tokenize", str(corpus), "--out", str(data), "--byte-level", "--val-docs", "2"]) == 0
    )
    assert main(["train-codec", "--data", str(data), "--out", str(codec),
                 "--config", str(codec_cfg), *common]) == 0  # fmt: skip
    assert main(["train", "--data", str(data), "--codec", str(codec), "--out", str(model),
                 "--head", HEAD, "--config", str(model_cfg), *common]) == 0  # fmt: skip

    record = json.loads((model / "config.json").read_text())
    head_record = next(r for r in record["components"].values() if r["name"] == HEAD)
    assert head_record["distribution"] == "calm-head-gaussian"
    assert record["config"]["head"]["config"]["num_components"] == 2
    metrics = [json.loads(line) for line in (model / "metrics.jsonl").read_text().splitlines()]
    losses = [m["loss"] for m in metrics if "loss" in m]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    assert main(["generate", str(model), "--prompt", "alpha beta", "--max-new-tokens", "8",
                 "--seed", "0"]) == 0  # fmt: skip
