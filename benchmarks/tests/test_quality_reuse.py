"""The quality sweep's training record (benchmarks/quality.py ``_train``): a finished run is
reused for an equal request, so phases can be re-evaluated without retraining, and retrained for
any other request."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from benchmarks import quality as Q


def _tiny_setup(tmp_path: Path) -> tuple[Q.State, Any]:
    from calm_core.data import PackedDataset, Tokenizer, write_data_dir
    from calm_core.data.packing import Document

    docs = [
        Document(f"article {i}: " + "the quick brown fox jumps. " * 40, f"d{i}") for i in range(4)
    ]
    write_data_dir(
        tmp_path / "data", docs, Tokenizer.byte_level(), chunk_size=4, val_docs=1, seed=0
    )
    plan = Q.QualityPlan.for_run(None, quick=True)
    plan.seq_len, plan.batch = 32, 2
    return Q.State(work=tmp_path / "work", plan=plan), PackedDataset(tmp_path / "data", "train")


def _model(vocab: int) -> torch.nn.Module:
    from calm_core.ar import ARConfig, ARModel
    from calm_core.backbone import BackboneConfig

    torch.manual_seed(0)
    bb = BackboneConfig.model_validate(
        {"hidden_size": 16, "intermediate_size": 32, "num_layers": 1, "num_heads": 2,
         "max_positions": 64}
    )  # fmt: skip
    return ARModel(ARConfig(backbone=bb, vocab_size=vocab))


def test_a_finished_run_is_reused_for_an_equal_request_only(tmp_path: Path) -> None:
    state, train = _tiny_setup(tmp_path)
    vocab = train.tokenizer.vocab_size
    first = _model(vocab)
    info = Q._train(state, first, train, "tiny", minutes=None, steps=4, snapshots=(2,))
    run_dir = state.work / "runs" / "tiny"
    record = json.loads((run_dir / Q.TRAINED_RECORD).read_text())
    assert info["steps"] == 4 and set(info["snapshots"]) == {"2"}
    assert record["request"]["config"]["steps"] == 4
    metrics = (run_dir / "metrics.jsonl").read_text()

    again = _model(vocab)  # fresh initial weights: the reuse must load the trained ones
    assert Q._train(state, again, train, "tiny", minutes=None, steps=4, snapshots=(2,)) == info
    assert (run_dir / "metrics.jsonl").read_text() == metrics  # nothing trained
    for a, b in zip(first.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)

    other = _model(vocab)  # another request (more steps) trains again
    assert (
        Q._train(state, other, train, "tiny", minutes=None, steps=6, snapshots=(2,))["steps"] == 6
    )
