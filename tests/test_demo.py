"""``calm demo --quick`` end to end (one run shared by the checks) and its usage errors.

The quick run trains tiny models for a few seconds, so the checks are about the pipeline and the
outputs (files exist, metrics parse, values lie in their mathematical ranges, directories load),
not about quality.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from calm_core.cli import main
from calm_core.model_dir import load_pretrained


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("demo") / "out"
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["demo", "--quick", "--out", str(out)])
    assert code == 0
    return out, buf.getvalue()


def test_demo_quick_writes_every_output(quick_demo: tuple[Path, str]) -> None:
    out, _ = quick_demo
    for name in ("report.md", "results.json", "metrics.jsonl", "data/index.json"):
        assert (out / name).is_file(), name
    for model in ("codec", "calm", "ar"):
        assert (out / model / "config.json").is_file()
        assert (out / model / "model.safetensors").is_file()
        assert (out / model / "tokenizer.json").is_file()
        assert not (out / model / "checkpoints").exists()
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "matplotlib is not installed" in (out / "report.md").read_text()
    else:
        png = (out / "training_curves.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000


def test_demo_quick_metrics_parse_and_lie_in_range(quick_demo: tuple[Path, str]) -> None:
    out, _ = quick_demo
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    stages = {r["stage"] for r in lines}
    assert stages == {"codec", "calm", "ar"}
    train_lines = [r for r in lines if "loss" in r]
    assert train_lines and all(math.isfinite(r["loss"]) and r["step"] >= 1 for r in train_lines)
    evals = {r["stage"]: r for r in lines if "eval/brierlm" in r}
    assert set(evals) == {"calm", "ar"}

    res = json.loads((out / "results.json").read_text())
    assert res["quick"] is True
    rec = res["codec"]["reconstruction"]
    assert 0.0 <= rec["token_accuracy"] <= 1.0 and 0.0 <= rec["chunk_accuracy"] <= 1.0
    assert rec["chunk_accuracy"] <= rec["token_accuracy"] + 1e-12
    assert res["data"]["val_documents"] == 4 and res["data"]["train_documents"] == 58
    for kind in ("calm", "ar"):
        m = res["models"][kind]
        b = m["brier"]
        for n in "1234":
            # the two-sample estimate lies in [-1, 2]; its standard error is non-negative
            assert -1.0 <= b["brier"][n] <= 2.0 and b["brier_se"][n] >= 0.0
        assert 0.0 <= b["brierlm"] <= 100.0
        assert m["steps"] >= 1 and m["tokens"] == m["steps"] * 4 * 64
        assert m["train_flops"] > 0 and m["train_tokens_per_s"] > 0
        assert m["gen_tokens_per_s"]["b1"] > 0 and m["gen_tokens_per_s"]["b8"] > 0
    # equal tokens: the baseline trains the steps the CALM took, unless its time budget ran out
    calm_steps, ar = res["models"]["calm"]["steps"], res["models"]["ar"]
    assert ar["planned_steps"] == calm_steps
    assert ar["steps"] == calm_steps or (ar["stopped_by_budget"] and ar["steps"] < calm_steps)
    assert res["samples"], "expected at least one held-out prompt"
    conts = res["samples"][0]["continuations"]
    assert set(conts) == {"calm T=1", "calm T=0.5", "ar T=1", "ar T=0.5"}


def test_demo_quick_report_and_summary(quick_demo: tuple[Path, str]) -> None:
    out, stdout = quick_demo
    report = (out / "report.md").read_text()
    for needle in ("Brier-1", "BrierLM", "codec reconstruction", "Sample continuations",
                   "How to scale up", "calm generate", "calm eval", "--quick run"):  # fmt: skip
        assert needle in report, needle
    assert "| Brier-2 (± s.e.)" in stdout and "training FLOPs" in stdout
    assert "calm generate" in stdout and "calm eval" in stdout


def test_demo_quick_models_load_and_share_the_codec(quick_demo: tuple[Path, str]) -> None:
    out, _ = quick_demo
    codec = load_pretrained(out / "codec")
    calm = load_pretrained(out / "calm")
    ar = load_pretrained(out / "ar")
    for name, tensor in codec.state_dict().items():
        assert torch.equal(calm.codec.state_dict()[name], tensor), name
    assert calm.backbone.config == ar.backbone.config


def test_demo_refuses_to_overwrite(quick_demo: tuple[Path, str], capsys) -> None:
    out, _ = quick_demo
    before = (out / "results.json").read_bytes()
    assert main(["demo", "--quick", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "results.json").read_bytes() == before


# ------------------------------------------------------------------------- usage errors
def test_demo_missing_corpus(tmp_path: Path, capsys) -> None:
    assert main(["demo", "--quick", "--corpus", str(tmp_path / "none.txt"),
                 "--out", str(tmp_path / "o")]) == 2  # fmt: skip
    assert "corpus" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_demo_corpus_too_small(tmp_path: Path, capsys) -> None:
    corpus = tmp_path / "one.txt"
    corpus.write_text("just one short document")
    assert main(["demo", "--quick", "--corpus", str(corpus), "--out", str(tmp_path / "o")]) == 2
    assert "no training documents" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("body", "suffix", "needle"),
    [
        ('{"codec": {"stepz": 3}}', ".json", "codec.stepz"),
        ("[lm]\nsteps = 'many'\n", ".toml", "lm.steps"),
        ('{"eval": {"temperatures": [0.5, "hot"]}}', ".json", "eval.temperatures.1"),
        ('{"seed": -1}', ".json", "seed"),
    ],
)
def test_demo_bad_config_names_the_field(tmp_path: Path, capsys, body, suffix, needle) -> None:
    cfg = tmp_path / f"demo{suffix}"
    cfg.write_text(body)
    assert main(["demo", "--config", str(cfg), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert needle in err and not (tmp_path / "o").exists()


def test_demo_unwritable_output(tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["demo", "--quick", "--out", str(blocker / "sub")]) == 2
    assert "not writable" in capsys.readouterr().err


def test_demo_unknown_flag_suggests(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--quik"])
    assert exc.value.code == 2
    assert "--quick" in capsys.readouterr().err


def test_follow_up_commands_quote_paths_with_spaces(tmp_path: Path) -> None:
    import shlex

    from calm_core.demo import DemoConfig, DemoResult, next_steps

    out = tmp_path / "my demo"
    result = DemoResult(out_dir=out, config=DemoConfig(), quick=True, corpus="bundled")
    for line in next_steps(result).splitlines():
        argv = shlex.split(line)
        paths = [a for a in argv if a.startswith(str(out))]
        assert paths, line  # every command names the demo's directory as one argument
        assert all(a.startswith(str(out) + "/") for a in paths)


def test_demo_names_missing_components_before_any_work(tmp_path: Path, capsys) -> None:
    from calm_core.registry import heads

    heads.unregister("energy")  # as if calm-heads were not installed
    try:
        assert main(["demo", "--quick", "--out", str(tmp_path / "o")]) == 2
    finally:
        heads.refresh()
    err = capsys.readouterr().err
    assert "pip install calm-heads" in err and "calm-codecs" not in err.split("pip install")[-1]
    assert not (tmp_path / "o").exists()
