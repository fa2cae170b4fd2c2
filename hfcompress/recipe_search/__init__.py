"""Search over a recipe's step settings with Optuna: the recipe's ``search`` section (docs/search.md).

    search:
      knobs: {head-pruning.ratio: [0.25, 0.5, 0.67], distillation.max_steps: {low: 200, high: 1200}}
      objective: latency_ms            # or size_bytes, or a list for a Pareto search
      constraints: {max_drop: {probe_accuracy: 0.005}, min: {fidelity_cosine_mean: 0.9}}
      max_trials: 24
      max_minutes: 45

``hfcompress run recipe.yaml [--storage URL]`` or :func:`hfcompress.search` runs it. Modules:
:mod:`.config` (the section, knobs resolved against the steps), :mod:`.split` (the search and
final halves of the held-out data), :mod:`.study` (Optuna storage, sampler, workers, resuming),
:mod:`.report` (trial summaries, constraints, frontier, the choice) and :mod:`.run` (trials and
the final evaluation). Importing this package is cheap: Optuna and torch load when a search runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import Constraints, Knob, RangeKnob, Screening, SearchConfig

if TYPE_CHECKING:  # pragma: no cover
    from .run import search

__all__ = ["Constraints", "Knob", "RangeKnob", "Screening", "SearchConfig", "search"]


def __getattr__(name: str) -> Any:
    if name == "search":
        from .run import search

        return search
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
