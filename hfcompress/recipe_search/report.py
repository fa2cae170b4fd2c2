"""What a search records: each trial's summary, constraint violations, the frontier, the choice.

Everything here works on plain dicts (results.json blocks and trial records), so the card and
the tests read the same numbers the search decided on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ..evaluation import declaration
from ..gate import _lookup, _number, check_gate
from ..plugin import Metric

SUMMARY_KEYS = ("latency_ms", "size_bytes", "num_parameters")


def violation(results: dict[str, Any], constraints: Mapping[str, Any], metrics: Mapping[str, Metric]) -> float:
    """How far ``results`` is from meeting ``constraints`` (0 when it meets them), in the metrics' own units:
    the sum over constraints of (drop - allowance) or (floor - value) where positive; 1 per missing metric."""
    base, comp = results.get("base") or {}, results.get("compressed") or {}
    total = 0.0
    for name, allowed in (constraints.get("max_drop") or {}).items():
        metric = declaration(name, metrics)
        c, b = _lookup(comp, name), _lookup(base, name)
        if b is None and metric.perfect is not None:
            b = metric.perfect
        if not _number(c) or not _number(b):
            total += 1.0
            continue
        drop = (b - c) if metric.higher_is_better else (c - b)
        total += max(0.0, drop - allowed)
    for name, floor in (constraints.get("min") or {}).items():
        c = _lookup(comp, name)
        total += 1.0 if not _number(c) else max(0.0, floor - c)
    return round(total, 9)


def loosened(constraints: Mapping[str, Any], slack: float) -> dict[str, Any]:
    """The constraints a screened candidate must meet to be promoted to the full level."""
    return {"max_drop": {k: v + slack for k, v in (constraints.get("max_drop") or {}).items()},
            "min": {k: v - slack for k, v in (constraints.get("min") or {}).items()}}


def summarize(results: dict[str, Any], constraints: Mapping[str, Any], metrics: Mapping[str, Metric],
              objectives: list[str]) -> dict[str, Any]:
    """One level of a trial: the compressed model's numbers, the objective, pass/fail and why."""
    comp, base = results.get("compressed") or {}, results.get("base") or {}
    failures = check_gate(results, dict(constraints), metrics) if constraints else []
    return {
        **{key: comp.get(key) for key in SUMMARY_KEYS},
        "metrics": dict(comp.get("metrics") or {}),
        # the base model as this trial measured it (same half, same settings): the plot's reference point
        "base": {**{key: base.get(key) for key in SUMMARY_KEYS}, "metrics": dict(base.get("metrics") or {})},
        "objective": {name: _lookup(comp, name) for name in objectives},
        "passed": not failures,
        "failures": failures,
        "violation": violation(results, constraints, metrics),
        "eval_samples": (results.get("data") or {}).get("evaluated_samples"),
    }


def value_of(record: Mapping[str, Any], name: str) -> Any:
    if name in SUMMARY_KEYS:
        return record.get(name)
    if name in (record.get("objective") or {}):
        return record["objective"][name]
    return (record.get("metrics") or {}).get(name)


def objective_values(record: Mapping[str, Any], objectives: list[str], metrics: Mapping[str, Metric]) -> list[float]:
    """What the trial returns to Optuna; a missing value is the worst one (inf in the objective's direction)."""
    out = []
    for name in objectives:
        v = value_of(record, name)
        worst = -math.inf if declaration(name, metrics).higher_is_better else math.inf
        out.append(float(v) if _number(v) and math.isfinite(float(v)) else worst)
    return out


def _oriented(record: Mapping[str, Any], names: list[str], metrics: Mapping[str, Metric]) -> list[float] | None:
    """Values with "lower is better" for all; None when one is missing."""
    out = []
    for name in names:
        v = value_of(record, name)
        if not _number(v):
            return None
        out.append(-float(v) if declaration(name, metrics).higher_is_better else float(v))
    return out


def quality_metric(records: list[dict[str, Any]], metrics: Mapping[str, Metric], objectives: list[str]) -> str | None:
    """The frontier's quality axis: the first declared quality metric the trials have (accuracy,
    probe accuracy, perplexity...), else the first fidelity one; never one of the objectives."""
    for role in ("quality", "fidelity"):
        for name, metric in metrics.items():
            if metric.role == role and name not in objectives and any(_number(value_of(r, name)) for r in records):
                return name
    return None


