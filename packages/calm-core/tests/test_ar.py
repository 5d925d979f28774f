"""The AR baseline: loss, tying, persistence, reference parity, and KV-cached generation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from calm_core.ar import ARConfig, ARModel
from calm_core.backbone import BackboneConfig
from calm_core.model_dir import load_pretrained, save_pretrained
from calm_core.reference import ar_from_reference
from calm_core.testing.fixtures import fixture_names, require_fixture

V = 40


def make(**kw: object) -> ARModel:
    torch.manual_seed(0)
    bb = BackboneConfig(
        hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2,
        max_positions=48,
    )  # fmt: skip
    cfg = ARConfig.model_validate({"backbone": bb, "vocab_size": V, "pad_id": 0, **kw})
    model = ARModel(cfg)
    for p in model.parameters():
        if p.dim() == 2:
            torch.nn.init.normal_(p, std=0.4)  # peaked distributions: greedy paths vary
    return model.eval()


def test_loss_is_next_token_cross_entropy_ignoring_pad() -> None:
    model = make()
    tokens = torch.randint(1, V, (2, 9))
    tokens[1, 6:] = 0  # trailing PAD
    logits = model.logits(tokens[:, :-1])
    keep = tokens[:, 1:] != 0
    expected = F.cross_entropy(logits[keep], tokens[:, 1:][keep])
    torch.testing.assert_close(model(tokens)["loss"], expected)


def test_tied_embeddings_share_one_tensor_and_save_once(tmp_path: Path) -> None:
    model = make(tie_embeddings=True)
    assert model.lm_head.weight is model.embed_tokens.weight
    model.save_pretrained(tmp_path / "m")
    again = ARModel.from_pretrained(tmp_path / "m")
    assert again.lm_head.weight is again.embed_tokens.weight
    tokens = torch.randint(0, V, (1, 6))
    torch.testing.assert_close(again.logits(tokens), model.logits(tokens))
    untied = make()
    assert untied.lm_head.weight is not untied.embed_tokens.weight


def test_directory_saved_under_the_former_type_name_loads(tmp_path: Path) -> None:
    """Directories written before the AR baseline was named ``ar`` say ``transformer_lm``."""
    model = make()
    save_pretrained(model, tmp_path / "m")
    record = json.loads((tmp_path / "m" / "config.json").read_text())
    assert record["type"] == "ar"
    record["type"] = "transformer_lm"
    (tmp_path / "m" / "config.json").write_text(json.dumps(record))
    again = load_pretrained(tmp_path / "m")
    assert isinstance(again, ARModel)
    tokens = torch.randint(0, V, (2, 6))
    torch.testing.assert_close(again.logits(tokens), model.logits(tokens))


def test_cached_greedy_generation_equals_recomputing_the_prefix() -> None:
    model = make()
    prompt = torch.randint(1, V, (3, 5))
    out = model.generate(prompt, 10, temperature=0)
    seq = prompt
    for _ in range(10):
        nxt = model.logits(seq)[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], 1)
    assert torch.equal(out, seq[:, 5:])
    assert len(set(out.flatten().tolist())) > 3  # not a degenerate constant path


def test_left_padded_batch_equals_each_prompt_alone() -> None:
    model = make()
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12, 13], [14]]
    batch = model.generate(prompts, 8, temperature=0)
    for i, p in enumerate(prompts):
        assert torch.equal(batch[i], model.generate([p], 8, temperature=0)[0])


def test_sampling_is_reproducible_with_a_generator() -> None:
    model = make()
    prompt = torch.randint(1, V, (2, 4))
    a = model.generate(prompt, 12, generator=torch.Generator().manual_seed(3))
    b = model.generate(prompt, 12, generator=torch.Generator().manual_seed(3))
    c = model.generate(prompt, 12, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_eos_stops_each_row_and_stream_yields_tokens() -> None:
    model = make()
    prompts = torch.randint(1, V, (2, 4))
    free = model.generate(prompts, 8, temperature=0)
    eos = int(free[0, 2])  # row 0 emits it at step 2
    stopped = model.generate(prompts, 8, temperature=0, eos_id=eos)
    row0 = free[0].tolist()
    first = row0.index(eos)
    assert stopped[0, : first + 1].tolist() == row0[: first + 1]
    assert (stopped[0, first + 1 :] == 0).all()  # pad after EOS
    pieces = list(model.stream(prompts, 8, temperature=0))
    assert all(p.shape == (2, 1) for p in pieces)
    assert torch.equal(torch.cat(pieces, 1), free)


def test_stop_at_eos_false_ignores_the_configs_eos() -> None:
    model = make()
    prompts = torch.randint(1, V, (2, 4))
    free = model.generate(prompts, 8, temperature=0)
    model.config.eos_id = int(free[0, 2])
    assert (model.generate(prompts, 8, temperature=0)[0, 3:] == 0).all()
    assert torch.equal(model.generate(prompts, 8, temperature=0, stop_at_eos=False), free)


def test_generation_ends_early_when_every_row_has_stopped() -> None:
    model = make()
    prompt = torch.randint(1, V, (1, 4))
    first = int(model.generate(prompt, 1, temperature=0)[0, 0])
    out = model.generate(prompt, 10, temperature=0, eos_id=first)
    assert out.tolist() == [[first]]


@pytest.mark.parametrize(
    ("prompts", "kwargs", "needle"),
    [
        ([[1, 2, V]], {}, f"token id {V}, outside the vocabulary"),
        ([[1, -1]], {}, "token id -1"),
        ([[]], {}, "prompt 0 is empty"),
        ([], {}, "no prompts"),
        ([[1, 2]], {"max_new_tokens": 0}, "max_new_tokens must be >= 1"),
        ([[1] * 49], {}, "prompt is too long: 49 tokens"),
        ([[1] * 40], {"max_new_tokens": 20}, "exceeds the context of 48"),
        ([[1, 2]], {"temperature": -1.0}, "temperature must be >= 0"),
    ],
)
def test_bad_generation_input_gives_clear_errors(
    prompts: list[list[int]], kwargs: dict[str, float], needle: str
) -> None:
    model = make()
    args = {"max_new_tokens": 4, **kwargs}
    with pytest.raises(ValueError, match=needle):
        model.generate(prompts, **args)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", fixture_names("ar_brier") or ["ar_brier"])
def test_ar_parity_with_reference_llama(name: str) -> None:
    fx = require_fixture(name)
    ref_config = fx.meta.get("ar_config") or fx.meta.get("config") or fx.meta.get("llama_config")
    assert ref_config is not None, sorted(fx.meta)
    model = ar_from_reference(fx.params("ar."), ref_config).eval()
    with torch.no_grad():
        logits = model.logits(fx.tensors["input_ids"])
    torch.testing.assert_close(logits, fx.tensors["logits"], rtol=1e-5, atol=1e-5)
    loss = model(fx.tensors["input_ids"])["loss"]
    torch.testing.assert_close(loss, fx.tensors["loss"], rtol=1e-4, atol=1e-4)
    # a perturbed weight must break parity
    state = fx.params("ar.")
    key = "model.layers.1.self_attn.v_proj.weight"
    state[key] = state[key] + 1e-2 * torch.randn_like(state[key])
    bad = ar_from_reference(state, ref_config).eval()
    with torch.no_grad():
        assert not torch.allclose(bad.logits(fx.tensors["input_ids"]), fx.tensors["logits"],
                                  rtol=1e-5, atol=1e-5)  # fmt: skip
