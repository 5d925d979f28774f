"""Presets are plain data: exact published shapes, JSON copies, one home of the bench shape."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from calm_core.backbone import BackboneConfig
from calm_core.presets import BENCH_BACKBONE, BENCH_CODEC, PRESETS, get_preset, preset_names


def test_spec_shapes_are_exact() -> None:
    m = get_preset("calm-m")
    assert m["backbone"]["hidden_size"] == 1024 and m["backbone"]["num_layers"] == 16
    assert m["backbone"]["intermediate_size"] == 2752 and m["backbone"]["num_heads"] == 16
    assert m["head"] == {"name": "energy", "config": {"num_blocks": 4, "noise_size": 64}}
    assert m["codec"]["config"]["latent_size"] == 128 and m["codec"]["config"]["chunk_size"] == 4
    s = get_preset("transformer-s")["backbone"]
    assert (s["hidden_size"], s["num_layers"], s["intermediate_size"], s["num_heads"]) == (
        768, 12, 2048, 16,
    )  # fmt: skip
    bench = get_preset("bench")
    assert bench["backbone"]["hidden_size"] == 256 and bench["backbone"]["intermediate_size"] == 704
    assert bench["head"]["config"] == {"num_blocks": 2, "noise_size": 32}


def test_presets_are_plain_json_data_and_copies() -> None:
    for name in preset_names():
        assert json.loads(json.dumps(PRESETS[name])) == PRESETS[name]
    a = get_preset("calm-m")
    a["backbone"]["hidden_size"] = 1
    assert get_preset("calm-m")["backbone"]["hidden_size"] == 1024


def test_unknown_preset_suggests_close_names() -> None:
    with pytest.raises(KeyError, match="did you mean calm-m"):
        get_preset("calm-mm")


def test_the_bench_shape_is_written_once_and_read_by_the_config_defaults() -> None:
    bench = get_preset("calm-bench")
    assert {k: bench["backbone"][k] for k in BENCH_BACKBONE} == BENCH_BACKBONE
    assert bench["codec"]["config"] == BENCH_CODEC
    defaults = BackboneConfig()
    assert {k: getattr(defaults, k) for k in BENCH_BACKBONE} == BENCH_BACKBONE
    assert get_preset("transformer-bench")["vocab_size"] == BENCH_CODEC["vocab_size"]


def test_presets_import_nothing_of_calm_or_torch() -> None:
    # config defaults, plugins and the benchmarks read their shapes from here: a leaf module
    probe = (
        "import sys, calm_core.presets\n"
        "mods = sorted(m for m in sys.modules if m.startswith('calm_core.') or m == 'torch')\n"
        "print(','.join(mods))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    # the package's __init__ reads the version string (a constant module, no imports) and nothing else
    assert out.stdout.strip() == "calm_core._version,calm_core.presets"
