"""Pipeline ordering, step caching, output folder and validate-before-work, on a tiny random BERT."""

from __future__ import annotations

import hashlib
import inspect
import json
import re
from pathlib import Path

import pytest
import torch

from hfcompress import compress, load
from hfcompress.errors import BadInputError
from hfcompress.recipe import Recipe
from hfcompress.registry import extra_plugins
from hfcompress.testing import techniques


@pytest.fixture(autouse=True)
def _env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("HFCOMPRESS_CACHE", str(tmp_path / "cache"))
    techniques.CALLS.clear()
    with extra_plugins(techniques):
        yield


@pytest.fixture()
def data_file(tmp_path: Path) -> str:
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps({"text": f"this is sentence {i} of the test data", "label": i % 2})
                              for i in range(60)))
    return str(path)


def _recipe(model: Path, data: str, *steps: dict, evaluators: list[str] | None = None) -> dict:
    return {"model": str(model), "data": data, "steps": list(steps),
            "evaluate": {"max_samples": 8, "repeats": 2, "warmup": 1, "sequence_length": 16,
                         "evaluators": evaluators}}


def test_steps_run_in_order_and_folder_is_complete(tiny_bert_dir: Path, data_file: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    recipe = _recipe(tiny_bert_dir, data_file, {"scale": {"factor": 2.0, "tag": "a"}},
                     {"scale": {"factor": 3.0, "tag": "b"}})
    result = compress(recipe=recipe, output_dir=out)
    assert techniques.CALLS == ["a", "b"]
    config = json.loads((out / "config.json").read_text())
    assert config["hfcompress"]["info"]["applied"] == ["a", "b"]
    for name in ("config.json", "model.safetensors", "tokenizer.json", "README.md", "results.json", "hfcompress.yaml"):
        assert (out / name).is_file(), name
    original = load(tiny_bert_dir).embeddings.word_embeddings.weight
    compressed = load(out).embeddings.word_embeddings.weight
    torch.testing.assert_close(compressed, original * 6.0)
    results = json.loads((out / "results.json").read_text())
    assert [s["technique"] for s in results["steps"]] == ["scale", "scale"]
    assert {"base", "compressed", "environment", "verification"} <= set(results)
    assert results["environment"]["threads"] == 1 and results["environment"]["sequence_length"] == 16
    # scaling weights changes no shape: both blocks count every parameter of the tiny BERT
    expected_parameters = sum(p.numel() for p in load(tiny_bert_dir).parameters())
    assert expected_parameters > 0
    assert results["base"]["num_parameters"] == results["compressed"]["num_parameters"] == expected_parameters
    assert results["compressed"]["settings"]["speed_sequence_length"] == 16  # conditions apart from measurements
    assert "speed_sequence_length" not in results["compressed"]["metrics"]
    again = Recipe.load(out / "hfcompress.yaml")
    assert again == result.recipe and again.provenance and "torch" in again.provenance["packages"]
    assert not list(tmp_path.glob(".out*")), "no scratch left next to the output folder"


def test_unchanged_prefix_is_not_recomputed(tiny_bert_dir: Path, data_file: str, tmp_path: Path) -> None:
    a, b, c = ({"scale": {"factor": f, "tag": t}} for f, t in ((2.0, "a"), (3.0, "b"), (5.0, "c")))

    def recipe(*steps: dict) -> dict:  # caching is about steps: evaluate fidelity only, to stay fast
        return _recipe(tiny_bert_dir, data_file, *steps, evaluators=["fidelity"])

    compress(recipe=recipe(a, b), output_dir=tmp_path / "o1")
    assert techniques.CALLS == ["a", "b"]
    techniques.CALLS.clear()
    compress(recipe=recipe(a, c), output_dir=tmp_path / "o2")
    assert techniques.CALLS == ["c"]  # step a came from the cache
    techniques.CALLS.clear()
    result = compress(recipe=recipe(a, b), output_dir=tmp_path / "o1")
    assert techniques.CALLS == []
    assert [s["cached"] for s in result.results["steps"]] == [True, True]
    w1 = load(tmp_path / "o1").embeddings.word_embeddings.weight
    w2 = load(tmp_path / "o2").embeddings.word_embeddings.weight
    torch.testing.assert_close(w2, w1 / 3.0 * 5.0)
    techniques.CALLS.clear()
    compress(recipe=recipe(a, b), output_dir=tmp_path / "o3", use_cache=False)
    assert techniques.CALLS == ["a", "b"]


def test_bad_input_fails_before_work_and_writes_nothing(tiny_bert_dir: Path, data_file: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(BadInputError, match="'factr'"):
        compress(recipe=_recipe(tiny_bert_dir, data_file, {"scale": {"factr": 2}}), output_dir=out)
    with pytest.raises(BadInputError, match="text_column 'sentence' does not exist"):
        bad = _recipe(tiny_bert_dir, data_file, {"scale": {"tag": "x"}})
        bad["data"] = {"source": data_file, "text_column": "sentence"}
        compress(recipe=bad, output_dir=out)
    with pytest.raises(BadInputError, match="no config.json"):
        compress(recipe=_recipe(tmp_path, data_file), output_dir=out)
    assert techniques.CALLS == [] and not out.exists()


@pytest.mark.parametrize(("gate", "evaluators", "needle"), [
    ({"max_drop": {"no_such_metric": 0.1}}, None, "gate.max_drop.no_such_metric: no evaluator that will run"),
    ({"min": {"no_such_metric": 0.5}}, ["speed"], "gate.min.no_such_metric"),
    ({"max_drop": {"speed_threads": 0}}, None, "'speed_threads' is a setting"),
    ({"max_drop": {"accuracy": 0.1}}, ["speed"], "speed: latency_ms, latency_p95_ms"),  # task-metrics will not run
])
def test_a_gate_on_an_undeclared_metric_fails_before_work(tiny_bert_dir: Path, data_file: str, tmp_path: Path,
                                                          gate: dict, evaluators: list[str] | None, needle: str) -> None:
    out = tmp_path / "out"
    recipe = _recipe(tiny_bert_dir, data_file, {"scale": {"factor": 2.0, "tag": "a"}}, evaluators=evaluators)
    recipe["gate"] = gate
    with pytest.raises(BadInputError, match=re.escape(needle)):
        compress(recipe=recipe, output_dir=out)
    assert techniques.CALLS == [] and not out.exists()
    assert not list(tmp_path.glob(".out*"))


def test_an_unknown_evaluator_fails_before_work(tiny_bert_dir: Path, data_file: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(BadInputError, match="evaluate.evaluators: unknown evaluator 'sped'"):
        compress(recipe=_recipe(tiny_bert_dir, data_file, {"scale": {"tag": "a"}}, evaluators=["sped"]), output_dir=out)
    assert techniques.CALLS == [] and not out.exists()


def test_refuses_to_overwrite_a_foreign_folder(tiny_bert_dir: Path, data_file: str, tmp_path: Path) -> None:
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(BadInputError, match="not an hfcompress output folder"):
        compress(recipe=_recipe(tiny_bert_dir, data_file), output_dir=out)
    assert (out / "notes.txt").read_text() == "mine"


def test_step_cache_key_covers_a_technique_package_not_only_its_module(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A technique split into modules (technique.py, trainer.py, ...): editing any of them is new code."""
    import importlib

    from hfcompress.pipeline import _code_digest

    pkg = tmp_path / "hfc_split_technique"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "trainer.py").write_text("STEPS = 1\n")
    (pkg / "technique.py").write_text("from . import trainer\n\nclass Split:\n    name = 'split'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cls = importlib.import_module("hfc_split_technique.technique").Split
    before = _code_digest(cls)
    assert before == _code_digest(cls)  # deterministic
    (pkg / "trainer.py").write_text("STEPS = 2\n")
    assert _code_digest(cls) != before
    # A flat built-in module shares the hfcompress_plugins folder with every other plugin: only its file counts.
    from hfcompress_plugins.eval_speed import Speed

    assert _code_digest(Speed) == hashlib.sha256(Path(inspect.getsourcefile(Speed) or "").read_bytes()).hexdigest()


def test_a_run_that_fails_while_writing_leaves_no_folder_behind(
    tiny_bert_dir: Path, data_file: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    import hfcompress.card

    def broken_card(*args: object, **kwargs: object) -> None:
        raise RuntimeError("card writer broke")

    monkeypatch.setattr(hfcompress.card, "write_card", broken_card)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="card writer broke"):
        compress(recipe=_recipe(tiny_bert_dir, data_file, {"scale": {"factor": 2.0, "tag": "a"}}), output_dir=out)
    assert not out.exists()
    assert not list(tmp_path.glob(".out.tmp-*"))  # the scratch copy is gone too
