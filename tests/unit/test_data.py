"""Data specs, column checks and the deterministic, leak-free split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hfcompress.data import DataConfig, load_data, validate_spec
from hfcompress.errors import BadInputError


def _jsonl(path: Path, n: int = 200, dup: bool = True) -> Path:
    rows = [{"sentence": f"sentence number {i}", "y": i % 2} for i in range(n)]
    if dup:
        rows += rows[:20]  # duplicates must land on the same side of the split
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def test_local_file_split_is_deterministic_and_disjoint(tmp_path: Path) -> None:
    cfg = DataConfig(source=str(_jsonl(tmp_path / "d.jsonl")), text_column="sentence", label_column="y")
    a, b = load_data(cfg), load_data(cfg)
    assert a.train["text"] == b.train["text"] and a.fingerprint == b.fingerprint
    assert not set(a.train["text"]) & set(a.eval["text"])
    assert len(a.train) + len(a.eval) == 220
    assert 0.1 < len(set(a.eval["text"])) / 200 < 0.3  # eval_fraction 0.2
    assert a.has_labels and set(a.train["label"]) == {0, 1}


def test_order_does_not_change_the_split(tmp_path: Path) -> None:
    rows = [{"text": f"t{i}"} for i in range(100)]
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(r) for r in reversed(rows)))
    a = load_data(DataConfig(source=str(tmp_path / "a.jsonl")))
    b = load_data(DataConfig(source=str(tmp_path / "b.jsonl")))
    assert sorted(a.eval["text"]) == sorted(b.eval["text"])


def test_wrong_column_lists_columns(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="text_column 'text' does not exist; columns are: sentence, y"):
        load_data(DataConfig(source=str(_jsonl(tmp_path / "d.jsonl"))))


def test_train_eval_specs_drop_overlap(tmp_path: Path) -> None:
    (tmp_path / "train.txt").write_text("alpha\nbeta\ngamma\n")
    (tmp_path / "eval.txt").write_text("beta\ndelta\n")
    splits = load_data(DataConfig(train=str(tmp_path / "train.txt"), eval=str(tmp_path / "eval.txt")))
    assert splits.eval["text"] == ["delta"]
    assert not splits.has_labels


def test_bad_specs_fail_before_loading(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="file not found"):
        validate_spec(str(tmp_path / "missing.csv"))
    with pytest.raises(BadInputError, match="unknown subset 'films' of source 'vader'; available: vader:movie"):
        validate_spec("vader:films")
    with pytest.raises(BadInputError, match="unknown data source 'nosuch'"):
        validate_spec("nosuch:thing")
    with pytest.raises(ValueError, match="either 'source'"):
        DataConfig(source="a.csv", train="b.csv")


@pytest.mark.integration
def test_vader_movie_is_real_and_labelled(hf_cache: str) -> None:
    splits = load_data(DataConfig(source="vader:movie"))
    assert len(splits.train) + len(splits.eval) == 10605  # movieReviewSnippets_GroundTruth.txt
    labels = list(splits.train["label"]) + list(splits.eval["label"])
    assert 0.4 < sum(labels) / len(labels) < 0.6
    assert not set(splits.train["text"]) & set(splits.eval["text"])
