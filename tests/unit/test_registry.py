"""Plugin discovery through real entry-point metadata, blocking, isolation and conflicts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hfcompress.errors import BadInputError
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
                   "summary": "a third-party technique", "accepts_formats": ["pytorch"],
                   "produces_formats": ["pytorch"], "conflict": False}


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


def test_duplicate_technique_name_is_listed_and_fails_only_where_used(site: Path) -> None:
    make_distribution(site / "a", "hfcompress-first", {"first": "hfc_first"}, {"hfc_first": GOOD.format(name="same")})
    make_distribution(site / "b", "hfcompress-second", {"second": "hfc_second"},
                      {"hfc_second": GOOD.format(name="same")}, version="3.1")
    sys.path[:0] = [str(site / "a"), str(site / "b")]
    try:
        registry = build_registry()  # used to raise PluginError, taking every command down
    finally:
        sys.path.remove(str(site / "a"))
        sys.path.remove(str(site / "b"))
    listing = registry.as_json()
    rows = [(r["distribution"], r["version"], r["conflict"]) for r in listing["techniques"] if r["name"] == "same"]
    assert rows == [("hfcompress-first", "1.0", True), ("hfcompress-second", "3.1", True)]
    assert not next(r for r in listing["techniques"] if r["name"] == "head-pruning")["conflict"]
    (conflict,) = listing["conflicts"]
    assert (conflict["kind"], conflict["name"]) == ("technique", "same")
    assert [d["distribution"] for d in conflict["distributions"]] == ["hfcompress-first", "hfcompress-second"]
    assert listing["broken"] == []

    with pytest.raises(BadInputError) as info:
        registry.technique("same")
    message = str(info.value)
    assert "'hfcompress-first' 1.0" in message and "'hfcompress-second' 3.1" in message
    assert "Uninstall one" in message and f"{BLOCK_ENV}=first" in message and f"{BLOCK_ENV}=second" in message
    assert info.value.exit_code == 2
    assert registry.technique("head-pruning").name == "head-pruning"  # the others keep working


def test_conflicting_name_fails_recipe_validation_only_for_recipes_using_it(
        site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hfcompress.registry as registry_module
    from hfcompress.recipe import Recipe

    make_distribution(site, "hfcompress-first", {"first": "hfc_first_r"}, {"hfc_first_r": GOOD.format(name="same")})
    make_distribution(site, "hfcompress-second", {"second": "hfc_second_r"},
                      {"hfc_second_r": GOOD.format(name="same")})
    monkeypatch.setattr(registry_module, "_REGISTRY", None)  # rebuilt with the two distributions
    with pytest.raises(BadInputError) as info:
        Recipe.from_dict({"model": "m", "steps": [{"head-pruning": {"ratio": 0.25}}, {"same": {}}]})
    assert "technique 'same' is registered by 2 plugins" in str(info.value)
    assert "hfcompress-first" in str(info.value) and "hfcompress-second" in str(info.value)
    recipe = Recipe.from_dict({"model": "m", "steps": [{"head-pruning": {"ratio": 0.25}}]})
    assert [s.technique for s in recipe.steps] == ["head-pruning"]


TYPO = """
from hfcompress.plugin import Technique, hookimpl

class Typo(Technique):
    name = "typo-technique"

@hookimpl
def hfcompress_register_technique(register):  # singular: not a hook
    register(Typo)
"""

TYPO_UNDECORATED = """
def hfcompress_register_evaluator(register):  # singular, and no @hookimpl
    pass
"""


def test_misspelled_hook_name_reports_the_plugin_broken(site: Path) -> None:
    make_distribution(site, "hfcompress-typo", {"typo": "hfc_typo", "typo2": "hfc_typo_undecorated",
                                                "fine": "hfc_fine_typo"},
                      {"hfc_typo": TYPO, "hfc_typo_undecorated": TYPO_UNDECORATED,
                       "hfc_fine_typo": GOOD.format(name="fine-technique")})
    registry = build_registry()
    broken = {p.name: p.error or "" for p in registry.broken}
    assert set(broken) == {"typo", "typo2"}
    assert "'hfcompress_register_technique' is not an hfcompress hook" in broken["typo"]
    assert "did you mean 'hfcompress_register_techniques'?" in broken["typo"]
    assert "did you mean 'hfcompress_register_evaluators'?" in broken["typo2"]
    for hook in ("hfcompress_register_techniques", "hfcompress_register_evaluators",
                 "hfcompress_register_data_sources"):
        assert hook in broken["typo"]
    row = next(r for r in registry.as_json()["broken"] if r["name"] == "typo")
    assert (row["distribution"], row["version"]) == ("hfcompress-typo", "1.0")
    assert "fine-technique" in registry.techniques and "head-pruning" in registry.techniques


INSTANCE = """
from hfcompress.plugin import Technique, hookimpl

class Oops(Technique):
    name = "oops"

@hookimpl
def hfcompress_register_techniques(register):
    {call}
"""


def test_registering_an_instance_is_rejected_naming_the_plugin(site: Path) -> None:
    make_distribution(site, "hfcompress-oops", {"oops": "hfc_oops", "oops-swallowed": "hfc_oops_swallowed"},
                      {"hfc_oops": INSTANCE.format(call="register(Oops())"),
                       # a plugin that swallows the error is still reported
                       "hfc_oops_swallowed": INSTANCE.format(
                           call="try:\n        register(Oops())\n    except Exception:\n        pass")})
    registry = build_registry()
    broken = {p.name: (p.distribution, p.error or "") for p in registry.broken}
    for plugin in ("oops", "oops-swallowed"):
        distribution, error = broken[plugin]
        assert distribution == "hfcompress-oops"
        assert error.startswith("register() takes the class, not an instance: write register(Oops), "
                                "not register(Oops())"), error
    assert "oops" not in registry.techniques  # never "'Oops' object is not callable" later


def test_technique_rows_show_formats() -> None:
    from hfcompress_plugins.quantization import BACKEND_FORMAT, Quantization, QuantizationConfig

    rows = {r["name"]: r for r in build_registry().as_json()["techniques"]}
    assert (rows["head-pruning"]["accepts_formats"], rows["head-pruning"]["produces_formats"]) == (
        ["pytorch"], ["pytorch"])
    assert (rows["distillation"]["accepts_formats"], rows["distillation"]["produces_formats"]) == (
        ["pytorch"], ["pytorch"])
    assert rows["quantization"]["accepts_formats"] == ["pytorch"]
    assert rows["quantization"]["produces_formats"] == ["pytorch", "quanto", "onnx", "openvino", "onnx-genai"]
    # produces_formats is exactly what output_format can return
    assert set(Quantization.produces_formats) == set(BACKEND_FORMAT.values())
    for backend in (*BACKEND_FORMAT, "auto"):
        config = QuantizationConfig.model_validate({"backend": backend})
        assert Quantization().output_format(config) in Quantization.produces_formats


def test_plugins_command_does_not_import_torch() -> None:
    code = ("import sys; from hfcompress.cli import main; main(['plugins', '--json']); "
            "heavy = [m for m in ('torch', 'transformers', 'datasets') if m in sys.modules]; "
            "sys.stderr.write('HEAVY=' + ','.join(heavy))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stderr.strip().splitlines()[-1] == "HEAVY="
