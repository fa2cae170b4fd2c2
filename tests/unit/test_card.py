"""The evaluation card: parses with huggingface_hub, model-index round-trips, numbers are results.json's."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from huggingface_hub import ModelCard
from huggingface_hub.repocard_data import model_index_to_eval_results

from hfcompress.artifact import load_state, save_state
from hfcompress.card import base_license, base_model_id, base_model_relation, fmt, write_card
from hfcompress.data import DataConfig, load_data
from hfcompress.evaluation import TOP_LEVEL, compare_blocks, evaluate_state, metric_declarations
from hfcompress.plugin import EvalSettings

NUMBER = re.compile(r"(?<![\w.])[-+]?\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?")


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A real evaluation: a tiny classifier vs a perturbed copy of it, on the held-out part of a file."""
    from hfcompress.testing.models import make_tiny_bert

    root = tmp_path_factory.mktemp("card")
    rows = [{"text": f"review {i}: {'great' if i % 2 else 'awful'} film", "label": i % 2} for i in range(60)]
    data_file = root / "reviews.jsonl"
    data_file.write_text("\n".join(json.dumps(r) for r in rows))
    spec = DataConfig(source=str(data_file))
    splits = load_data(spec)
    base_dir = make_tiny_bert(root / "base", task="text-classification")
    settings = EvalSettings(batch_size=4, sequence_length=16, warmup=1, repeats=3)
    base_block, base_ctx = evaluate_state(load_state(base_dir), splits.eval, settings, base_dir)
    compressed = load_state(base_dir)
    with torch.no_grad():
        for p in compressed.model.parameters():
            p.add_(torch.randn_like(p) * 0.3 * p.std())
    out = root / "out"
    save_state(compressed, out)
    comp_block, _ = evaluate_state(compressed, splits.eval, settings, out, reference=base_ctx)
    recipe = {"model": str(base_dir), "data": spec.model_dump(exclude_none=True),
              "steps": [{"distillation": {"max_steps": 3}}], "evaluate": settings.model_dump(), "seed": 0}
    results = {
        "hfcompress_version": "0.1.0", "model": str(base_dir), "task": "text-classification",
        "data": {"spec": spec.model_dump(exclude_none=True), "train_samples": len(splits.train),
                 "eval_samples": len(splits.eval), "evaluated_samples": len(splits.eval), "fingerprint": splits.fingerprint},
        "base": base_block, "compressed": comp_block,
        "comparison": compare_blocks(base_block, comp_block),
        "steps": [{"technique": "distillation", "config": {"max_steps": 3}, "seconds": 1.25, "format": "pytorch",
                   "changes": {"steps": 3, "final_loss": 0.4125, "loss_history": [0.9, 0.7, 0.5, 0.45, 0.43, 0.42, 0.41]}}],
        "environment": {"packages": {"python": "3.11.7", "torch": "2.13.0"}, "device": "cpu",
                        "device_name": "test CPU", "threads": 1, "batch_size": 4, "sequence_length": 16},
    }
    (out / "results.json").write_text(json.dumps(results))
    path = write_card(out, results, recipe)
    return {"path": path, "results": results, "recipe": recipe, "out": out, "root": root}


def _front_and_body(path: Path) -> tuple[str, str]:
    text = path.read_text()
    _, front, body = text.split("---\n", 2)
    return front, body


def test_card_parses_with_huggingface_hub(evaluated: dict[str, Any]) -> None:
    card = ModelCard.load(evaluated["path"])
    assert card.data.pipeline_tag == "text-classification"
    assert {"hfcompress", "compressed", "distillation"} <= set(card.data.tags)
    assert card.data.base_model is None  # a local folder has no Hub id
    assert "## Base vs compressed" in card.text and "hfcompress run hfcompress.yaml" in card.text


