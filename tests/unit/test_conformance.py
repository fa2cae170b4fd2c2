"""The conformance kit passes a correct technique and names what is broken in broken ones."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from pydantic import ConfigDict, Field, field_serializer, model_validator

from hfcompress.plugin import (
    BadInputError,
    ModelState,
    ModelTarget,
    StepContext,
    StepResult,
    Technique,
    TechniqueConfig,
)
from hfcompress.testing.conformance import (
    ConformanceError,
    check_class,
    check_light_import,
    check_technique,
    make_tiny_models,
)
from hfcompress.testing.techniques import Scale, ScaleConfig

pytest_plugins = ["pytester"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_tiny_models(tmp_path_factory.mktemp("tiny-models"))


def _check(cls: Any, tmp_path: Path, tiny: dict[str, Path], configs: Any = None, **kwargs: Any) -> Any:
    kwargs.setdefault("families", ("bert",))
    kwargs.setdefault("light_import", False)  # classes defined in this test module
    return check_technique(cls, configs=configs or [{}], tmp_path=tmp_path, models=tiny, **kwargs)


# -- a correct technique ----------------------------------------------------------------------


def test_kit_passes_a_correct_technique(tmp_path: Path, tiny: dict[str, Path]) -> None:
    report = check_technique(
        Scale, configs=[{"factor": 0.5}, ScaleConfig(factor=2.0, tag="x")], bad_configs=[{"factor": 0}, {"factor": "big"}],
        tmp_path=tmp_path, models=tiny,
    )
    assert [(c.family, c.accepted) for c in report.cases] == [
        ("bert", True), ("bert-classifier", True), ("llama", True)] * 2
    assert all(c.max_abs_diff == 0.0 and c.format == "pytorch" for c in report.cases)
    assert [c.changes for c in report.cases] == [{"factor": 0.5}] * 3 + [{"factor": 2.0}] * 3
    assert [m for _, m in report.bad_configs] and all("factor" in m for _, m in report.bad_configs)
    assert "bert-classifier" in report.summary()


# -- broken techniques: each one is caught with a message that says what is wrong ---------------


class LaxConfig(TechniqueConfig):
    model_config = ConfigDict(extra="ignore")  # a misspelled field would silently do nothing
    factor: float = 1.0


class LaxTechnique(Scale):
    name = "lax"
    Config = LaxConfig  # type: ignore[assignment]


def test_config_without_extra_forbid_is_caught(tmp_path: Path, tiny: dict[str, Path]) -> None:
    with pytest.raises(ConformanceError, match=r"technique 'lax' .*extra='ignore'.*misspelled field"):
        _check(LaxTechnique, tmp_path, tiny)


class SwallowingConfig(TechniqueConfig):
    factor: float = 1.0

    @model_validator(mode="before")
    @classmethod
    def _only_known(cls, data: Any) -> Any:  # drops unknown keys before extra="forbid" can see them
        return {k: v for k, v in dict(data).items() if k in cls.model_fields}


class SwallowingTechnique(Scale):
    name = "swallowing"
    Config = SwallowingConfig  # type: ignore[assignment]


def test_validator_that_swallows_unknown_fields_is_caught(tmp_path: Path, tiny: dict[str, Path]) -> None:
    with pytest.raises(ConformanceError, match="unknown field 'no_such_field_conformance' was accepted"):
        _check(SwallowingTechnique, tmp_path, tiny)


class HookedScale(Technique[TechniqueConfig]):
    """Scales outputs with a forward hook: works in memory, but hooks are not saved."""

    name = "hooked-scale"
    summary = "scale the output with a forward hook (broken: does not survive saving)"

    def apply(self, state: ModelState, config: TechniqueConfig, ctx: StepContext) -> StepResult:
        def hook(module: Any, args: Any, output: Any) -> Any:
            output.last_hidden_state.mul_(3.0)
            return output

        state.model.register_forward_hook(hook)
        return StepResult(state, {"scaled": 3.0})


def test_output_that_does_not_reload_is_caught(tmp_path: Path, tiny: dict[str, Path]) -> None:
    with pytest.raises(ConformanceError, match=r"reloaded model's outputs differ .* by up to [0-9.]+ \(atol 0.0001\) "
                                               r"on config \{\} on the tiny bert model"):
        _check(HookedScale, tmp_path, tiny)


class TensorChanges(Technique[TechniqueConfig]):
    name = "tensor-changes"
    summary = "reports a tensor in changes (broken)"

    def apply(self, state: ModelState, config: TechniqueConfig, ctx: StepContext) -> StepResult:
        import torch

        norm = torch.stack([p.norm() for p in state.model.parameters()]).sum()
        return StepResult(state, {"layers": [{"norm": norm}]})


def test_changes_that_are_not_json_are_caught(tmp_path: Path, tiny: dict[str, Path]) -> None:
    with pytest.raises(ConformanceError, match=r"not JSON-serializable .*changes\['layers'\]\[0\]\['norm'\] is a torch.Tensor"):
        _check(TensorChanges, tmp_path, tiny)


class NanChanges(Technique[TechniqueConfig]):
    name = "nan-changes"
    summary = "reports NaN (broken)"

    def apply(self, state: ModelState, config: TechniqueConfig, ctx: StepContext) -> StepResult:
        return StepResult(state, {"loss": float("nan")})


def test_nan_in_changes_is_caught(tmp_path: Path, tiny: dict[str, Path]) -> None:
    with pytest.raises(ConformanceError, match=r"changes\['loss'\] = nan \(NaN/inf is not valid JSON\)"):
        _check(NanChanges, tmp_path, tiny)


class BertOnly(Scale):
    """Rejects Llama with the wrong exception type."""

    name = "bert-only"

    def check(self, config: Any, target: ModelTarget) -> None:
        if target.model_type != "bert":
            raise KeyError(target.model_type)


def test_check_raising_something_else_than_bad_input_is_caught(tmp_path: Path, tiny: dict[str, Path]) -> None:
    with pytest.raises(ConformanceError, match=r"check\(\) raised KeyError on config .* tiny llama model"):
        _check(BertOnly, tmp_path, tiny, configs=[{"factor": 0.5}], families=("bert", "llama"))


class VagueRejection(Scale):
    name = "vague"

    def check(self, config: Any, target: ModelTarget) -> None:
        if target.model_type == "llama":
            raise BadInputError("not supported")


def test_rejection_that_does_not_name_the_model_is_caught(tmp_path: Path, tiny: dict[str, Path]) -> None:
    with pytest.raises(ConformanceError, match=r"does not name the model: 'not supported'.*\n  fix: .*LlamaForCausalLM"):
        _check(VagueRejection, tmp_path, tiny, families=("bert", "llama"))


class RejectsEverything(Scale):
    name = "rejects-everything"

    def check(self, config: Any, target: ModelTarget) -> None:
        raise BadInputError(f"rejects-everything does not support {target.architecture}")


def test_config_rejected_on_every_family_is_caught(tmp_path: Path, tiny: dict[str, Path]) -> None:
    with pytest.raises(ConformanceError, match="rejected by check\\(\\) on every tiny model"):
        _check(RejectsEverything, tmp_path, tiny, families=("bert", "llama"))


def test_bad_config_that_is_accepted_is_caught(tmp_path: Path, tiny: dict[str, Path]) -> None:
    with pytest.raises(ConformanceError, match=r"bad config \{'factor': 1.0\} is accepted by recipe validation and by "
                                               r"check\(\) on the tiny bert model"):
        _check(Scale, tmp_path, tiny, configs=[{"factor": 2.0}], bad_configs=[{"factor": 1.0}])


class CrashesInApply(Scale):
    name = "crashes"

    def apply(self, state: ModelState, config: Any, ctx: StepContext) -> StepResult:
        raise RuntimeError("shape mismatch in layer 3")


def test_apply_failing_after_check_accepted_is_caught(tmp_path: Path, tiny: dict[str, Path]) -> None:
    with pytest.raises(ConformanceError, match="apply\\(\\) raised RuntimeError .* shape mismatch in layer 3") as info:
        _check(CrashesInApply, tmp_path, tiny)
    assert "reject unsupported cases in check()" in str(info.value)


class FormatLie(Scale):
    name = "format-lie"

    def output_format(self, config: Any) -> str:
        return "onnx"


def test_state_format_different_from_output_format_is_caught(tmp_path: Path, tiny: dict[str, Path]) -> None:
    with pytest.raises(ConformanceError, match="produced format 'pytorch' .* output_format\\(\\) promised 'onnx'"):
        _check(FormatLie, tmp_path, tiny)


class ShoutingConfig(TechniqueConfig):
    level: int = Field(1, ge=1)

    @field_serializer("level")
    def _pretty(self, value: int) -> str:  # dumps something that does not validate back
        return f"level-{value}"


class Shouting(Scale):
    name = "shouting"
    Config = ShoutingConfig  # type: ignore[assignment]


def test_config_that_does_not_round_trip_through_yaml_is_caught(tmp_path: Path, tiny: dict[str, Path]) -> None:
    with pytest.raises(ConformanceError, match="(?s)does not survive a YAML round trip.*level: level-2"):
        _check(Shouting, tmp_path, tiny, configs=[{"level": 2}])


def test_class_level_contract() -> None:
    class NoName(Technique[TechniqueConfig]):
        summary = "x"

    class BadName(Scale):
        name = "Bad Name"

    class NoSummary(Scale):
        name = "no-summary"
        summary = ""

    class NotAConfig(Scale):
        name = "not-a-config"
        Config = dict  # type: ignore[assignment]

    with pytest.raises(ConformanceError, match="is not a subclass of hfcompress.plugin.Technique"):
        check_class(object)
    with pytest.raises(ConformanceError, match="name None is not a lower-case hyphenated identifier"):
        check_class(NoName)
    with pytest.raises(ConformanceError, match="name 'Bad Name' is not"):
        check_class(BadName)
    with pytest.raises(ConformanceError, match="summary is empty"):
        check_class(NoSummary)
    with pytest.raises(ConformanceError, match="is not a TechniqueConfig subclass"):
        check_class(NotAConfig)
    assert isinstance(check_class(Scale), Scale)


def test_name_clash_with_an_installed_plugin_is_caught(tmp_path: Path, tiny: dict[str, Path]) -> None:
    class FakeVader(Scale):  # 'vader' is a data source; take a technique name that is installed
        pass

    from hfcompress.registry import get_registry

    installed = sorted(get_registry().techniques)
    if not installed:
        pytest.skip("no technique plugin installed")
    FakeVader.name = installed[0]
    with pytest.raises(ConformanceError, match=f"the name '{installed[0]}' is already registered by distribution"):
        _check(FakeVader, tmp_path, tiny)


def test_heavy_import_at_module_level_is_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "heavy_plugin.py").write_text("import torch\n\nVALUE = 1\n")
    (tmp_path / "light_plugin.py").write_text("from hfcompress.plugin import hookimpl\n\nVALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConformanceError, match="importing 'heavy_plugin' imports torch") as info:
        check_light_import("heavy_plugin")
    assert "import heavy libraries inside apply()" in str(info.value)
    check_light_import("light_plugin")


# -- the kit itself stays light, and its pytest fixtures work ----------------------------------


def test_testing_kit_imports_no_heavy_library() -> None:
    code = ("import sys, hfcompress.testing, hfcompress.testing.conformance, hfcompress.testing.pytest_plugin; "
            "from hfcompress.testing import check_technique; "
            "print(','.join(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == ""


def test_pytest_fixtures_for_plugin_authors(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_fixtures=textwrap.dedent("""
        import json, os
        pytest_plugins = ["hfcompress.testing.pytest_plugin"]

        def test_fixtures(tiny_bert_dir, tiny_llama_dir, tiny_models, text_data_file, hfcompress_cache):
            assert json.loads((tiny_bert_dir / "config.json").read_text())["num_hidden_layers"] == 2
            assert json.loads((tiny_llama_dir / "config.json").read_text())["model_type"] == "llama"
            assert set(tiny_models) == {"bert", "bert-classifier", "llama"}
            rows = [json.loads(line) for line in text_data_file.read_text().splitlines()]
            assert len(rows) == 90 and sum(r["label"] for r in rows) == 44
            assert os.environ["HFCOMPRESS_CACHE"] == str(hfcompress_cache)
            assert os.environ["HF_HUB_OFFLINE"] == "1"
    """))
    result = pytester.runpytest_inprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


@pytest.mark.slow
def test_end_to_end_runs_compress_with_the_technique(tmp_path: Path, tiny: dict[str, Path]) -> None:
    report = check_technique(Scale, configs=[{"factor": 0.5}], tmp_path=tmp_path, models=tiny, families=("bert",),
                             end_to_end=True)
    results = report.end_to_end
    assert results is not None
    assert [(s["technique"], s["changes"]) for s in results["steps"]] == [("scale", {"factor": 0.5})]
    assert results["compressed"]["num_parameters"] == results["base"]["num_parameters"]
    assert 0.0 < results["compressed"]["metrics"]["fidelity_cosine_mean"] <= 1.0
