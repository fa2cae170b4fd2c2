"""Results: the JSON file (schema checked on write), the markdown table and the PNG plot."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

__all__ = ["REQUIRED_VARIANT_KEYS", "environment", "head_text", "headline", "markdown_table", "plot", "validate_results", "write_results"]

REQUIRED_VARIANT_KEYS = ("name", "tool", "size_bytes", "num_parameters", "latency_ms", "metrics", "flops_per_batch",
                         "error")
RESULTS_DIR = Path(__file__).parent / "results"


def environment(threads: list[int]) -> dict[str, Any]:
    from hfcompress.recording import cpu_name, package_versions

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
        "cpu": cpu_name(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
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
    stem = f"{results['date']}-{results['suite']}" + (f"-{results['tag']}" if results.get("tag") else "")
    stem += "-quick" if results.get("quick") else ""
    paths = {"json": out_dir / f"{stem}.json", "md": out_dir / f"{stem}.md", "png": out_dir / f"{stem}.png"}
    results["headline"] = headline(results)
    results["headline_task"] = headline(results, "fine-tuned classifier + hfcompress default", "task")
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


def headline(results: dict[str, Any], name: str = "hfcompress default recipe", group: str = "baseline") -> dict[str, Any] | None:
    """The default recipe against PyTorch fp32 and the fastest single-tool baseline (headline threads).

    ``group="task"`` compares the compressed fine-tuned classifier with its own fp32/bf16 rows.
    """
    env = results["environment"]
    t = str(env["headline_threads"])
    shapes = list(results["shapes"])
    ok = {v["name"]: v for v in _ok(results)}
    ours, ref = ok.get(name), reference_variant(results, group)
    baselines = [v for v in _ok(results) if v.get("group", "baseline") == group and v["tool"] != "hfcompress"]
    if ours is None or ref is None or not baselines:
        return None
    quality = next((q for q in ("probe_accuracy", "accuracy", "perplexity") if q in ours["metrics"]), "")
    out: dict[str, Any] = {"variant": name, "threads": int(t), "quality_metric": quality, "shapes": {}}
    for shape in shapes:
        best = min(baselines, key=lambda v: v["latency_ms"][t][shape])
        out["shapes"][shape] = {
            "latency_ms": ours["latency_ms"][t][shape],
            "speedup_vs_fp32": round(ref["latency_ms"][t][shape] / ours["latency_ms"][t][shape], 3),
            "best_baseline": best["name"],
            "speedup_vs_best_baseline": round(best["latency_ms"][t][shape] / ours["latency_ms"][t][shape], 3),
        }
    smallest = min(baselines, key=lambda v: v["size_bytes"])
    out["size_ratio_vs_fp32"] = round(ours["size_bytes"] / ref["size_bytes"], 4)
    out["smallest_baseline"] = smallest["name"]
    out["size_ratio_vs_smallest_baseline"] = round(ours["size_bytes"] / smallest["size_bytes"], 4)
    out["cosine_to_base"] = ours["metrics"].get("cosine_to_base")
    decode = f"decode_tokens_per_s_{t}t"
    if decode in ours["metrics"]:  # decoder suite: batch-1 decoding against every baseline that generates
        rates = {v["name"]: v["metrics"][decode] for v in baselines if decode in v["metrics"]}
        out["decode_tokens_per_s"] = ours["metrics"][decode]
        out["decode_speedup_vs"] = {n: round(ours["metrics"][decode] / r, 3) for n, r in rates.items() if r}
        out["greedy_agreement"] = ours["metrics"].get("greedy_agreement")
    if quality in ref["metrics"] and quality in ours["metrics"]:
        out[f"{quality}_fp32"] = ref["metrics"][quality]
        out[quality] = ours["metrics"][quality]
        out[f"{quality}_change"] = round(ours["metrics"][quality] - ref["metrics"][quality], 6)
    return out


def head_text(h: dict[str, Any]) -> str:
    parts = []
    for shape, d in h["shapes"].items():
        parts.append(f"{shape}: {d['latency_ms']:.1f} ms, {d['speedup_vs_fp32']:.2f}x faster than PyTorch fp32, "
                     f"{d['speedup_vs_best_baseline']:.2f}x vs the fastest single tool ({d['best_baseline']})")
    text = f"**{h['variant']}** ({h['threads']} thread): " + "; ".join(parts) + ". "
    text += (f"Size {h['size_ratio_vs_fp32']:.3f}x of fp32, {h['size_ratio_vs_smallest_baseline']:.2f}x of the "
             f"smallest single tool ({h['smallest_baseline']}).")
    q = h["quality_metric"]
    if q in h:
        text += f" {q}: {h[q]:.4f} vs {h[q + '_fp32']:.4f} for fp32 ({h[q + '_change']:+.4f})"
        if h.get("cosine_to_base") is not None:
            text += f"; mean cosine to fp32 {h['cosine_to_base']:.4f}"
        text += "."
    if h.get("decode_tokens_per_s") is not None:
        text += (f" Decode (batch 1, greedy): {h['decode_tokens_per_s']:.1f} tokens/s, "
                 + ", ".join(f"{r:.2f}x {n}" for n, r in h["decode_speedup_vs"].items())
                 + f"; greedy agreement with fp32 {h['greedy_agreement']}.")
    return text


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
    heads = [headline(results), headline(results, "fine-tuned classifier + hfcompress default", "task")]
    if any(heads):
        lines += ["## Headline", ""] + [head_text(h) + "\n" for h in heads if h]
    for group in ("baseline", "task"):
        ref = reference_variant(results, group)
        rows = [v for v in results["variants"] if (v.get("group", "baseline") == "task") == (group == "task")]
        if not rows:
            continue
        metric_names: list[str] = []
        for v in rows:
            for k in v["metrics"] if v["error"] is None else []:
                if k not in metric_names and not k.endswith("_min") and not k.startswith("eval_"):
                    metric_names.append(k)
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
            cells.append(_fmt(v.get("achieved_gflops", {}).get(head_t, {}).get(shapes[0])))
            frac = v.get("fraction_of_peak", {}).get(head_t, {}).get(shapes[0])
            cells.append(_fmt(frac * 100 if frac is not None else None) + (f" ({v.get('compute_dtype')})" if frac else ""))
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
                    marker="s" if v.get("group") == "task" else "o",
                    color="tab:green" if v["tool"] == "hfcompress" else "tab:blue")
        ax2.annotate(v["name"], (x, q), fontsize=7, xytext=(4, 2), textcoords="offset points")
    ax2.set_xscale("log")
    ax2.set_xlabel(f"latency ms ({shape}, {head_t} thread), log scale; marker area ~ size")
    ax2.set_ylabel(quality_key.replace("_", " ") + (" (squares: fine-tuned classifier accuracy)"
                                                    if quality_key == "probe_accuracy" else ""))
    if quality_key == "perplexity":
        ax2.set_yscale("log")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
