"""The plugin hooks: the whole contract between hfcompress and its plugins.

Three hooks, each receiving a ``register`` callback (the simonw/llm style): a plugin calls
``register(SomeClass)`` once per thing it provides. Keep this file short; every hook here is
documented in ``docs/plugins.md`` and exercised by ``tests/meta/test_hooks.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

PROJECT = "hfcompress"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def hfcompress_register_techniques(register: Callable[[Any], None]) -> None:
    """Register :class:`hfcompress.plugin.Technique` subclasses: ``register(MyTechnique)``."""


@hookspec
def hfcompress_register_evaluators(register: Callable[[Any], None]) -> None:
    """Register :class:`hfcompress.plugin.Evaluator` subclasses: ``register(MyEvaluator)``."""


@hookspec
def hfcompress_register_data_sources(register: Callable[[Any], None]) -> None:
    """Register :class:`hfcompress.plugin.DataSource` subclasses: ``register(MySource)``."""
