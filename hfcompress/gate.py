"""The quality gate: does the compressed model meet the recipe's ``gate``?

    gate:
      max_drop: {accuracy: 0.02, fidelity_cosine_mean: 0.01}   # largest allowed loss vs the base
      min: {fidelity_cosine_mean: 0.98}                       # absolute floors for the compressed model

A "drop" is a loss of quality in the metric's own direction: base - compressed for metrics
where higher is better (accuracy, F1, cosine), compressed - base where lower is better
(perplexity, KL, latency, size). ``max_drop`` needs the metric in both blocks, except for
fidelity metrics, which compare with the base by construction: their drop is measured from the
perfect score (1 for cosine/agreement, 0 for KL). ``min`` is checked on the compressed value.
The pipeline writes the failures into results.json (``gate``), exits 3 and pushes nothing.
"""

from __future__ import annotations

from typing import Any

from .evaluation import TOP_LEVEL, higher_is_better

__all__ = ["check_gate"]

# What a fidelity metric of the base against itself is, by definition.
_PERFECT = {"fidelity_cosine_mean": 1.0, "fidelity_cosine_min": 1.0, "fidelity_top1_agreement": 1.0, "fidelity_kl": 0.0}


def _lookup(block: dict[str, Any], name: str) -> Any:
    if name in TOP_LEVEL:
        return block.get(name)
    return (block.get("metrics") or {}).get(name)


def _available(block: dict[str, Any]) -> str:
    names = [k for k in TOP_LEVEL if block.get(k) is not None] + sorted(block.get("metrics") or {})
    return ", ".join(names) or "none"


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_gate(results: dict[str, Any], gate: dict[str, Any] | None) -> list[str]:
    """Human-readable failures (empty when the gate passes or there is none)."""
    if not gate:
        return []
    base = results.get("base") or {}
    comp = results.get("compressed") or {}
    failures: list[str] = []
    unknown = set(gate) - {"max_drop", "min"}
    if unknown:
        failures.append(f"gate: unknown section(s) {', '.join(sorted(unknown))}; allowed: max_drop, min")
    for metric, allowed in (gate.get("max_drop") or {}).items():
        c = _lookup(comp, metric)
        b = _lookup(base, metric)
        if b is None and metric in _PERFECT:
            b = _PERFECT[metric]
        if not _number(c) or not _number(b):
            where = "compressed" if not _number(c) else "base"
            failures.append(
                f"gate.max_drop.{metric}: the {where} model has no metric {metric!r}; measured metrics: "
                f"{_available(comp if where == 'compressed' else base)}"
            )
            continue
        drop = (b - c) if higher_is_better(metric) else (c - b)
        if drop > allowed:
            direction = "higher" if higher_is_better(metric) else "lower"
            failures.append(
                f"{metric} dropped by {drop:.6g} (base {b:.6g} → compressed {c:.6g}; {direction} is better), "
                f"more than gate.max_drop.{metric} = {allowed:g}"
            )
    for metric, floor in (gate.get("min") or {}).items():
        c = _lookup(comp, metric)
        if not _number(c):
            failures.append(
                f"gate.min.{metric}: the compressed model has no metric {metric!r}; measured metrics: {_available(comp)}"
            )
            continue
        if c < floor:
            failures.append(f"{metric} = {c:.6g} is below gate.min.{metric} = {floor:g}")
    return failures
