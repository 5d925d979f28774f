"""Model directories: config.json is compared with the weights' safetensors header before the
model is built (an edited size allocates nothing), malformed configs are usage errors of
``calm generate`` and ``calm eval``, and int, NaN or non-regular weights are refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from calm_core.load_errors import ModelLoadError
from calm_core.model_dir import load_pretrained
from safetensors import safe_open
from safetensors.torch import save_file

RunCLI = Callable[..., tuple[int, str]]


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        if (src / name).is_file():
            (dst / name).write_bytes((src / name).read_bytes())
    return dst


def _edit_config(d: Path, edit: Callable[[dict], None]) -> None:
    record = json.loads((d / "config.json").read_text())
    edit(record)
    (d / "config.json").write_text(json.dumps(record))


def _both_verbs(run_cli: RunCLI, d: Path, data: Path) -> list[tuple[int, str]]:
    return [run_cli("generate", d, "--prompt", "the", "--max-new-tokens", "2"),
            run_cli("eval", d, "--data", data, "--num-blocks", "1", "--block-len", "64")]  # fmt: skip


def _set(path: str, value: object) -> Callable[[dict], None]:
    def edit(record: dict) -> None:
        *parents, last = path.split(".")
        node = record
        for key in parents:
            node = node[key]
        if value is KeyError:
            del node[last]
        else:
            node[last] = value

    return edit


def test_oversized_config_is_refused_before_allocating(ws, tmp_path: Path, run_cli: RunCLI) -> None:
    d = _copy(ws["ar"], tmp_path / "ar")
    _edit_config(d, _set("config.backbone.hidden_size", 2**20))  # ~TBs if it were built
    for code, err in _both_verbs(run_cli, d, ws["data"]):
        assert code == 2, err
        assert "GiB" in err or "config.json expects" in err, err


def test_config_that_disagrees_with_the_weights_names_the_tensor(ws, tmp_path: Path) -> None:
    d = _copy(ws["ar"], tmp_path / "ar")
    _edit_config(d, _set("config.backbone.intermediate_size", 128))
    with pytest.raises(
        ModelLoadError, match=r"shape .* in model.safetensors but config.json expects"
    ):
        load_pretrained(d)


@pytest.mark.parametrize(
    "edit",
    [
        _set("config.backbone", KeyError),  # a missing key
        _set("config.backbone.num_layers", "two"),  # a wrong type
        _set("config.backbone.num_heads", -2),  # a negative size
        _set("config.vocab_size", None),
        _set("config", [1, 2]),
    ],
    ids=["missing", "wrong-type", "negative", "null", "not-a-mapping"],
)
def test_malformed_config_is_a_usage_error(
    ws, tmp_path: Path, run_cli: RunCLI, edit: Callable[[dict], None]
) -> None:
    d = _copy(ws["ar"], tmp_path / "ar")
    _edit_config(d, edit)
    for code, err in _both_verbs(run_cli, d, ws["data"]):
        assert code == 2, err
        assert str(d) in err and "Traceback" not in err


def _rewrite_weights(d: Path, change: Callable[[str, torch.Tensor], torch.Tensor]) -> None:
    path = d / "model.safetensors"
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: change(k, f.get_tensor(k)) for k in f.keys()}  # noqa: SIM118
    save_file(tensors, str(path), metadata=meta)


def test_int_weights_are_refused(ws, tmp_path: Path, run_cli: RunCLI) -> None:
    d = _copy(ws["codec"], tmp_path / "codec")
    _rewrite_weights(d, lambda k, t: t.to(torch.int32) if t.is_floating_point() else t)
    code, err = run_cli("eval-codec", d, "--data", ws["data"], "--max-chunks", "8")
    assert code == 2 and "not a floating-point type" in err, err


def test_nan_weights_are_refused(ws, tmp_path: Path, run_cli: RunCLI) -> None:
    d = _copy(ws["ar"], tmp_path / "ar")
    first = []

    def poison(name: str, t: torch.Tensor) -> torch.Tensor:
        if t.is_floating_point() and not first:
            first.append(name)
            t = t.clone()
            t.view(-1)[0] = float("nan")
        return t

    _rewrite_weights(d, poison)
    for code, err in _both_verbs(run_cli, d, ws["data"]):
        assert code == 2, err
        assert "NaN or infinite" in err and first[0] in err


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_fifo_in_place_of_the_weights_is_refused_without_blocking(ws, tmp_path: Path) -> None:
    d = _copy(ws["codec"], tmp_path / "codec")
    (d / "model.safetensors").unlink()
    os.mkfifo(d / "model.safetensors")
    # a subprocess with a timeout: on code that opens the FIFO, the read blocks forever
    proc = subprocess.run(
        [sys.executable, "-m", "calm_core.cli", "eval-codec", str(d), "--data", str(ws["data"])],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "not a regular file" in proc.stderr
