"""The quality gate: does the compressed model meet the recipe's ``gate``?

    gate:
      max_drop: {accuracy: 0.02, fidelity_cosine_mean: 0.01}   # largest allowed loss vs the base
      min: {fidelity_cosine_mean: 0.98}                       # absolute floors for the compressed model

A "drop" is a loss of quality in the metric's own direction, as the evaluator that produces it
declares it (:class:`hfcompress.plugin.Metric`): base - compressed for metrics where higher is
better (accuracy, F1, cosine), compressed - base where lower is better (perplexity, KL, latency,
size, an error rate). ``max_drop`` needs the metric in both blocks, except for metrics that
compare with the base by construction (fidelity): their drop is measured from the declared
``perfect`` score (1 for cosine/agreement, 0 for KL). ``min`` is checked on the compressed value.

A gate may only name metrics that an evaluator which will run declares, and no settings:
:func:`check_gate_metrics` runs in ``pipeline.plan``, before any weights load, so a typo exits 2
instead of failing after the whole run. After the run, :func:`check_gate` compares; the pipeline
writes its failures into results.json (``gate``), exits 3 and pushes nothing.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from .errors import BadInputError
from .evaluation import TOP_LEVEL, declaration
from .plugin import Metric

__all__ = ["check_gate", "check_gate_metrics"]


def _lookup(block: dict[str, Any], name: str) -> Any:
    if name in TOP_LEVEL:
        return block.get(name)
    return (block.get("metrics") or {}).get(name)


def _available(block: dict[str, Any]) -> str:
    names = [k for k in TOP_LEVEL if block.get(k) is not None] + sorted(block.get("metrics") or {})
    return ", ".join(names) or "none"


def _resolution(name: str, drop: float, allowed: float, comp: dict[str, Any]) -> str:
    """For an accuracy, the drop and the bound as counts of held-out samples: a bound of a few
    samples is below what the data can resolve, and the message should say so."""
    samples = _lookup(comp, "eval_samples")
    if not name.endswith("accuracy") or not _number(samples) or samples <= 0:
        return ""
    return (f"; on {samples:.0f} held-out samples that is {drop * samples:.1f} more wrong answers "
            f"against a bound of {allowed * samples:.1f}")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_gate_metrics(gate: Mapping[str, Any] | None, evaluators: Mapping[str, tuple[Metric, ...]]) -> None:
    """Raise :class:`BadInputError` when ``gate`` names a metric that none of ``evaluators`` declares.

    ``evaluators`` maps each evaluator that will run to the metrics it declares
    (:func:`hfcompress.evaluation.evaluator_declarations`). A declared *setting* (batch size,
    threads) is not a measure of quality and is refused too. The message names every offending
    metric, the evaluators and what they declare, so the fix is one edit.
    """
    if not gate:
        return
    declared: dict[str, Metric] = {}
    for metrics in evaluators.values():
        for metric in metrics:
            declared.setdefault(metric.name, metric)
    measured = [name for name, metric in declared.items() if not metric.setting]
    problems = []
    for section in ("max_drop", "min"):
        for name in gate.get(section) or {}:
            found = declared.get(name)
            if found is not None and not found.setting:
                continue
            if found is None:
                problem = f"gate.{section}.{name}: no evaluator that will run produces a metric {name!r}"
                close = difflib.get_close_matches(name, measured, n=1)
                if close:
                    problem += f" (did you mean {close[0]!r}?)"
            else:
                problem = f"gate.{section}.{name}: {name!r} is a setting of the measurement, not a measure of quality"
            problems.append(problem)
    if not problems:
        return
    listing = "; ".join(
        f"{evaluator}: {', '.join(m.name for m in metrics if not m.setting) or 'declares no metrics'}"
        for evaluator, metrics in evaluators.items()
    ) or "none"
    raise BadInputError(
        f"{'; '.join(problems)}. The evaluators that will run (evaluate.evaluators) and the metrics they declare: "
        f"{listing}. Fix the metric name in the recipe's gate or in --max-drop METRIC=VALUE, add the evaluator "
        "that produces it to evaluate.evaluators, or install the plugin that provides it (an evaluator must "
        "declare its metrics in Evaluator.metrics)."
    )


def check_gate(
    results: dict[str, Any], gate: dict[str, Any] | None, metrics: Mapping[str, Metric] | None = None
) -> list[str]:
    """Human-readable failures (empty when the gate passes or there is none).

    ``metrics``: name → declaration of the evaluators that ran (default: every registered
    evaluator's, :func:`hfcompress.evaluation.metric_declarations`), for directions and perfect
    scores.
    """
    if not gate:
        return []
    if metrics is None:
        from .evaluation import metric_declarations

        metrics = metric_declarations()
    base = results.get("base") or {}
    comp = results.get("compressed") or {}
    failures: list[str] = []
    unknown = set(gate) - {"max_drop", "min"}
    if unknown:
        failures.append(f"gate: unknown section(s) {', '.join(sorted(unknown))}; allowed: max_drop, min")
    for name, allowed in (gate.get("max_drop") or {}).items():
        metric = declaration(name, metrics)
        c = _lookup(comp, name)
        b = _lookup(base, name)
        if b is None and metric.perfect is not None:
            b = metric.perfect
        if not _number(c) or not _number(b):
            where = "compressed" if not _number(c) else "base"
            failures.append(
                f"gate.max_drop.{name}: the {where} model has no metric {name!r}; measured metrics: "
                f"{_available(comp if where == 'compressed' else base)}"
            )
            continue
        drop = (b - c) if metric.higher_is_better else (c - b)
        if drop > allowed:
            direction = "higher" if metric.higher_is_better else "lower"
            failures.append(
                f"{name} dropped by {drop:.6g} (base {b:.6g} → compressed {c:.6g}; {direction} is better), "
                f"more than gate.max_drop.{name} = {allowed:g}" + _resolution(name, drop, allowed, comp)
            )
    for name, floor in (gate.get("min") or {}).items():
        c = _lookup(comp, name)
        if not _number(c):
            failures.append(
                f"gate.min.{name}: the compressed model has no metric {name!r}; measured metrics: {_available(comp)}"
            )
            continue
        if c < floor:
            failures.append(f"{name} = {c:.6g} is below gate.min.{name} = {floor:g}")
    return failures
