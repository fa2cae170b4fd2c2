"""Results: the JSON file (schema checked on write), the markdown table and the PNG plot."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

__all__ = ["REQUIRED_VARIANT_KEYS", "environment", "markdown_table", "plot", "validate_results", "write_results"]

REQUIRED_VARIANT_KEYS = ("name", "tool", "size_bytes", "num_parameters", "latency_ms", "metrics", "flops_per_batch",
                         "error")
RESULTS_DIR = Path(__file__).parent / "results"


def environment(threads: list[int]) -> dict[str, Any]:
    from hfcompress.pipeline import _cpu_name, package_versions

    flags = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    try:
        load = os.getloadavg()
    except OSError:
        load = (0.0, 0.0, 0.0)
    return {
        "cpu": _cpu_name(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
        "amx": sorted(f for f in flags if f.startswith("amx")), "avx512": "avx512f" in flags,
        "avx512_bf16": "avx512_bf16" in flags, "avx512_vnni": "avx512_vnni" in flags,
        "threads": threads, "headline_threads": threads[0], "load_average_at_start": [round(x, 2) for x in load],
        "packages": package_versions(),
    }


def validate_results(results: dict[str, Any]) -> None:
    """Raise ValueError if ``results`` does not have the documented shape (see benchmarks/README.md)."""
    for key in ("suite", "date", "environment", "shapes", "timing", "gemm_peak", "variants"):
        if key not in results:
            raise ValueError(f"results: missing top-level key {key!r}")
    if not isinstance(results["variants"], list) or not results["variants"]:
        raise ValueError("results: 'variants' must be a non-empty list")
    threads = [str(t) for t in results["environment"]["threads"]]
    for v in results["variants"]:
        missing = [k for k in REQUIRED_VARIANT_KEYS if k not in v]
        if missing:
            raise ValueError(f"variant {v.get('name')!r}: missing {missing}")
        if v["error"] is None:
            for t in threads:
                lat = v["latency_ms"].get(t)
                if not lat or any(s not in lat for s in results["shapes"]):
                    raise ValueError(f"variant {v['name']!r}: latency_ms[{t!r}] lacks a shape of {list(results['shapes'])}")
            if not isinstance(v["size_bytes"], int) or v["size_bytes"] <= 0:
                raise ValueError(f"variant {v['name']!r}: size_bytes must be a positive integer")


def write_results(results: dict[str, Any], out_dir: Path = RESULTS_DIR) -> dict[str, Path]:
    """Write ``<date>-<suite>.json``, ``.md`` and ``.png``; returns their paths."""
    validate_results(results)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{results['date']}-{results['suite']}" + ("-quick" if results.get("quick") else "")
    paths = {"json": out_dir / f"{stem}.json", "md": out_dir / f"{stem}.md", "png": out_dir / f"{stem}.png"}
    paths["json"].write_text(json.dumps(results, indent=2, default=str) + "\n")
    paths["md"].write_text(markdown_table(results))
    try:
        plot(results, paths["png"])
    except Exception as exc:  # noqa: BLE001 - a plotting problem must not lose the numbers
        paths["md"].write_text(markdown_table(results) + f"\n(plot failed: {type(exc).__name__}: {exc})\n")
        del paths["png"]
    return paths


def _fmt(x: Any, spec: str = ".1f") -> str:
    return "—" if x is None else format(x, spec)


def _ok(results: dict[str, Any]) -> list[dict[str, Any]]:
    return [v for v in results["variants"] if v["error"] is None]


def reference_variant(results: dict[str, Any], group: str = "baseline") -> dict[str, Any] | None:
    """The fp32 PyTorch row of a group: the 1.0x reference for speedups and size ratios."""
    for v in _ok(results):
        if v.get("group", "baseline") == group and v["name"].endswith("PyTorch fp32"):
            return v
    return None


def markdown_table(results: dict[str, Any]) -> str:
    env = results["environment"]
    shapes = list(results["shapes"])
    head_t = str(env["headline_threads"])
    lines = [
        f"# {results['suite']} suite — {results['date']}{' (quick)' if results.get('quick') else ''}",
        "",
        f"Machine: {env['cpu']} ({env['cpu_count']} cores, AMX: {', '.join(env['amx']) or 'no'}); "
        f"threads {', '.join(str(t) for t in env['threads'])} (headline: {head_t}); "
        f"latency = median of {results['timing']['repeats']} runs after {results['timing']['warmup']} warm-up; "
        f"torch {env['packages'].get('torch')}, onnxruntime {env['packages'].get('onnxruntime')}.",
        "",
        "GEMM peak (GFLOP/s; int8: GOP/s): "
        + "; ".join(f"{t} thread(s): " + ", ".join(f"{k} {v:.0f}" for k, v in p.items())
                    for t, p in results["gemm_peak"].items()),
        "",
    ]
    metric_names: list[str] = []
    for v in _ok(results):
        for k in v["metrics"]:
            if k not in metric_names and not k.endswith("_min"):
                metric_names.append(k)
    for group in ("baseline", "task"):
        ref = reference_variant(results, group)
        rows = [v for v in results["variants"] if (v.get("group", "baseline") == "task") == (group == "task")]
        if not rows:
            continue
        lines.append(f"## {'Sentence embeddings' if group == 'baseline' else 'Task-specific (fine-tuned classifier)'}"
                     if results["suite"] == "encoder" else "## Variants")
        lines.append("")
        cols = ["variant", "tool", "size MB", "params M"] + [f"{s} ms ({head_t}t)" for s in shapes]
        cols += [f"{shapes[0]} ms ({t}t)" for t in env["threads"][1:]]
        cols += ["speedup vs fp32", "size vs fp32"] + metric_names + ["GFLOP/batch", "GFLOP/s", "% of peak"]
        lines.append("| " + " | ".join(cols) + " |")
        lines.append("|" + "---|" * len(cols))
        for v in rows:
            if v["error"] is not None:
                lines.append(f"| {v['name']} | {v['tool']} | failed: {v['error'][:120].replace('|', '/')} |"
                             + " |" * (len(cols) - 3))
                continue
            lat = v["latency_ms"][head_t]
            cells = [v["name"], v["tool"], _fmt(v["size_bytes"] / 1e6), _fmt(v["num_parameters"] / 1e6, ".2f")]
            cells += [_fmt(lat.get(s)) for s in shapes]
            cells += [_fmt(v["latency_ms"].get(str(t), {}).get(shapes[0])) for t in env["threads"][1:]]
            if ref:
                cells.append(_fmt(ref["latency_ms"][head_t][shapes[0]] / lat[shapes[0]], ".2f") + "x")
                cells.append(_fmt(v["size_bytes"] / ref["size_bytes"], ".2f") + "x")
            else:
                cells += ["—", "—"]
            for m in metric_names:
                val = v["metrics"].get(m)
                cells.append(_fmt(val, ".4f") if isinstance(val, float) else str(val) if val is not None else "—")
            cells.append(_fmt(v["flops_per_batch"].get(shapes[0], 0) / 1e9, ".2f"))
            cells.append(_fmt(v["achieved_gflops"].get(head_t, {}).get(shapes[0])))
            frac = v["fraction_of_peak"].get(head_t, {}).get(shapes[0])
            cells.append(_fmt(frac * 100 if frac is not None else None) + (f" ({v['compute_dtype']})" if frac else ""))
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    """Latency (headline threads, first shape) per variant, and the quality/latency trade-off."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    env = results["environment"]
    head_t = str(env["headline_threads"])
    shape = next(iter(results["shapes"]))
    rows = _ok(results)
    quality_key = "probe_accuracy" if results["suite"] == "encoder" else "perplexity"
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(15, 0.42 * max(8, len(rows)) + 1.5))
    names = [v["name"] for v in rows]
    lat = [v["latency_ms"][head_t][shape] for v in rows]
    colors = ["tab:green" if v["tool"] == "hfcompress" else "tab:gray" if v.get("group") == "task" else "tab:blue"
              for v in rows]
    ax1.barh(names, lat, color=colors)
    ax1.invert_yaxis()
    ax1.set_xlabel(f"latency ms, batch x seq {shape}, {head_t} thread (median)")
    for y, value in enumerate(lat):
        ax1.text(value, y, f" {value:.0f}", va="center", fontsize=8)
    ax1.set_title(f"{results['suite']} — {results['date']} — {env['cpu']}", fontsize=9)
    for v in rows:
        q = v["metrics"].get(quality_key, v["metrics"].get("accuracy"))
        if q is None:
            continue
        x = v["latency_ms"][head_t][shape]
        ax2.scatter(x, q, s=max(20.0, v["size_bytes"] / 1e6 * 3), alpha=0.6,
                    color="tab:green" if v["tool"] == "hfcompress" else "tab:blue")
        ax2.annotate(v["name"], (x, q), fontsize=7, xytext=(4, 2), textcoords="offset points")
    ax2.set_xscale("log")
    ax2.set_xlabel(f"latency ms ({shape}, {head_t} thread), log scale; marker area ~ size")
    ax2.set_ylabel(quality_key.replace("_", " ") + (" (task variants: accuracy)" if quality_key == "probe_accuracy" else ""))
    if quality_key == "perplexity":
        ax2.set_yscale("log")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
