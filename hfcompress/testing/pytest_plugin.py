"""pytest fixtures for plugin authors: tiny models, a real text sample, an isolated cache.

Enable in your plugin's root ``conftest.py`` (or in a test module)::

    pytest_plugins = ["hfcompress.testing.pytest_plugin"]

    def test_conforms(tmp_path, tiny_models):
        check_technique(MyTechnique, configs=[{...}], tmp_path=tmp_path, models=tiny_models)

Model folders are built once per test session (tiny random weights, the real MiniLM tokenizer
shipped with hfcompress; no network) and must be treated as read-only: load them, change the
loaded model, save elsewhere. Hub access is switched off (``HF_HUB_OFFLINE=1``) unless the
environment already says otherwise, so a test cannot silently depend on the network.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

_OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def pytest_configure(config: pytest.Config) -> None:
    for key, value in _OFFLINE.items():
        os.environ.setdefault(key, value)


@pytest.fixture(scope="session")
def hfcompress_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A session-wide ``HFCOMPRESS_CACHE`` (step cache, converted models) outside your home folder."""
    path = tmp_path_factory.mktemp("hfcompress-cache")
    saved = os.environ.get("HFCOMPRESS_CACHE")
    os.environ["HFCOMPRESS_CACHE"] = str(path)
    yield path
    if saved is None:
        os.environ.pop("HFCOMPRESS_CACHE", None)
    else:
        os.environ["HFCOMPRESS_CACHE"] = saved


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 4-head BERT encoder (hidden 32; task feature-extraction). Read-only."""
    from .models import make_tiny_bert

    return make_tiny_bert(tmp_path_factory.mktemp("models") / "tiny-bert")


@pytest.fixture(scope="session")
def tiny_bert_classifier_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny BERT with a 2-label sequence-classification head (task text-classification). Read-only."""
    from .models import make_tiny_bert

    return make_tiny_bert(tmp_path_factory.mktemp("models") / "tiny-bert-classifier", task="text-classification")


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer Llama causal LM with grouped-query attention (4 query / 2 KV heads). Read-only."""
    from .models import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_models(tiny_bert_dir: Path, tiny_bert_classifier_dir: Path, tiny_llama_dir: Path) -> dict[str, Path]:
    """The three folders by family name, for ``check_technique(..., models=tiny_models)``."""
    return {"bert": tiny_bert_dir, "bert-classifier": tiny_bert_classifier_dir, "llama": tiny_llama_dir}


@pytest.fixture(scope="session")
def text_data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """90 human-rated movie-review sentences as JSON lines (``text``, ``rating``, ``label``).

    A valid hfcompress data spec: ``compress(..., data=str(text_data_file))``. See
    :mod:`hfcompress.testing.samples` for the source (VADER, Hutto & Gilbert 2014).
    """
    from .samples import write_jsonl

    return write_jsonl(tmp_path_factory.mktemp("data") / "movie-snippets.jsonl")
