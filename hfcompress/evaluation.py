"""Runs the evaluator plugins on the base and the compressed model, the same way.

The base is evaluated first; its :class:`EvalContext` becomes the ``reference`` of the
compressed model's context, so fidelity evaluators compare against it without re-running it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .plugin import EvalContext, EvalSettings, ModelState
from .runner import fixed_threads

if TYPE_CHECKING:  # pragma: no cover
    import datasets

log = logging.getLogger(__name__)

# These three are lifted out of ``metrics`` to the top of a results.json block (DESIGN.md).
TOP_LEVEL = ("size_bytes", "num_parameters", "latency_ms")


def evaluate_state(
    state: ModelState,
    data: datasets.Dataset | None,
    settings: EvalSettings,
    artifact_dir: Path | None = None,
    reference: EvalContext | None = None,
) -> tuple[dict[str, Any], EvalContext]:
    """Evaluate one model; returns its results.json block and its context."""
    from .registry import get_registry

    registry = get_registry()
    names = sorted(registry.evaluators) if settings.evaluators is None else settings.evaluators
    ctx = EvalContext(state=state, data=data, settings=settings, artifact_dir=artifact_dir, reference=reference)
    metrics: dict[str, Any] = {}
    with fixed_threads(settings.threads):
        for name in names:
            evaluator = registry.evaluator(name)
            if not evaluator.applies_to(ctx):
                continue
            log.info("evaluating %s with %s", "base" if reference is None else "compressed", name)
            metrics.update(evaluator.evaluate(ctx))
    block: dict[str, Any] = {key: metrics.pop(key, None) for key in TOP_LEVEL}
    block["metrics"] = metrics
    return block, ctx
