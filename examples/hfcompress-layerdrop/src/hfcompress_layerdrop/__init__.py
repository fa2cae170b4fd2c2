"""hfcompress-layerdrop: the ``layer-drop`` technique as a third-party hfcompress plugin.

The entry point ``layer-drop = "hfcompress_layerdrop"`` (group ``hfcompress``) names this module;
hfcompress finds the ``@hookimpl`` function below and calls it with a ``register`` callback.
Importing this module must stay cheap: no torch or transformers here (``hfcompress plugins``
imports every plugin just to list them).
"""

from __future__ import annotations

from typing import Any

from hfcompress.plugin import hookimpl

from .layerdrop import LAYER_LISTS, LayerDrop, LayerDropConfig, block_influence, drop_layers

__version__ = "0.1.0"
__all__ = ["LAYER_LISTS", "LayerDrop", "LayerDropConfig", "block_influence", "drop_layers"]


@hookimpl
def hfcompress_register_techniques(register: Any) -> None:
    register(LayerDrop)