def test_model_index_holds_the_compressed_metrics(evaluated: dict[str, Any]) -> None:
    card = ModelCard.load(evaluated["path"])
    name, results = model_index_to_eval_results(card.data.to_dict()["model-index"])
    assert name == "out"
    comp = evaluated["results"]["compressed"]
    expected = {k: comp[k] for k in TOP_LEVEL if comp[k] is not None}
    expected.update(comp["metrics"])  # measurements only: the settings are in comp["settings"]
    assert {r.metric_type: r.metric_value for r in results} == expected
    assert {"accuracy", "f1", "fidelity_kl", "fidelity_top1_agreement", "size_bytes"} <= set(expected)
    spec = evaluated["results"]["data"]["spec"]["source"]
    assert all(r.task_type == "text-classification" and r.dataset_type == spec for r in results)
    assert all(r.dataset_split == "held-out" for r in results)


def _numbers(obj: Any) -> set[str]:
    """Every number in a JSON-like object, formatted as the card formats it, plus digits in strings."""
    out: set[str] = set()
    if isinstance(obj, dict):
        for value in obj.values():
            out |= _numbers(value)
    elif isinstance(obj, list):
        for value in obj:
            out |= _numbers(value)
    elif isinstance(obj, bool):
        pass
    elif isinstance(obj, (int, float)):
        out.add(fmt(obj))
    elif isinstance(obj, str):
        out |= {m.lstrip("+") for m in NUMBER.findall(obj)}
    return out


def test_every_number_on_the_card_is_from_results_json(evaluated: dict[str, Any]) -> None:
    _, body = _front_and_body(evaluated["path"])
    prose = re.sub(r"```.*?```", "", body, flags=re.S)  # code: the recipe (checked below) and snippets
    # the labels the evaluators and data sources declare are prose, not measurements ("top-1", "p95")
    from hfcompress.registry import get_registry

    sources = get_registry().data_sources.values()
    fixed_text = " ".join([*(m.title for m in metric_declarations().values()),
                           *(f"{r.cls.description} {r.cls.license}" for r in sources)])
    allowed = _numbers(evaluated["results"]) | _numbers(fixed_text)
    found = {m.lstrip("+") for m in NUMBER.findall(prose)}
    assert found, "the card shows no numbers"
    assert found - allowed == set(), f"numbers on the card that are not in results.json: {found - allowed}"
    # the recipe block is the resolved recipe, verbatim
    recipe_block = re.search(r"```yaml\n(.*?)```", body, flags=re.S)
    assert recipe_block is not None and yaml.safe_load(recipe_block.group(1)) == evaluated["recipe"]


def test_table_rows_equal_results_json(evaluated: dict[str, Any]) -> None:
    _, body = _front_and_body(evaluated["path"])
    base, comp = evaluated["results"]["base"], evaluated["results"]["compressed"]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:5]]
            for line in body.splitlines() if line.startswith("| ") and line.count("|") >= 5}
    shown = 0
    for name, metric in metric_declarations().items():
        b = base.get(name) if name in TOP_LEVEL else base["metrics"].get(name)
        c = comp.get(name) if name in TOP_LEVEL else comp["metrics"].get(name)
        if metric.setting:
            assert metric.title not in rows and b is None and c is None, name  # settings are never table rows
            continue
        if b is None and c is None:
            continue
        shown += 1
        cells = rows[metric.title.replace("|", "\\|")]
        assert cells[0] == fmt(b) and cells[1] == fmt(c), (name, cells)
        delta = evaluated["results"]["comparison"]["metrics"].get(name)
        if delta is not None:
            assert fmt(abs(delta["change"])) in cells[2]
    assert shown >= 10
    speedup = evaluated["results"]["comparison"]["speedup"]
    assert speedup == pytest.approx(base["latency_ms"] / comp["latency_ms"], rel=1e-5)
    assert f"{fmt(speedup)}×" in rows["Speedup"][2]


def test_plot_is_written_and_referenced(evaluated: dict[str, Any]) -> None:
    png = evaluated["out"] / "evaluation.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert "](evaluation.png)" in evaluated["path"].read_text()


