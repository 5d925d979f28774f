"""The Hugging Face Hub, offline: model ids resolved from a Hugging Face cache laid out on disk
(``models--org--name/refs/<rev>`` -> ``snapshots/<sha>/``), the error without the extra, and
``push_to_hub`` against a mocked ``HfApi`` (the model card's contents)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from calm_core.ar import ARConfig, ARModel
from calm_core.backbone import BackboneConfig
from calm_core.cli import main
from calm_core.data import Tokenizer
from calm_core.hub import (
    HubError,
    HubNotInstalledError,
    is_hub_id,
    model_card,
    push_to_hub,
    resolve_model_dir,
)
from calm_core.model_dir import ModelLoadError, load_pretrained, save_pretrained

SHA_MAIN = "a" * 40
SHA_V1 = "b" * 40
VOCAB = 258  # the byte tokenizer


def _model(seed: int) -> ARModel:
    torch.manual_seed(seed)
    bb = BackboneConfig(
        hidden_size=16, intermediate_size=24, num_layers=1, num_heads=2, num_kv_heads=1,
        max_positions=64,
    )  # fmt: skip
    cfg = ARConfig(backbone=bb, vocab_size=VOCAB, pad_id=0, eos_id=1)
    return ARModel(cfg).eval()


@pytest.fixture
def hf() -> Any:
    """huggingface_hub (calm-core[hub]); the tests that need it skip without it."""
    return pytest.importorskip("huggingface_hub")


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``org/tiny`` in a Hugging Face cache: main -> seed 0, tag v1 -> seed 1; offline."""
    cache = tmp_path / "hf-cache"
    repo = cache / "models--org--tiny"
    for sha, seed in ((SHA_MAIN, 0), (SHA_V1, 1)):
        snap = repo / "snapshots" / sha
        save_pretrained(_model(seed), snap)
        Tokenizer.byte_level().save(snap)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(SHA_MAIN)
    (repo / "refs" / "v1").write_text(SHA_V1)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_hub_ids_are_told_apart_from_paths() -> None:
    assert is_hub_id("cccczshao/CALM-M") and is_hub_id("org/name.v2")
    for not_an_id in ("name", "/abs/path", "./rel/x", "a/b/c", "org/..", "org/a--b", "~/x", ""):
        assert not is_hub_id(not_an_id), not_an_id


def test_from_pretrained_by_id_reads_the_cache_at_each_revision(hf: Any, hub_cache: Path) -> None:
    main_model = ARModel.from_pretrained("org/tiny")
    assert _same_weights(main_model, _model(0))
    assert not main_model.training
    for rev in ("v1", SHA_V1):
        assert _same_weights(ARModel.from_pretrained("org/tiny", revision=rev), _model(1))
    # the snapshot directory is what the id resolves to
    assert resolve_model_dir("org/tiny") == hub_cache / "models--org--tiny" / "snapshots" / SHA_MAIN


