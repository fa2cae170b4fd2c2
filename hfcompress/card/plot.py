"""The plot on the card: quality vs latency and vs size, base and compressed (``evaluation.png``);
after a search, a third panel with every full-level trial and the frontier (:mod:`.search`)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..evaluation import declaration, metric_declarations
from ..plugin import Metric
from .tables import _metric_label, with_role

log = logging.getLogger("hfcompress.card")  # one logger for the whole card package, as before the split

PLOT_FILE = "evaluation.png"


def _plot_metric(base: dict[str, Any], comp: dict[str, Any],
                 metrics: Mapping[str, Metric]) -> tuple[str, Any, Any] | None:
    bm, cm = base.get("metrics") or {}, comp.get("metrics") or {}
    for name in with_role(metrics, "quality"):
        if isinstance(bm.get(name), (int, float)) and isinstance(cm.get(name), (int, float)):
            return name, bm[name], cm[name]
    for name in with_role(metrics, "fidelity"):
        if isinstance(cm.get(name), (int, float)):
            return name, None, cm[name]
    return None


def write_plot(folder: Path, results: dict[str, Any], metrics: Mapping[str, Metric] | None = None) -> Path | None:
    """Quality vs latency and vs size, base and compressed, as ``evaluation.png``; None without matplotlib.

    ``metrics``: the evaluators' declarations, for the axis label and direction (default: every
    registered evaluator's).
    """
    metrics = metric_declarations() if metrics is None else metrics
    base, comp = results.get("base") or {}, results.get("compressed") or {}
    chosen = _plot_metric(base, comp, metrics)
    if chosen is None:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed (pip install 'hfcompress[plot]'): the card has no plot")
        return None
    from .search import draw_search, has_search_plot

    name, bq, cq = chosen
    axes_spec = [("latency_ms", "latency, median (ms)", 1.0), ("size_bytes", "size on disk (MB)", 1e-6)]
    search = results.get("search")
    with_search = has_search_plot(search)  # a search's frontier: a third panel, not another file
    fig, axes = plt.subplots(1, 3 if with_search else 2, figsize=(13.5 if with_search else 9, 3.6))
    if with_search:
        draw_search(axes[2], search or {}, metrics, base)
    for ax, (key, label, scale) in zip(axes[:2], axes_spec, strict=True):
        for tag, block, quality, color in (("base", base, bq, "#888888"), ("compressed", comp, cq, "#d62728")):
            x = block.get(key)
            if quality is None or x is None:
                continue
            ax.scatter([x * scale], [quality], s=70, color=color, zorder=3)
            ax.annotate(tag, (x * scale, quality), textcoords="offset points", xytext=(6, 6))
        ax.set_xlabel(label)
        ax.set_ylabel(_metric_label(name, metrics))
        ax.grid(alpha=0.3)
        ax.margins(0.25)
    direction = "higher is better" if declaration(name, metrics).higher_is_better else "lower is better"
    note = "" if bq is not None else " (the base is the reference)"
    fig.suptitle(f"{_metric_label(name, metrics)} ({direction}){note}", fontsize=10)
    fig.tight_layout()
    path = folder / PLOT_FILE
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
