"""Testing kit for hfcompress and its plugins: tiny models, a real text sample, conformance checks.

    from hfcompress.testing import check_technique, ConformanceError

    # conftest.py or a test module of your plugin:
    pytest_plugins = ["hfcompress.testing.pytest_plugin"]   # fixtures: tiny_bert_dir, tiny_llama_dir, ...

Submodules: :mod:`~hfcompress.testing.conformance` (``check_technique``),
:mod:`~hfcompress.testing.pytest_plugin` (fixtures), :mod:`~hfcompress.testing.models`
(``make_tiny_bert``, ``make_tiny_llama``), :mod:`~hfcompress.testing.samples` (real sentences),
:mod:`~hfcompress.testing.distributions` (fake installed distributions for discovery tests).

Importing this package imports no heavy library (torch, transformers, datasets): the names below
load their module on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = [
    "ConformanceError",
    "ConformanceReport",
    "check_technique",
    "make_tiny_bert",
    "make_tiny_llama",
    "make_tiny_models",
    "make_tiny_sentence_transformer",
]

if TYPE_CHECKING:  # pragma: no cover
    from .conformance import ConformanceError, ConformanceReport, check_technique, make_tiny_models
    from .models import make_tiny_bert, make_tiny_llama, make_tiny_sentence_transformer

_LAZY = {
    "ConformanceError": "conformance",
    "ConformanceReport": "conformance",
    "check_technique": "conformance",
    "make_tiny_models": "conformance",
    "make_tiny_bert": "models",
    "make_tiny_llama": "models",
    "make_tiny_sentence_transformer": "models",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'hfcompress.testing' has no attribute {name!r}")
