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


def test_extra_train_adds_text_only_and_never_an_evaluation_text(tmp_path: Path) -> None:
    cfg = DataConfig(source=str(_jsonl(tmp_path / "d.jsonl")), text_column="sentence", label_column="y")
    plain = load_data(cfg)
    leak = plain.eval["text"][0]
    (tmp_path / "more.txt").write_text(f"fresh one\n{leak}\nfresh two\nfresh one\n{plain.train['text'][0]}\nfresh three\n")
    (tmp_path / "other.csv").write_text("body\nother a\nother b\nother c\n")
    extra = [str(tmp_path / "more.txt"), {"source": str(tmp_path / "other.csv"), "text_column": "body", "max_samples": 2}]
    mixed = load_data(DataConfig.model_validate({**cfg.model_dump(), "extra_train": extra}))
    assert mixed.eval["text"] == plain.eval["text"] and "label" in mixed.eval.column_names
    assert mixed.train.column_names == ["text"] and not mixed.has_labels
    # the recipe's own part first (calibration reads the first texts), then each source's new texts
    assert mixed.train["text"] == [*plain.train["text"], "fresh one", "fresh two", "fresh three", "other a", "other b"]
    assert mixed.train_sources == {cfg.source: len(plain.train), str(tmp_path / "more.txt"): 3,
                                   f"{tmp_path / 'other.csv'} (body)": 2}
    assert not set(mixed.train["text"]) & set(mixed.eval["text"])
    assert mixed.fingerprint != plain.fingerprint and plain.train_sources is None


def test_extra_train_with_a_wrong_column_or_spec_is_bad_input(tmp_path: Path) -> None:
    (tmp_path / "d.txt").write_text("\n".join(f"line {i}" for i in range(50)))
    (tmp_path / "x.csv").write_text("body\na\n")
    with pytest.raises(BadInputError, match="text_column 'text' does not exist; columns are: body"):
        load_data(DataConfig.model_validate({"source": str(tmp_path / "d.txt"), "extra_train": [str(tmp_path / "x.csv")]}))
    with pytest.raises(BadInputError, match="unknown subset 'films'"):
        load_data(DataConfig.model_validate({"source": str(tmp_path / "d.txt"), "extra_train": ["vader:films"]}))


@pytest.mark.integration
def test_every_vader_set_mixes_into_training_without_touching_evaluation(hf_cache: str) -> None:
    splits = load_data(DataConfig.model_validate(
        {"source": "vader:movie", "extra_train": ["vader:tweets", "vader:amazon", "vader:nyt"]}))
    sources = splits.train_sources or {}
    assert list(sources) == ["vader:movie", "vader:tweets", "vader:amazon", "vader:nyt"]
    assert sum(sources.values()) == len(splits.train)
    assert sources["vader:tweets"] > 4000 and sources["vader:amazon"] > 3500 and sources["vader:nyt"] > 5000
    assert not {t.strip() for t in splits.train["text"]} & {t.strip() for t in splits.eval["text"]}
    assert "label" in splits.eval.column_names
