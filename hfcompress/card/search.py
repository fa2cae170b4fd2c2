"""The card's "Search" section: the best few trials, the frontier plot (a panel of ``evaluation.png``), the choice.

Read from ``results["search"]`` only (see :mod:`hfcompress.recipe_search`); numbers are printed
with :func:`fmt` exactly as results.json holds them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..plugin import Metric
from .tables import _metric_label, fmt

log = logging.getLogger("hfcompress.card")

BEST_FEW = 5


def _value(record: Mapping[str, Any], name: str) -> Any:
    if name in ("latency_ms", "size_bytes", "num_parameters"):
        return record.get(name)
    return (record.get("objective") or {}).get(name, (record.get("metrics") or {}).get(name))


def _best_few(search: Mapping[str, Any], n: int = BEST_FEW) -> list[dict[str, Any]]:
    """The chosen trial first, then passing full-level trials, then the rest, each by the first objective."""
    records = list(search.get("trials") or [])
    objective = (search.get("objective") or ["latency_ms"])[0]
    maximize = (search.get("directions") or ["minimize"])[0] == "maximize"

    def key(r: Mapping[str, Any]) -> tuple[Any, ...]:
        v = _value(r, objective)
        v = v if isinstance(v, (int, float)) else float("inf") if not maximize else float("-inf")
        return (r.get("number") != search.get("chosen"), not r.get("passed"), r.get("level") != "full",
                -v if maximize else v, r.get("number"))

    return sorted(records, key=key)[:n]


def search_lines(search: Mapping[str, Any] | None, metrics: Mapping[str, Metric], plot: Path | None) -> list[str]:
    if not search:
        return []
    records = list(search.get("trials") or [])
    objectives = list(search.get("objective") or [])
    quality = search.get("quality_metric")
    full = sum(1 for r in records if r.get("level") == "full")
    chosen, closest = search.get("chosen"), search.get("closest")
    knobs = ", ".join(f"`{k}`" for k in search.get("knobs") or {})
    lines = [
        "## Search",
        "",
        f"This model is one of {len(records)} candidates an [Optuna](https://optuna.org) search tried over {knobs} "
        + ("(all at the full level), " if full == len(records) else
           f"({full} of them at the full training budget; the others stopped after the cheap screening level), ")
        +
        f"optimising {' and '.join(f'`{o}`' for o in objectives)} under the constraints "
        f"`{json.dumps(search.get('constraints'), sort_keys=True)}`. Trials were scored on one half of the "
        "held-out data; the numbers above are the chosen candidate's final evaluation on the other half, "
        "which no trial was scored on.",
        "",
    ]
    if chosen is not None:
        lines += [f"Chosen: trial {chosen}, the best one on `{objectives[0]}` that passed the constraints.", ""]
    else:
        lines += [f"**No candidate passed the constraints**; this folder holds the closest one, trial {closest}.", ""]
    columns = list(dict.fromkeys([*objectives, *([quality] if quality else [])]))
    header = ["Trial", "Settings", "Level", *[_metric_label(c, metrics) for c in columns], "Passed", "Seconds"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    frontier = set(search.get("frontier") or [])
    for r in _best_few(search):
        mark = " (chosen)" if r.get("number") == chosen else " (closest)" if r.get("number") == closest else ""
        settings = ", ".join(f"{k}={fmt(v)}" for k, v in (r.get("overrides") or {}).items())
        verdict = "yes" if r.get("passed") else "no: " + "; ".join(r.get("failures") or [])[:160].replace("|", "/")
        cells = [f"{r.get('number')}{mark}{' ◆' if r.get('number') in frontier else ''}", settings,
                 str(r.get("level")), *[fmt(_value(r, c)) for c in columns], verdict, fmt(r.get("seconds"))]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "◆ on the frontier (no other full-level trial is better on every axis). Every trial, with its "
              "overrides, metrics and reasons, is in `results.json` under `search`.", ""]
    if plot is not None and has_search_plot(search):
        lines += [f"The right-hand panel of `{plot.name}` above plots every full-level trial: quality against "
                  f"`{objectives[0]}`, the frontier joined, the chosen candidate circled, the base model as a star.", ""]
    return lines


def _points(search: Mapping[str, Any] | None) -> list[tuple[dict[str, Any], float, float]]:
    """(trial, first objective, quality) for every full-level trial that has both numbers."""
    if not search or not search.get("quality_metric") or not search.get("objective"):
        return []
    quality, objective = search["quality_metric"], search["objective"][0]
    out = []
    for r in search.get("trials") or []:
        x, y = _value(r, objective), _value(r, quality)
        if r.get("level") == "full" and isinstance(x, (int, float)) and isinstance(y, (int, float)):
            out.append((r, float(x), float(y)))
    return out


def _base_point(search: Mapping[str, Any], base: Mapping[str, Any] | None) -> tuple[float, float, str] | None:
    """The base model on the trials' axes: as the last full-level trial measured it (the search
    half), else the final evaluation's ``base`` block (the other half; older results.json)."""
    quality, objective = search["quality_metric"], search["objective"][0]
    measured = [r["base"] for r in search.get("trials") or [] if r.get("level") == "full" and r.get("base")]
    block, label = (measured[-1], "base model") if measured else (base, "base model (final half)")
    if not block:
        return None
    x, y = _value(block, objective), _value(block, quality)
    return (float(x), float(y), label) if isinstance(x, (int, float)) and isinstance(y, (int, float)) else None


def has_search_plot(search: Mapping[str, Any] | None) -> bool:
    return bool(_points(search))


def draw_search(ax: Any, search: Mapping[str, Any], metrics: Mapping[str, Metric],
                base: Mapping[str, Any] | None = None) -> None:
    """Quality vs the first objective for every full-level trial, the frontier joined, the chosen one
    circled and the base model drawn: the right-hand panel of ``evaluation.png`` (so no extra file
    counts as part of the model). Screening-level numbers are left out: they come from fewer
    samples (a different base score) and shorter training, so they do not share these axes."""
    points = _points(search)
    passed = [(x, y) for r, x, y in points if r.get("passed")]
    failed = [(x, y) for r, x, y in points if not r.get("passed")]
    if passed:
        ax.scatter(*zip(*passed, strict=True), s=30, color="#1f77b4", label="passed", zorder=3)
    if failed:
        ax.scatter(*zip(*failed, strict=True), s=30, color="#bbbbbb", marker="x", label="did not pass", zorder=3)
    reference = _base_point(search, base)
    if reference is not None:
        ax.scatter([reference[0]], [reference[1]], s=90, marker="*", color="#444444", label=reference[2], zorder=3)
    by_number = {r["number"]: (x, y) for r, x, y in points}
    front = [by_number[n] for n in search.get("frontier") or [] if n in by_number]
    if len(front) > 1:
        ax.plot(*zip(*sorted(front), strict=True), color="#1f77b4", alpha=0.5, label="frontier")
    pick = search.get("chosen") if search.get("chosen") is not None else search.get("closest")
    if pick in by_number:
        x, y = by_number[pick]
        ax.scatter([x], [y], s=150, facecolors="none", edgecolors="#d62728", linewidths=2, zorder=4,
                   label="chosen" if search.get("chosen") is not None else "closest")
    for r, x, y in points:
        ax.annotate(str(r["number"]), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel(_metric_label(search["objective"][0], metrics) + " (search trials)")
    ax.set_ylabel(_metric_label(search["quality_metric"], metrics))
    ax.set_title("search: full-level trials (search half of held-out)", fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