def test_pytorch_snippet_runs(evaluated: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    _, body = _front_and_body(evaluated["path"])
    code = re.search(r"## How to use.*?```python\n(.*?)```", body, flags=re.S)
    assert code is not None and "trust_remote_code" not in code.group(1)
    monkeypatch.chdir(evaluated["root"])
    scope: dict[str, Any] = {}
    exec(code.group(1), scope)
    assert scope["predicted"].shape == (1,)


@pytest.mark.parametrize(
    ("marker", "extra", "expected"),
    [
        ({"format": "onnx"}, {}, ["InferenceSession", "import onnxruntime", "hfcompress.load"]),
        ({"format": "quanto"}, {}, ["hfcompress.load", "hfcompress[quanto]"]),
        ({"format": "pytorch", "loader": "head-pruning"}, {"auto_map": {"AutoModel": "x.Y"}}, ["trust_remote_code=True"]),
    ],
)
def test_load_snippet_follows_the_format(evaluated: dict[str, Any], tmp_path: Path, marker: dict[str, Any],
                                          extra: dict[str, Any], expected: list[str]) -> None:
    folder = tmp_path / "variant"
    shutil.copytree(evaluated["out"], folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(extra)
    config["hfcompress"] = {**config["hfcompress"], **marker}
    (folder / "config.json").write_text(json.dumps(config))
    recipe = {**evaluated["recipe"], "push": {"repo_id": "org/tiny-compressed"}}
    text = write_card(folder, evaluated["results"], recipe).read_text()
    usage = text.split("## How to use")[1].split("## How to reproduce")[0]
    for needle in expected:
        assert needle in usage
    assert "org/tiny-compressed" in usage
    assert ModelCard.load(folder / "README.md").data.to_dict()["model-index"][0]["name"] == "org/tiny-compressed"


def test_builtin_base_gets_hub_id_license_and_relation(evaluated: dict[str, Any], tmp_path: Path) -> None:
    folder = tmp_path / "builtin"
    shutil.copytree(evaluated["out"], folder)
    results = {**evaluated["results"], "model": "builtin:all-MiniLM-L6-v2",
               "steps": [*evaluated["results"]["steps"],
                         {"technique": "quantization", "config": {}, "seconds": 1.0, "format": "onnx", "changes": {}}]}
    write_card(folder, results, {**evaluated["recipe"], "model": "builtin:all-MiniLM-L6-v2"})
    data = ModelCard.load(folder / "README.md").data
    assert data.base_model == "sentence-transformers/all-MiniLM-L6-v2"
    assert data.license == "apache-2.0"  # from the packaged model's own card
    assert data.base_model_relation == "quantized"


def test_relation_rules() -> None:
    assert base_model_relation([]) is None
    assert base_model_relation([{"technique": "head-pruning"}, {"technique": "distillation"}]) == "finetune"
    assert base_model_relation([{"technique": "distillation"}, {"technique": "quantization"}]) == "quantized"
    assert base_model_relation([{"technique": "head-pruning"}], output_format="quanto") == "quantized"


def test_base_model_ids_and_licenses(tmp_path: Path) -> None:
    assert base_model_id("builtin:SmolLM2-135M") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert base_model_id("bert-base-uncased") == "bert-base-uncased"
    assert base_model_id("org/model") == "org/model"
    assert base_model_id(str(tmp_path)) is None
    (tmp_path / "README.md").write_text("---\nlicense: mit\n---\n# a model\n")
    assert base_license(str(tmp_path)) == "mit"
    assert base_license(str(tmp_path / "missing")) is None
    assert base_license("builtin:all-MiniLM-L6-v2") == "apache-2.0"


def test_failed_gate_is_on_the_card(evaluated: dict[str, Any], tmp_path: Path) -> None:
    folder = tmp_path / "gated"
    shutil.copytree(evaluated["out"], folder)
    results = {**evaluated["results"], "gate": {"passed": False, "failures": ["accuracy dropped by 0.5"],
                                                "config": {"max_drop": {"accuracy": 0.0}}}}
    text = write_card(folder, results, evaluated["recipe"]).read_text()
    assert "Quality gate: **failed**" in text and "- accuracy dropped by 0.5" in text


def test_no_gate_configured_means_no_gate_line(evaluated: dict[str, Any], tmp_path: Path) -> None:
    folder = tmp_path / "nogate"
    shutil.copytree(evaluated["out"], folder)
    results = {**evaluated["results"], "gate": {"passed": True, "failures": [], "config": None}}
    assert "Quality gate" not in write_card(folder, results, evaluated["recipe"]).read_text()


def test_onnx_snippet_is_valid_python(evaluated: dict[str, Any], tmp_path: Path) -> None:
    import ast

    folder = tmp_path / "onnx"
    shutil.copytree(evaluated["out"], folder)
    config = json.loads((folder / "config.json").read_text())
    config["hfcompress"]["format"] = "onnx"
    (folder / "config.json").write_text(json.dumps(config))
    text = write_card(folder, evaluated["results"], evaluated["recipe"]).read_text()
    usage = text.split("## How to use")[1].split("## How to reproduce")[0]
    blocks = re.findall(r"```python\n(.*?)```", usage, flags=re.S)
    assert blocks, "the ONNX card has no Python snippet"
    assert any("InferenceSession" in block for block in blocks)
    for block in blocks:
        ast.parse(block)


def test_settings_are_listed_once_with_their_labels_and_never_as_rows(evaluated: dict[str, Any]) -> None:
    _, body = _front_and_body(evaluated["path"])
    comp = evaluated["results"]["compressed"]
    assert comp["settings"] == {"eval_samples": comp["settings"]["eval_samples"], "speed_batch_size": 4,
                                "speed_sequence_length": 16, "speed_threads": 1, "speed_warmup": 1,
                                "speed_repeats": 3}
    settings = body.split("## Evaluation data and settings")[1].split("## Hardware")[0]
    for line in ("- batch size: 4", "- sequence length (tokens, padded): 16", "- threads: 1", "- warm-up runs: 1",
                 "- timed runs: 3", f"- held-out samples evaluated: {comp['settings']['eval_samples']}"):
        assert settings.count(line) == 1, line
    table = body.split("## Base vs compressed")[1].split("## Evaluation data")[0]
    assert "batch size" not in table and "threads" not in table.lower()


def test_data_source_description_and_license_come_from_the_source(evaluated: dict[str, Any], tmp_path: Path) -> None:
    import types

    from hfcompress.plugin import DataSource, hookimpl
    from hfcompress.registry import extra_plugins

    class Reviews(DataSource):
        name = "reviews"
        subsets = ("films",)
        description = "film reviews rated by hand (Doe, 2024)"
        license = "CC-BY-4.0"

    @hookimpl
    def hfcompress_register_data_sources(register: Any) -> None:
        register(Reviews)

    module = types.ModuleType("reviews_plugin")
    module.hfcompress_register_data_sources = hfcompress_register_data_sources  # type: ignore[attr-defined]
    folder = tmp_path / "described"
    shutil.copytree(evaluated["out"], folder)
    results = {**evaluated["results"], "data": {**evaluated["results"]["data"], "spec": {"source": "reviews:films"}}}
    with extra_plugins(module):
        text = write_card(folder, results, evaluated["recipe"]).read_text()
    assert "- data: `reviews:films`, film reviews rated by hand (Doe, 2024), license: CC-BY-4.0" in text
    plain = write_card(folder, evaluated["results"], evaluated["recipe"]).read_text()  # a file: no such prose
    assert f"- data: `{evaluated['results']['data']['spec']['source']}`\n" in plain


def test_vader_declares_its_description_and_license() -> None:
    from hfcompress.registry import get_registry

    vader = get_registry().data_sources["vader"].cls
    assert "Hutto & Gilbert, ICWSM 2014" in vader.description and vader.license == "MIT"


def test_a_license_that_cannot_be_read_is_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "README.md").write_bytes(b"---\nlicense: mit\n---\n\xff\xfe not utf-8")
    with caplog.at_level("INFO", logger="hfcompress.card"):
        assert base_license(str(tmp_path)) is None
        assert base_license("some-org/not-cached-anywhere-xyz") is None  # offline: no README to fetch
    messages = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert any(level == "WARNING" and str(tmp_path / "README.md") in m and "UnicodeDecodeError" in m
               for level, m in messages), messages
    assert any(level == "INFO" and "license is unknown" in m for level, m in messages), messages


def test_the_search_panel_draws_the_full_level_trials_and_the_base_model() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hfcompress.card.search import draw_search, has_search_plot

    def trial(number: int, level: str, latency: float, accuracy: float, passed: bool) -> dict[str, Any]:
        return {"number": number, "level": level, "latency_ms": latency, "passed": passed,
                "metrics": {"probe_accuracy": accuracy}, "objective": {"latency_ms": latency},
                "base": {"latency_ms": 100.0, "metrics": {"probe_accuracy": 0.78}}}

    search = {"objective": ["latency_ms"], "quality_metric": "probe_accuracy", "chosen": 2, "frontier": [2],
              "trials": [trial(0, "screening", 20.0, 0.70, False), trial(1, "full", 30.0, 0.70, False),
                         trial(2, "full", 40.0, 0.779, True)]}
    fig, ax = plt.subplots()
    draw_search(ax, search, metric_declarations())
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["passed", "did not pass", "base model", "chosen"]
    base_marker = ax.collections[labels.index("base model")]
    assert base_marker.get_offsets().tolist() == [[100.0, 0.78]]  # as the trials measured it
    # screening numbers (fewer samples, shorter training) do not share the axes
    assert sorted(t.get_text() for t in ax.texts) == ["1", "2"]
    plt.close(fig)
    assert not has_search_plot({**search, "trials": search["trials"][:1]})
    # records without `base` (older results.json) fall back to the final evaluation's base, labelled as such
    old = {**search, "trials": [{k: v for k, v in t.items() if k != "base"} for t in search["trials"]]}
    fig, ax = plt.subplots()
    draw_search(ax, old, metric_declarations(), {"latency_ms": 90.0, "metrics": {"probe_accuracy": 0.8}})
    assert "base model (final half)" in [t.get_text() for t in ax.get_legend().get_texts()]
    plt.close(fig)


def test_mixed_training_sources_are_listed_and_a_probe_on_one_of_them_is_marked_in_domain(
        evaluated: dict[str, Any], tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    shutil.copytree(evaluated["out"], folder)
    results = json.loads(json.dumps(evaluated["results"]))
    results["data"]["train_sources"] = {"vader:movie": 8478, "vader:tweets": 4195}
    results["compressed"]["metrics"]["transfer_probe_accuracy_vader_tweets"] = 0.75
    text = write_card(folder, results, evaluated["recipe"]).read_text()
    assert "- training text (text only) from: `vader:movie` 8,478, `vader:tweets` 4,195" in text
    assert "- `vader:tweets` was trained on, so read as in-domain: Transfer probe accuracy, vader:tweets" in text
    plain = (evaluated["out"] / "README.md").read_text()
    assert "training text (text only)" not in plain and "in-domain" not in plain


def test_card_for_repo_points_the_snippet_at_the_repo_and_changes_nothing_else(
        evaluated: dict[str, Any], tmp_path: Path) -> None:
    from hfcompress.card import card_for_repo

    folder = tmp_path / "out"
    shutil.copytree(evaluated["out"], folder)
    (folder / "hfcompress.yaml").write_text(yaml.safe_dump(evaluated["recipe"]))
    local = (folder / "README.md").read_text()
    assert '"./out"' in local and "snapshot_download" not in local
    text = card_for_repo(folder, "alice/tiny-out")
    assert text is not None and 'from_pretrained("alice/tiny-out")' in text and '"./out"' not in text
    before, after = local.split("## How to use"), text.split("## How to use")
    assert before[0] == after[0]  # numbers, tables, recipe: as the run wrote them
    assert before[1].split("\n## ", 1)[1] == after[1].split("\n## ", 1)[1]
    (folder / "README.md").write_text(text)
    assert card_for_repo(folder, "alice/tiny-out") is None  # already names the repo
    (folder / "README.md").write_text("# a card someone wrote by hand\n")
    assert card_for_repo(folder, "alice/tiny-out") is None
