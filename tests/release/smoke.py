"""Use the installed wheels as a user would: compose a CALM, train it a little, save, load.

Run by the nox ``release`` session with the Python of a fresh virtual environment that holds only
the built wheels (and their dependencies), from a temporary directory outside the source tree.
Exits non-zero (an AssertionError naming what went wrong) on any failure.
"""

from __future__ import annotations

import json
import sysconfig
from importlib.metadata import version
from pathlib import Path

import calm_codecs
import calm_core
import calm_heads
import torch
from calm_core.calm import CALM
from calm_core.registry import codecs


def main() -> None:
    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    for module in (calm_core, calm_heads, calm_codecs):
        where = Path(str(module.__file__)).resolve()
        assert site in where.parents, f"{module.__name__} imported from {where}, not from {site}"
    assert version("calm-core") == calm_core.__version__, "installed metadata != __version__"

    torch.set_num_threads(1)  # a tiny model: more threads only contend on a shared CI machine
    torch.manual_seed(0)
    codec = codecs.build(
        {
            "name": "autoencoder",
            "config": {
                "vocab_size": 64,
                "chunk_size": 4,
                "latent_size": 8,
                "hidden_size": 32,
                "intermediate_size": 64,
            },
        }
    )
    model = CALM.from_codec(
        codec,
        backbone={"hidden_size": 32, "intermediate_size": 64, "num_layers": 1, "num_heads": 2},
        head={"name": "energy", "config": {"num_blocks": 1, "noise_size": 8}},
    )
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    tokens = torch.randint(0, 64, (4, 32), generator=torch.Generator().manual_seed(1))
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        loss = model(tokens)["loss"]
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first, f"30 steps on one batch did not lower the loss: {first:.4f} -> {last:.4f}"

    model.eval()
    out = model.save_pretrained(Path("smoke-calm"))
    record = json.loads((out / "config.json").read_text(encoding="utf-8"))
    text = json.dumps(record)
    for dist in ("calm-heads", "calm-codecs"):
        assert dist in text, f"config.json does not record the providing distribution {dist}"
    loaded = CALM.from_pretrained(out).eval()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), f"{name} changed on save/load"
    prompt = tokens[:1, :8]
    a = model.generate(prompt, max_new_tokens=8, generator=torch.Generator().manual_seed(0))
    b = loaded.generate(prompt, max_new_tokens=8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b), "the loaded model generates other tokens from the same seed"
    print(
        f"release smoke: calm {calm_core.__version__} from {site}: loss {first:.3f} -> "
        f"{last:.3f} in 30 steps; saved, loaded, same weights and same seeded generation"
    )


if __name__ == "__main__":
    main()