def test_explicit_cache_dir_and_local_files_only(
    hf: Any, hub_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    model = load_pretrained("org/tiny", cache_dir=hub_cache, local_files_only=True, revision="v1")
    assert _same_weights(model, _model(1))
    with pytest.raises(HubError, match="downloads are off: local_files_only"):
        load_pretrained("org/absent", cache_dir=hub_cache, local_files_only=True)


def test_offline_misses_name_the_id_the_revision_and_what_to_do(hf: Any, hub_cache: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"'org/absent' is not in the Hugging Face cache"):
        load_pretrained("org/absent")
    with pytest.raises(HubError, match=r"revision 'v9'.*HF_HUB_OFFLINE is set"):
        ARModel.from_pretrained("org/tiny", revision="v9")


def test_a_local_directory_wins_and_takes_no_revision(
    hub_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    save_pretrained(_model(2), tmp_path / "org" / "tiny")  # a local dir spelled like the id
    assert _same_weights(load_pretrained("org/tiny"), _model(2))
    with pytest.raises(HubError, match="a revision .* applies to Hub ids only"):
        load_pretrained("org/tiny", revision="v1")


def test_without_the_extra_a_hub_id_says_what_to_install(
    hub_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import raises ImportError
    with pytest.raises(HubNotInstalledError, match=r"pip install 'calm-core\[hub\]'"):
        ARModel.from_pretrained("org/tiny")
    # a missing path that is not an id keeps the loader's own error; local dirs still load
    with pytest.raises(ModelLoadError, match="model directory .* does not exist"):
        load_pretrained(tmp_path / "nope")
    save_pretrained(_model(0), tmp_path / "m")
    assert _same_weights(load_pretrained(tmp_path / "m"), _model(0))


def test_cli_generate_takes_a_hub_id_and_revision(
    hf: Any, hub_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def generate(*model: str) -> list[int]:
        args = ["generate", *model, "--prompt", "the", "--max-new-tokens", "6", "--json"]
        assert main([*args, "--temperature", "0", "--no-eos-stop"]) == 0
        return list(json.loads(capsys.readouterr().out)["new_ids"])

    snapshots = hub_cache / "models--org--tiny" / "snapshots"
    assert generate("org/tiny") == generate(str(snapshots / SHA_MAIN))
    assert generate("org/tiny", "--revision", "v1") == generate(str(snapshots / SHA_V1))
    assert generate("org/tiny") != generate("org/tiny", "--revision", "v1")


@pytest.mark.parametrize("verb", ["generate", "eval", "eval-codec"])
def test_cli_hub_errors_are_one_line_usage_errors(
    verb: str,
    hf: Any,
    hub_cache: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    extra = ["--prompt", "x"] if verb == "generate" else ["--data", str(tmp_path)]
    assert main([verb, "org/absent", *extra]) == 2
    assert "'org/absent' is not in the Hugging Face cache" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    assert main([verb, "org/tiny", *extra]) == 2
    assert "pip install 'calm-core[hub]'" in capsys.readouterr().err


# -------------------------------------------------------------------------------------- upload
class _FakeApi:
    """Records what push_to_hub asks of the Hub (no network)."""

    calls: list[tuple[str, dict[str, Any]]] = []

    def __init__(self, token: Any = None) -> None:
        self.calls.append(("init", {"token": token}))

    def create_repo(self, repo_id: str, **kw: Any) -> None:
        self.calls.append(("create_repo", {"repo_id": repo_id, **kw}))

    def create_branch(self, repo_id: str, **kw: Any) -> None:
        self.calls.append(("create_branch", {"repo_id": repo_id, **kw}))

    def create_commit(self, repo_id: str, **kw: Any) -> SimpleNamespace:
        self.calls.append(("create_commit", {"repo_id": repo_id, **kw}))
        return SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/{'c' * 40}")


@pytest.fixture
def fake_api(hf: Any, monkeypatch: pytest.MonkeyPatch) -> type[_FakeApi]:
    _FakeApi.calls = []
    monkeypatch.setattr(hf, "HfApi", _FakeApi)
    return _FakeApi


def _run_dir(path: Path) -> Path:
    """A finished run directory: model, tokenizer, metrics, eval.json and a checkpoint."""
    save_pretrained(_model(0), path)
    Tokenizer.byte_level().save(path)
    rows = [
        {"step": 10, "loss": 5.25, "lr": 3e-4, "tokens_per_s": 1234.5},
        {"step": 20, "loss": 4.125, "lr": 3e-4, "tokens_per_s": 1300.0},
        {"step": 20, "eval/loss": 4.5},
    ]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ev = {
        "brier": {"1": 0.25, "2": 0.125, "3": 0.0625, "4": 0.03125},
        "brier_se": {"1": 0.01, "2": 0.01, "3": 0.01, "4": 0.01},
        "brierlm": 9.375, "split": "val", "block_len": 512, "num_blocks": 40, "seed": 0,
    }  # fmt: skip
    (path / "eval.json").write_text(json.dumps(ev))
    (path / "checkpoints" / "step-20").mkdir(parents=True)
    (path / "checkpoints" / "step-20" / "optimizer.safetensors").write_bytes(b"x")
    (path / ".calm-write-test-x").write_bytes(b"")
    (path / "mlflow.db").write_bytes(b"x")  # a tracker's files are not part of the model
    (path / "tensorboard").mkdir()
    (path / "tensorboard" / "events.out.tfevents.1").write_bytes(b"x")
    return path


def test_push_to_hub_uploads_the_model_and_a_card_in_one_commit(
    tmp_path: Path, fake_api: type[_FakeApi]
) -> None:
    run = _run_dir(tmp_path / "run")
    url = push_to_hub(run, "me/tiny-ar", revision="exp1", private=True, token="hf_x")
    assert url.startswith("https://huggingface.co/me/tiny-ar/commit/")
    names = [name for name, _ in fake_api.calls]
    assert names == ["init", "create_repo", "create_branch", "create_commit"]
    calls = dict(fake_api.calls)
    assert calls["init"] == {"token": "hf_x"}
    assert calls["create_repo"] == {"repo_id": "me/tiny-ar", "private": True, "exist_ok": True}
    assert calls["create_branch"]["branch"] == "exp1"
    commit = calls["create_commit"]
    assert commit["revision"] == "exp1"
    paths = sorted(op.path_in_repo for op in commit["operations"])
    assert paths == [
        "README.md", "config.json", "eval.json", "metrics.jsonl", "model.safetensors",
        "tokenizer.json", "tokenizer_config.json",
    ]  # fmt: skip
    card = next(op for op in commit["operations"] if op.path_in_repo == "README.md")
    text = card.path_or_fileobj.decode() if isinstance(card.path_or_fileobj, bytes) else ""
    assert text == model_card(run, "me/tiny-ar")
    params = sum(p.numel() for p in _model(0).state_dict().values())
    for needle in (
        "library_name: calm-core",
        "an autoregressive Transformer language model",
        "| type | ar |",
        "num_layers 1, hidden_size 16, num_heads 2",
        f"| parameters stored | {params:,} |",
        f"| vocab_size | {VOCAB} |",
        "Trained for 20 optimizer steps; training loss at the last logged step: 4.125",
        "Validation at step 20: eval/loss 4.5.",
        "| BrierLM (x100) | 9.375 | split val, block_len 512, num_blocks 40, seed 0 |",
        "| Brier-1 | 0.2500 ± 0.0100 | |",
        'model = ARModel.from_pretrained("me/tiny-ar")',
        'calm generate me/tiny-ar --prompt "The"',
    ):
        assert needle in text, needle


def test_push_to_hub_saves_a_model_object_and_refuses_bad_input(
    tmp_path: Path, fake_api: type[_FakeApi]
) -> None:
    push_to_hub(_model(0), "me/obj", commit_message="first")
    commit = dict(fake_api.calls)["create_commit"]
    assert commit["commit_message"] == "first" and commit["revision"] is None
    assert sorted(op.path_in_repo for op in commit["operations"]) == [
        "README.md", "config.json", "model.safetensors",
    ]  # fmt: skip
    assert "create_branch" not in dict(fake_api.calls)
    fake_api.calls = []
    with pytest.raises(HubError, match="not a Hub repository id"):
        push_to_hub(tmp_path, "no-slash")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="config.json is missing"):
        push_to_hub(tmp_path / "empty", "me/x")
    assert fake_api.calls == []  # refused before any Hub call


def test_push_to_hub_keeps_a_card_the_user_wrote(tmp_path: Path, fake_api: type[_FakeApi]) -> None:
    save_pretrained(_model(0), tmp_path / "m")
    (tmp_path / "m" / "README.md").write_text("# mine\n")
    push_to_hub(tmp_path / "m", "me/x")
    ops = dict(fake_api.calls)["create_commit"]["operations"]
    readme = [op for op in ops if op.path_in_repo == "README.md"]
    assert len(readme) == 1 and str(readme[0].path_or_fileobj).endswith("README.md")
