"""The card's tables and lists, and :func:`fmt`, which prints a number exactly as results.json holds it."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ..evaluation import TOP_LEVEL, declaration
from ..plugin import Metric


def with_role(metrics: Mapping[str, Metric], role: str) -> list[str]:
    """Names of the declared metrics with ``role`` (quality, fidelity), in declaration order."""
    return [name for name, metric in metrics.items() if metric.role == role]


def fmt(value: Any) -> str:
    """A number exactly as results.json holds it (shortest round-trip form), with thousands separators."""
    if isinstance(value, bool) or value is None:
        return "—" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return f"{int(value):,}"
        text = repr(value)
        if "e" in text or not math.isfinite(value):
            return text
        sign = "-" if text.startswith("-") else ""
        whole, _, frac = text.lstrip("-").partition(".")
        return f"{sign}{int(whole):,}.{frac}"
    return str(value)


def _signed(value: Any) -> str:
    text = fmt(value)
    return text if text.startswith(("-", "—")) else "+" + text


def _metric_label(name: str, metrics: Mapping[str, Metric]) -> str:
    return declaration(name, metrics).title


def _value(block: dict[str, Any], name: str) -> Any:
    return block.get(name) if name in TOP_LEVEL else (block.get("metrics") or {}).get(name)


def _comparison_table(
    base: dict[str, Any], comp: dict[str, Any], comparison: dict[str, Any], metrics: Mapping[str, Metric]
) -> list[str]:
    rows = ["| | Base | Compressed | Change |", "|---|---:|---:|---:|"]
    deltas = comparison.get("metrics") or {}
    if "base_size_mb" in comparison:
        rows.append(
            f"| Size on disk (MB) | {fmt(comparison['base_size_mb'])} | {fmt(comparison['compressed_size_mb'])} "
            f"| ×{fmt(comparison['size_ratio'])} |"
        )
    if "speedup" in comparison:
        rows.append(
            f"| Speedup | | | {fmt(comparison['speedup'])}× faster |"
            if comparison["speedup"] >= 1
            else f"| Speedup | | | {fmt(comparison['speedup'])}× (slower) |"
        )
    # quality first (the plot's preference), then the rest as the evaluators declare them
    order = [*with_role(metrics, "quality"), *(name for name in metrics if name not in TOP_LEVEL)]
    names = list(TOP_LEVEL) + sorted(
        set(base.get("metrics") or {}) | set(comp.get("metrics") or {}),
        key=lambda n: (order.index(n) if n in order else len(order), n),
    )
    for name in names:
        b, c = _value(base, name), _value(comp, name)
        if b is None and c is None:
            continue
        change = ""
        delta = deltas.get(name)
        if delta is not None:
            change = _signed(delta["change"])
            if "relative_change_pct" in delta:
                change += f" ({_signed(delta['relative_change_pct'])}%)"
            if delta["change"]:
                better = (delta["change"] > 0) == declaration(name, metrics).higher_is_better
                change += " better" if better else " worse"
        elif b is None and declaration(name, metrics).perfect is not None:
            change = "vs base"  # measured against the base by construction (fidelity)
        label = _metric_label(name, metrics).replace("|", "\\|")
        rows.append(f"| {label} | {fmt(b)} | {fmt(c)} | {change} |")
    return rows


def _steps_table(steps: list[dict[str, Any]]) -> list[str]:
    if not steps:
        return ["No compression steps: the compressed model is the base model, re-saved."]
    # configs are in the recipe section; the table says what each step did
    rows = ["| # | Technique | Seconds | What changed |", "|---|---|---:|---|"]
    for i, step in enumerate(steps, 1):
        changes = step.get("changes") or {}
        shown = [f"{k}: {_short(v)}" for k, v in changes.items() if _short(v) is not None]
        seconds = step.get("seconds")
        cached = " (cached)" if step.get("cached") else ""
        rows.append(
            f"| {i} | {step.get('technique', '?')}{cached} | {fmt(seconds)} | "
            + ("; ".join(shown).replace("|", "\\|") or "—")
            + " |"
        )
    return rows


# A candidate search (quantization's ``auto``) lists one row per candidate in its changes; these
# are the columns shown, in this order, when present (encoders: latency and fidelity; causal LMs:
# decoding speed, perplexity and greedy agreement). Everything else stays in results.json.
CANDIDATE_COLUMNS = (
    ("decode_tokens_per_s", "decode tokens/s"), ("decode_speedup", "decode speed-up"), ("ttft_ms", "TTFT ms"),
    ("perplexity", "perplexity"), ("perplexity_increase", "perplexity change"),
    ("greedy_agreement", "greedy agreement"), ("speedup", "speed-up"), ("size_bytes", "size bytes"),
)


def _candidates_tables(steps: list[dict[str, Any]]) -> list[str]:
    """Every measured candidate of each step that searched (``changes.candidates``), chosen marked."""
    out: list[str] = []
    for i, step in enumerate(steps, 1):
        changes = step.get("changes") or {}
        rows = [r for r in changes.get("candidates") or [] if isinstance(r, dict) and "candidate" in r]
        if not rows:
            continue
        cols = [(key, label) for key, label in CANDIDATE_COLUMNS if any(key in r for r in rows)]
        extra = [("fidelity", "fidelity (cosine mean)")] if any("fidelity" in r for r in rows) else []
        out += [f"Step {i} ({step.get('technique', '?')}) candidates, chosen: **{changes.get('chosen')}**", "",
                "| candidate | status | " + " | ".join(label for _, label in cols + extra) + " | reason |",
                "|---|---|" + "---:|" * len(cols + extra) + "---|"]
        for r in rows:
            cells = [fmt(r.get(key)) for key, _ in cols]
            if extra:
                cells.append(fmt((r.get("fidelity") or {}).get("cosine_mean")))
            reason = str(r.get("reason") or "").replace("|", "\\|")[:160]
            out.append(f"| {r['candidate']} | {r.get('status', '?')} | " + " | ".join(cells) + f" | {reason} |")
        out.append("")
    return out


def _short(value: Any) -> str | None:
    """Scalars and short lists are shown; long histories (loss curves) stay in results.json."""
    if isinstance(value, (int, float, str, bool)) and not (isinstance(value, str) and len(value) > 80):
        return fmt(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)
    if isinstance(value, list) and len(value) <= 6 and all(isinstance(v, (int, float, str)) for v in value):
        return "[" + ", ".join(fmt(v) if isinstance(v, (int, float)) else str(v) for v in value) + "]"
    return None


def _environment_lines(env: dict[str, Any]) -> list[str]:
    lines = []
    packages = env.get("packages") or {}
    for key, value in env.items():
        if key == "packages" or isinstance(value, (dict, list)):
            continue
        lines.append(f"- {key.replace('_', ' ')}: {fmt(value) if isinstance(value, (int, float)) else value}")
    if packages:
        lines.append("- software: " + ", ".join(f"{name} {version}" for name, version in packages.items()))
    return lines


def _model_index_metrics(comp: dict[str, Any]) -> list[tuple[str, float]]:
    out = []
    for name in list(TOP_LEVEL) + sorted(comp.get("metrics") or {}):  # measurements only, never settings
        value = _value(comp, name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out.append((name, value))
    return out
