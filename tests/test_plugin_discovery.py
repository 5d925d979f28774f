"""Plugin discovery through real installed entry points (the packages under tests/plugins).

The nox `tests` session installs acme-calm-heads (well formed), broken-calm-plugin (fails at import,
wrong type, reserved name) and clash-calm-one/-two (both claim `clash.head`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
from calm_core.registry import PluginConflictError, UnknownComponentError, codecs, heads
from calm_core.testing import HeadConformance

pytestmark = pytest.mark.skipif(
    "acme.gaussian" not in heads.names(), reason="test plugin packages are not installed"
)


@pytest.fixture(autouse=True)
def fresh_registry() -> Iterator[None]:
    heads.refresh()
    codecs.refresh()
    yield
    heads.refresh()
    codecs.refresh()


def _run(code: str, **env: str) -> dict[str, object]:
    full_env = {**os.environ, **env}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=full_env
    ).stdout
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_third_party_head_is_discovered_with_provider() -> None:
    info = heads.info("acme.gaussian")
    assert (info.distribution, info.version) == ("acme-calm-heads", "1.2.3")
    assert not info.first_party
    cls = heads.get("acme.gaussian")
    assert cls.__name__ == "DiagonalGaussianHead"
    assert heads.get("acme.gaussian") is cls  # cached


def test_discovery_is_lazy_per_entry_point() -> None:
    data = _run(
        "import json, os, sys\n"
        "from calm_core.registry import heads\n"
        "n = heads.names()\n"
        "before = 'acme_calm_heads' in sys.modules\n"
        "heads.get('acme.gaussian')\n"
        "print(json.dumps({'before': before, 'after': 'acme_calm_heads' in sys.modules,"
        " 'broken': 'broken_calm_plugin' in sys.modules, 'names': n}))"
    )
    assert data["before"] is False and data["after"] is True
    assert data["broken"] is False, "loading one plugin imported another"
    assert "acme.gaussian" in data["names"]  # type: ignore[operator]


def test_broken_plugin_is_recorded_and_isolated() -> None:
    with pytest.raises(UnknownComponentError, match="ImportError: broken_calm_plugin needs"):
        heads.get("broken.import")
    with pytest.raises(UnknownComponentError, match="not a subclass of .*GenerativeHead"):
        heads.get("broken.not_a_head")
    errors = {e.name: e for e in heads.load_errors()}
    assert (
        "broken.import" in errors and errors["broken.import"].distribution == "broken-calm-plugin"
    )
    assert "not a subclass" in errors["broken.not_a_head"].error
    assert "broken.import" not in heads.names()
    # the host and the other plugins keep working
    assert heads.get("acme.gaussian").__name__ == "DiagonalGaussianHead"
    assert len(heads.load_all()) >= 1


def test_reserved_dotless_name_is_refused_for_third_parties() -> None:
    assert "energyy" not in heads.names()
    err = next(e for e in heads.load_errors() if e.name == "energyy")
    assert "reserved for first-party" in err.error and "vendor.energyy" in err.error


def test_unknown_name_message_suggests_and_lists_providers() -> None:
    with pytest.raises(KeyError) as exc:
        heads.get("acme.gausian")
    msg = str(exc.value)
    assert "Did you mean: 'acme.gaussian'" in msg
    assert "acme.gaussian  (acme-calm-heads 1.2.3)" in msg
    assert "Plugins that failed to load:" in msg and "energyy" in msg


def test_two_distributions_claiming_one_name_is_an_error_naming_both() -> None:
    with pytest.raises(PluginConflictError) as exc:
        heads.get("clash.head")
    msg = str(exc.value)
    assert "'clash-calm-one'" in msg and "'clash-calm-two'" in msg
    assert any(e.name == "clash.head" for e in heads.load_errors())


def test_disable_plugins_env_hides_third_parties() -> None:
    code = (
        "import json\nfrom calm_core.registry import heads, codecs\n"
        "print(json.dumps({'heads': heads.names(), 'codecs': codecs.names(),"
        " 'errors': [e.name for e in heads.load_errors()]}))"
    )
    on = _run(code)
    off = _run(code, CALM_DISABLE_PLUGINS="1")
    assert "acme.gaussian" in on["heads"]  # type: ignore[operator]
    assert not [n for n in off["heads"] if "." in n]  # type: ignore[union-attr]
    assert off["errors"] == []
    first_party = [n for n in on["heads"] if "." not in n]  # type: ignore[union-attr]
    assert off["heads"] == first_party


def test_calm_plugins_cli_lists_providers_and_errors() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "calm_core.cli", "plugins", "--json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    data = json.loads(out)
    acme = data["heads"]["acme.gaussian"]
    assert acme["distribution"] == "acme-calm-heads" and acme["version"] == "1.2.3"
    assert set(acme["config_schema"]["properties"]) == {"width", "min_std"}
    failed = {e["name"] for e in data["errors"]}
    assert {"broken.import", "broken.not_a_head", "energyy", "clash.head", "broken.codec"} <= failed
    text = subprocess.run(
        [sys.executable, "-m", "calm_core.cli", "plugins"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "acme.gaussian  [acme-calm-heads 1.2.3]" in text and "width=32" in text
    assert "plugins that failed to load:" in text


class TestAcmeHeadConformance(HeadConformance):
    head_name = "acme.gaussian"
    head_config = {"width": 12}
    # its loss is a likelihood of target.mean alone, by design
    loss_reads_target_spread = False
