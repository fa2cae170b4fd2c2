"""Plugin discovery through real entry-point metadata, blocking, isolation and conflicts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hfcompress.errors import PluginError
from hfcompress.registry import BLOCK_ENV, build_registry
from hfcompress.testing.distributions import make_distribution

GOOD = """
from hfcompress.plugin import Technique, TechniqueConfig, hookimpl

class DropNothing(Technique):
    name = "{name}"
    summary = "a third-party technique"

@hookimpl
def hfcompress_register_techniques(register):
    register(DropNothing)
"""


@pytest.fixture()
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_builtin_plugins_come_from_entry_points() -> None:
    registry = build_registry()
    assert registry.data_sources["vader"].plugin.distribution == "hfcompress"
    assert registry.data_sources["vader"].plugin.name == "vader"


def test_third_party_distribution_discovered(site: Path) -> None:
    make_distribution(site, "hfcompress-dropnothing", {"dropnothing": "hfc_dropnothing"},
                      {"hfc_dropnothing": GOOD.format(name="drop-nothing")}, version="2.5")
    registry = build_registry()
    reg = registry.techniques["drop-nothing"]
    assert (reg.plugin.distribution, reg.plugin.version, reg.summary) == (
        "hfcompress-dropnothing", "2.5", "a third-party technique")
    row = next(r for r in registry.as_json()["techniques"] if r["name"] == "drop-nothing")
    assert row == {"name": "drop-nothing", "distribution": "hfcompress-dropnothing", "version": "2.5",
                   "summary": "a third-party technique"}


def test_blocked_plugin_is_not_loaded(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_distribution(site, "hfcompress-blockme", {"blockme": "hfc_blockme"},
                      {"hfc_blockme": GOOD.format(name="block-me")})
    monkeypatch.setenv(BLOCK_ENV, "blockme, vader")
    registry = build_registry()
    assert "block-me" not in registry.techniques
    assert "vader" not in registry.data_sources
    monkeypatch.setenv(BLOCK_ENV, "hfcompress-blockme")  # a distribution name works too
    assert "block-me" not in build_registry().techniques


def test_broken_plugins_are_isolated_and_named(site: Path) -> None:
    make_distribution(site, "hfcompress-broken", {"broken-import": "hfc_broken_import",
                                                  "broken-hook": "hfc_broken_hook",
                                                  "fine": "hfc_fine"},
                      {"hfc_broken_import": "import does_not_exist_anywhere\n",
                       "hfc_broken_hook": "from hfcompress.plugin import hookimpl\n\n@hookimpl\n"
                                          "def hfcompress_register_techniques(register):\n    raise RuntimeError('boom')\n",
                       "hfc_fine": GOOD.format(name="still-works")})
    registry = build_registry()
    broken = {p.name: p.error for p in registry.broken}
    assert "does_not_exist_anywhere" in broken["broken-import"]
    assert "boom" in broken["broken-hook"]
    assert "still-works" in registry.techniques
    assert "vader" in registry.data_sources


def test_duplicate_technique_names_both_distributions(site: Path) -> None:
    make_distribution(site / "a", "hfcompress-first", {"first": "hfc_first"}, {"hfc_first": GOOD.format(name="same")})
    make_distribution(site / "b", "hfcompress-second", {"second": "hfc_second"},
                      {"hfc_second": GOOD.format(name="same")})
    sys.path[:0] = [str(site / "a"), str(site / "b")]
    try:
        with pytest.raises(PluginError) as info:
            build_registry()
    finally:
        sys.path.remove(str(site / "a"))
        sys.path.remove(str(site / "b"))
    assert "hfcompress-first" in str(info.value) and "hfcompress-second" in str(info.value)


def test_plugins_command_does_not_import_torch() -> None:
    code = ("import sys; from hfcompress.cli import main; main(['plugins', '--json']); "
            "heavy = [m for m in ('torch', 'transformers', 'datasets') if m in sys.modules]; "
            "sys.stderr.write('HEAVY=' + ','.join(heavy))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stderr.strip().splitlines()[-1] == "HEAVY="
