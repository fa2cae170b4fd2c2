"""Recipe parsing and validation: errors name the step, the field and the allowed values."""

from __future__ import annotations

from pathlib import Path

import pytest

from hfcompress.errors import BadInputError
from hfcompress.recipe import Recipe
from hfcompress.registry import extra_plugins
from hfcompress.testing import techniques


@pytest.fixture(autouse=True)
def _test_techniques():  # type: ignore[no-untyped-def]
    with extra_plugins(techniques) as registry:
        yield registry


def test_steps_are_validated_and_defaults_filled() -> None:
    recipe = Recipe.from_dict({"model": "m", "steps": [{"scale": {"factor": 2}}, {"scale": None}]})
    assert [s.technique for s in recipe.steps] == ["scale", "scale"]
    assert recipe.steps[0].config.factor == 2.0
    assert recipe.to_dict()["steps"][1] == {"scale": {"factor": 1.0, "tag": ""}}


def test_misspelled_field_names_step_field_and_allowed() -> None:
    with pytest.raises(BadInputError) as info:
        Recipe.from_dict({"model": "m", "steps": [{"scale": {"factr": 2}}]})
    msg = str(info.value)
    assert "steps[0] (scale)" in msg and "'factr'" in msg and "factor, tag" in msg


def test_bad_value_names_field_and_bound() -> None:
    with pytest.raises(BadInputError, match=r"steps\[0\] \(scale\)\.factor: Input should be greater than 0"):
        Recipe.from_dict({"model": "m", "steps": [{"scale": {"factor": -1}}]})


def test_unknown_technique_lists_available() -> None:
    with pytest.raises(BadInputError, match="unknown technique 'prune-everything'; available techniques: .*scale"):
        Recipe.from_dict({"model": "m", "steps": [{"prune-everything": {}}]})


def test_step_must_be_one_key_mapping() -> None:
    with pytest.raises(BadInputError, match="one-key mapping"):
        Recipe.from_dict({"model": "m", "steps": [{"scale": {}, "to-frozen": {}}]})


def test_unknown_top_level_field() -> None:
    with pytest.raises(BadInputError, match="unknown field 'stepz'; allowed fields: model"):
        Recipe.from_dict({"model": "m", "stepz": []})


def test_bad_task_lists_allowed() -> None:
    with pytest.raises(BadInputError, match="recipe.task.*'feature-extraction'"):
        Recipe.from_dict({"model": "m", "task": "translation"})


def test_formats_only_move_forward() -> None:
    with pytest.raises(BadInputError, match=r"steps\[1\] \(scale\) needs a pytorch model.*steps\[0\] \(to-frozen\)"):
        Recipe.from_dict({"model": "m", "steps": [{"to-frozen": {}}, {"scale": {}}]})


def test_yaml_round_trip_is_equal(tmp_path: Path) -> None:
    recipe = Recipe.from_dict({"model": "builtin:all-MiniLM-L6-v2", "data": "vader:movie", "seed": 3,
                               "steps": [{"scale": {"factor": 0.5, "tag": "x"}}, {"to-frozen": {}}],
                               "gate": {"max_drop": {"cosine": 0.01}}, "provenance": {"packages": {"torch": "2"}}})
    path = tmp_path / "hfcompress.yaml"
    recipe.dump(path)
    again = Recipe.load(path)
    assert again == recipe
    assert again.data is not None and again.data.source == "vader:movie"


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="no such file"):
        Recipe.load(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [\n")
    with pytest.raises(BadInputError, match="not valid YAML"):
        Recipe.load(bad)


def test_default_recipe_and_every_technique_round_trip(_test_techniques) -> None:  # type: ignore[no-untyped-def]
    import yaml

    default = Recipe.default()
    assert [s.technique for s in default.steps] == ["head-pruning", "distillation", "quantization"]
    assert Recipe.from_dict(yaml.safe_load(default.dump())) == default
    minimal = {"head-pruning": {"ratio": 0.25}}  # the rest accept an empty config
    for name in _test_techniques.techniques:  # a resolved recipe writes every default: it must load back
        recipe = Recipe.from_dict({"model": "m", "steps": [{name: minimal.get(name, {})}]})
        assert Recipe.from_dict(yaml.safe_load(recipe.dump())) == recipe, name


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[2] / "examples" / "recipes").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_example_recipes_validate(path: Path) -> None:
    """The documented presets load and validate as written (fields, candidates, gate metrics)."""
    from hfcompress.pipeline import plan

    recipe = Recipe.load(path)
    plan(recipe)  # the same checks `hfcompress run` makes before any weights load