def frontier(records: list[dict[str, Any]], objectives: list[str], quality: str | None,
             metrics: Mapping[str, Metric]) -> list[int]:
    """Trial numbers on the Pareto front of (objectives..., quality) among full-level trials,
    ordered by the first objective."""
    names = objectives + ([quality] if quality else [])
    points = [(r["number"], v) for r in records if r.get("level") == "full" and not r.get("error")
              if (v := _oriented(r, names, metrics)) is not None]

    def dominated(a: list[float]) -> bool:
        return any(all(x <= y for x, y in zip(b, a, strict=True)) and b != a for _, b in points)

    front = [(n, v) for n, v in points if not dominated(v)]
    return [n for n, _ in sorted(front, key=lambda nv: (nv[1], nv[0]))]


def rank_key(record: Mapping[str, Any], objectives: list[str], quality: str | None,
             metrics: Mapping[str, Metric]) -> tuple[Any, ...]:
    """Objectives in order (the first decides; a Pareto search picks its frontier point best on the
    first objective), then quality, then the lower trial number."""
    values = _oriented(record, objectives, metrics) or [math.inf] * len(objectives)
    q = _oriented(record, [quality], metrics) if quality else None
    return (*values, q[0] if q else math.inf, record["number"])


def choose(records: list[dict[str, Any]], objectives: list[str], quality: str | None,
           metrics: Mapping[str, Metric]) -> tuple[int | None, int | None]:
    """(chosen, closest): the objective-best trial that passed at the full level; when none did, the
    trial closest to passing (smallest violation, then objective)."""
    passing = [r for r in records if r.get("level") == "full" and r.get("passed")]
    if passing:
        return min(passing, key=lambda r: rank_key(r, objectives, quality, metrics))["number"], None
    if not records:
        return None, None
    closest = min(records, key=lambda r: (r.get("violation", math.inf), r.get("level") != "full",
                                          rank_key(r, objectives, quality, metrics)))
    return None, closest["number"]


def overrides_text(overrides: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={_short(v)}" for k, v in overrides.items())


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def progress_line(record: Mapping[str, Any], best: Mapping[str, Any] | None, done: int, max_trials: int | None,
                  elapsed_s: float, max_minutes: float | None, objectives: list[str], quality: str | None,
                  constraint_names: list[str]) -> str:
    """``trial 3 [full, 41 s] knob=…: latency_ms=12.3 probe_accuracy=0.81, passed | best: trial 1 … | [###---] 4/24``."""
    shown = list(dict.fromkeys([*objectives, *([quality] if quality else []), *constraint_names]))
    numbers = " ".join(f"{n}={_short(value_of(record, n))}" for n in shown if value_of(record, n) is not None)
    if record.get("error"):
        verdict = "failed: " + str(record["error"]).splitlines()[0][:200]
    elif record.get("passed"):
        verdict = "passed"
    else:
        verdict = "not passed: " + "; ".join(record.get("failures") or [])[:300]
    head = f"search: trial {record['number']} [{record.get('level')}, {record.get('seconds', 0):.0f} s] " \
           f"{overrides_text(record.get('overrides') or {})}: {numbers or 'no numbers'}, {verdict}"
    if best is not None:
        best_numbers = " ".join(f"{n}={_short(value_of(best, n))}" for n in objectives)
        head += f" | best so far: trial {best['number']} ({best_numbers})"
    else:
        head += " | no passing trial yet"
    return f"{head} | {bar(done, max_trials, elapsed_s, max_minutes)}"


def bar(done: int, max_trials: int | None, elapsed_s: float, max_minutes: float | None, width: int = 20) -> str:
    """A text progress bar over the budget: trials, or wall time, whichever is further along."""
    fractions = []
    parts = []
    if max_trials:
        fractions.append(done / max_trials)
        parts.append(f"{done}/{max_trials} trials")
    else:
        parts.append(f"{done} trials")
    if max_minutes:
        fractions.append(elapsed_s / 60 / max_minutes)
        parts.append(f"{elapsed_s / 60:.1f}/{max_minutes:g} min")
    f = min(1.0, max(fractions or [0.0]))
    filled = round(f * width)
    return f"[{'#' * filled}{'.' * (width - filled)}] " + ", ".join(parts)
