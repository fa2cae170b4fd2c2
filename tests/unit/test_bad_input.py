"""Mistakes a new user makes, through the real console script: each exits 2 before any heavy work,
with a message naming the problem and the fix, and leaves nothing at ``--output``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hfcompress.testing.models import make_tiny_bert

BIN = [sys.executable, "-m", "hfcompress"]


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HFCOMPRESS_CACHE": str(cwd / "cache")}
    return subprocess.run([*BIN, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600,
                          stdin=subprocess.DEVNULL)


def _data(path: Path, rows: int = 40, labels: tuple[str, str] | None = None) -> Path:
    with path.open("w") as fh:
        for i in range(rows):
            label = labels[i % 2] if labels else i % 2
            fh.write(json.dumps({"text": f"this is sentence number {i} of the data", "label": label}) + "\n")
    return path


def _recipe(tmp_path: Path, model: Path | str, data: Path | str, extra: str = "") -> Path:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"model: {model}\ndata: {data}\nsteps:\n  - quantization: {{backend: torch}}\n"
                      "evaluate: {max_samples: 8, repeats: 1, warmup: 0, sequence_length: 16}\n" + extra)
    return recipe


def _bad(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, (needle, proc.stderr)


def test_empty_recipe_file_is_an_error_not_the_default(tmp_path: Path) -> None:
    recipe = tmp_path / "empty.yaml"
    recipe.write_text("\n# nothing here\n")
    proc = run("run", str(recipe), "--output", "out", cwd=tmp_path)
    _bad(proc, "empty.yaml", "the file is empty", "without a recipe for the embedded default")
    assert not (tmp_path / "out").exists()


def test_truncated_safetensors_is_named_before_work(tmp_path: Path) -> None:
    model = make_tiny_bert(tmp_path / "model")
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    proc = run("run", str(_recipe(tmp_path, model, _data(tmp_path / "d.jsonl"))), "--output", "out", cwd=tmp_path)
    _bad(proc, "model.safetensors is not a readable safetensors file", "truncated or corrupt")
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache" / "steps").exists()


def test_header_only_data_file_is_named_before_work(tmp_path: Path) -> None:
    model = make_tiny_bert(tmp_path / "model")
    data = tmp_path / "empty.csv"
    data.write_text("text,label\n")
    proc = run("run", str(_recipe(tmp_path, model, data)), "--output", "out", cwd=tmp_path)
    _bad(proc, "empty.csv holds no samples", "header line only")
    assert not (tmp_path / "out").exists()


def test_output_naming_an_existing_file(tmp_path: Path) -> None:
    model = make_tiny_bert(tmp_path / "model")
    (tmp_path / "out").write_text("my notes, not an output folder")
    proc = run("run", str(_recipe(tmp_path, model, _data(tmp_path / "d.jsonl"))), "--output", "out", cwd=tmp_path)
    _bad(proc, "--output", "a file of that name exists")
    assert (tmp_path / "out").read_text() == "my notes, not an output folder"


def test_invalid_push_repo_id_fails_before_the_run(tmp_path: Path) -> None:
    model = make_tiny_bert(tmp_path / "model")
    recipe = _recipe(tmp_path, model, _data(tmp_path / "d.jsonl"))
    proc = run("run", str(recipe), "--output", "out", "--push-to", "a/b/c", cwd=tmp_path)
    _bad(proc, "'a/b/c' is not a valid Hub repo id")
    assert not (tmp_path / "out").exists()
    (tmp_path / "folder").mkdir()
    push = run("push", "folder", "--repo-id", "a/b/c", cwd=tmp_path)  # no Hub needed to say so
    _bad(push, "'a/b/c' is not a valid Hub repo id")
    assert "Connect" not in push.stderr


def test_string_class_labels_map_like_classlabel(tmp_path: Path) -> None:
    """Class names in the data (yes/no) work end to end: ids as datasets.ClassLabel assigns them."""
    model = make_tiny_bert(tmp_path / "model", task="text-classification")
    data = _data(tmp_path / "d.jsonl", rows=60, labels=("yes", "no"))
    proc = run("run", str(_recipe(tmp_path, model, data)), "--output", "out", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["data"]["label_names"] == ["no", "yes"]  # sorted, as ClassLabel does
    assert 0.0 <= results["compressed"]["metrics"]["accuracy"] <= 1.0
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["id2label"] == {"0": "no", "1": "yes"} and config["label2id"] == {"no": 0, "yes": 1}


def test_class_names_the_model_does_not_know_are_refused(tmp_path: Path) -> None:
    from transformers import AutoConfig

    model = make_tiny_bert(tmp_path / "model", task="text-classification")
    config = AutoConfig.from_pretrained(model)
    config.id2label, config.label2id = {0: "NEGATIVE", 1: "POSITIVE"}, {"NEGATIVE": 0, "POSITIVE": 1}
    config.save_pretrained(model)
    data = _data(tmp_path / "d.jsonl", rows=60, labels=("yes", "no"))
    proc = run("run", str(_recipe(tmp_path, model, data)), "--output", "out", cwd=tmp_path)
    _bad(proc, "class names ['no', 'yes'] do not match the model's labels ['NEGATIVE', 'POSITIVE']")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("labels", [("positive", "negative"), ("POSITIVE", "NEGATIVE")])
def test_class_names_the_model_knows_use_its_ids(tmp_path: Path, labels: tuple[str, str]) -> None:
    from hfcompress.data import DataConfig, load_data
    from hfcompress.pipeline import _label_mapping

    splits = load_data(DataConfig(source=str(_data(tmp_path / "d.jsonl", rows=60, labels=labels))))
    config = type("Config", (), {"id2label": {0: "POSITIVE", 1: "NEGATIVE"}})()  # not ClassLabel's order
    assert splits.label_names == sorted(labels)
    assert _label_mapping(config, "text-classification", splits) is None  # the model keeps its labels
    texts = list(splits.train["text"]) + list(splits.eval["text"])
    ids = list(splits.train["label"]) + list(splits.eval["label"])
    by_text = dict(zip(texts, ids, strict=True))
    assert by_text["this is sentence number 0 of the data"] == 0  # "positive" -> the model's POSITIVE
    assert by_text["this is sentence number 1 of the data"] == 1


def test_extra_train_with_a_step_that_needs_labels_is_refused(tmp_path: Path) -> None:
    """Extra training sources are text only: task-specific distillation cannot train on them."""
    model = make_tiny_bert(tmp_path / "model", task="text-classification")
    data, more = _data(tmp_path / "d.jsonl", rows=60), tmp_path / "more.txt"
    more.write_text("an unlabelled sentence\nanother one\n")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"model: {model}\ndata: {{source: {data}, extra_train: [{more}]}}\n"
                      "steps:\n  - distillation: {mode: task-specific, max_steps: 1}\n")
    proc = run("run", str(recipe), "--output", "out", cwd=tmp_path)
    _bad(proc, "steps[0] (distillation) needs labelled data", "data.extra_train makes the training split text only")
    assert not (tmp_path / "out").exists()


def test_class_names_map_in_evaluation_when_extra_train_leaves_training_text_only(tmp_path: Path) -> None:
    from hfcompress.data import DataConfig, load_data
    from hfcompress.pipeline import _label_mapping

    (tmp_path / "more.txt").write_text("an unlabelled sentence\n")
    data = _data(tmp_path / "d.jsonl", rows=60, labels=("positive", "negative"))
    splits = load_data(DataConfig.model_validate({"source": str(data), "extra_train": [str(tmp_path / "more.txt")]}))
    config = type("Config", (), {"id2label": {0: "POSITIVE", 1: "NEGATIVE"}})()
    assert _label_mapping(config, "text-classification", splits) is None
    assert splits.train.column_names == ["text"] and "an unlabelled sentence" in splits.train["text"]
    by_text = dict(zip(splits.eval["text"], splits.eval["label"], strict=True))
    assert all(by_text[t] == int(t.split()[4]) % 2 for t in by_text)  # even rows are "positive" = model id 0
