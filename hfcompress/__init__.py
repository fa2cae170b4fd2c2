"""hfcompress: make Hugging Face models smaller and faster, measured against the original.

    import hfcompress
    result = hfcompress.compress("builtin:all-MiniLM-L6-v2", "recipe.yaml", output_dir="out")
    model = hfcompress.load("out")

Heavy modules (torch, transformers) are imported on first use, so ``hfcompress --help`` and
``hfcompress plugins`` stay fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["Recipe", "Result", "__version__", "compress", "load", "load_state", "search"]

if TYPE_CHECKING:  # pragma: no cover
    from .artifact import load, load_state
    from .pipeline import Result, compress
    from .recipe import Recipe
    from .recipe_search import search

_LAZY = {
    "compress": "pipeline",
    "Result": "pipeline",
    "Recipe": "recipe",
    "load": "artifact",
    "load_state": "artifact",
    "search": "recipe_search",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'hfcompress' has no attribute {name!r}")
