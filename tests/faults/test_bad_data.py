"""Packed data is checked when it is opened, before step 1: token ids at or beyond the vocabulary
(on a GPU a device-side assert, on a CPU an IndexError late in a run or wrong numbers), a missing
or garbled data tokenizer (needed only when the model is saved), and an inconsistent
``index.json`` are usage errors that name the file and say to re-run ``calm tokenize``."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from calm_core.data import PackedDataset
from calm_core.data.packing import DataError

RunCLI = Callable[..., tuple[int, str]]


def copy_dir(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _index(d: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    index = json.loads((d / "index.json").read_text())
    edit(index)
    (d / "index.json").write_text(json.dumps(index))


def _poke_token(split: str, value: int) -> Callable[[Path], None]:
    def corrupt(d: Path) -> None:
        tokens = np.memmap(d / f"{split}.bin", dtype=np.uint16, mode="r+")
        tokens[37] = value
        tokens.flush()

    return corrupt


def _drop_split_key(key: str) -> Callable[[Path], None]:
    return lambda d: _index(d, lambda i: i["splits"]["train"].pop(key))


def _garble_tokenizer(d: Path) -> None:
    (d / "tokenizer_config.json").unlink()  # without it the file is read as a BPE tokenizer
    (d / "tokenizer.json").write_text("{garbled")


CORRUPTIONS: dict[str, tuple[Callable[[Path], None], str]] = {
    "train-id-beyond-vocab": (_poke_token("train", 300), "holds token id 300"),
    "val-id-beyond-vocab": (_poke_token("val", 258), "holds token id 258"),
    "chunk-size-zero": (lambda d: _index(d, lambda i: i.update(chunk_size=0)), "chunk_size=0"),
    "chunk-size-text": (
        lambda d: _index(d, lambda i: i.update(chunk_size="four")),
        "malformed index",
    ),
    "offsets-decreasing": (
        lambda d: _index(d, lambda i: i["splits"]["train"]["doc_offsets"].reverse()),
        "offsets",
    ),
    "offsets-too-few": (
        lambda d: _index(d, lambda i: i["splits"]["train"]["doc_offsets"].pop()),
        "document offsets",
    ),
    "offsets-missing": (_drop_split_key("doc_offsets"), "malformed index"),
    "eos-outside-vocab": (lambda d: _index(d, lambda i: i.update(eos_id=999)), "EOS 999"),
    "float-dtype": (lambda d: _index(d, lambda i: i.update(dtype="float16")), "not an unsigned"),
    "file-outside": (
        lambda d: _index(d, lambda i: i["splits"]["train"].update(file="../val.bin")),
        "not a file of the data directory",
    ),
    "not-an-object": (lambda d: (d / "index.json").write_text("[1, 2]"), "unknown data format"),
    "tokenizer-missing": (lambda d: (d / "tokenizer.json").unlink(), "tokenizer"),
    "tokenizer-garbled": (_garble_tokenizer, "is not a `tokenizers` tokenizer.json file"),
    "tokenizer-config-garbled": (
        lambda d: (d / "tokenizer_config.json").write_text("{garbled"),
        "tokenizer",
    ),
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_bad_data_is_refused_before_step_1(ws, tmp_path: Path, run_cli: RunCLI, name: str) -> None:
    corrupt, message = CORRUPTIONS[name]
    data = copy_dir(ws["data"], tmp_path / "data")
    corrupt(data)
    out = tmp_path / "ar"
    code, err = run_cli("train", "--model", "ar", "--data", data, "--out", out,
                        "--config", ws["model_cfg"], "--steps", "1", "--no-progress")  # fmt: skip
    assert code == 2, err
    assert message in err, err
    assert "Traceback" not in err
    # refused before any step: no checkpoint, metric or model was written
    assert not out.exists() or not [p for p in out.iterdir() if not p.name.startswith(".")]


@pytest.mark.parametrize("name", ["train-id-beyond-vocab", "offsets-decreasing", "float-dtype"])
def test_bad_data_is_refused_by_eval_and_the_library(
    ws, tmp_path: Path, run_cli: RunCLI, name: str
) -> None:
    corrupt, message = CORRUPTIONS[name]
    data = copy_dir(ws["data"], tmp_path / "data")
    corrupt(data)
    with pytest.raises(DataError, match="re-run `calm tokenize`"):
        PackedDataset(data, "train")
    code, err = run_cli("eval", ws["ar"], "--data", data, "--split", "train", "--num-blocks",
                        "1", "--block-len", "64")  # fmt: skip
    assert code == 2 and message in err, err


def test_ids_beyond_the_vocab_are_found_across_scan_chunks(
    ws, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The token scan is streamed in chunks: a bad id in a later chunk is still found."""
    monkeypatch.setattr("calm_core.validation.SCAN_CHUNK", 100)
    data = copy_dir(ws["data"], tmp_path / "data")
    tokens = np.memmap(data / "train.bin", dtype=np.uint16, mode="r+")
    tokens[len(tokens) - 3] = 4000
    tokens.flush()
    with pytest.raises(
        DataError, match=rf"token id 4000 \(first bad at position {len(tokens) - 3}"
    ):
        PackedDataset(data, "train")
