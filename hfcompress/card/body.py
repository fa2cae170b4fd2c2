"""README.md itself: the front matter (``ModelCardData``) and the body, one function per section."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from ..evaluation import compare_blocks
from ..plugin import Metric
from .metadata import (
    _data_source,
    _data_spec,
    _eval_spec_name,
    _folder_name,
    _model_name,
    _recipe_declarations,
    base_license,
    base_model_id,
    base_model_relation,
)
from .plot import write_plot
from .search import search_lines
from .snippets import _snippet
from .tables import (
    _candidates_tables,
    _comparison_table,
    _environment_lines,
    _metric_label,
    _model_index_metrics,
    _steps_table,
    fmt,
)


@dataclass
class _CardInputs:
    """What every section reads, derived once from results.json, the recipe and the folder's config."""

    folder: Path
    results: dict[str, Any]
    recipe: dict[str, Any]
    metrics: Mapping[str, Metric]
    base: dict[str, Any]
    comp: dict[str, Any]
    comparison: dict[str, Any]
    steps: list[dict[str, Any]]
    model: str
    task: str
    output_format: Any
    base_id: str | None
    repo: Any
    name: str
    data_name: str
    source_prefix: str | None
    data_info: dict[str, Any]
    techniques: list[str]


def _card_inputs(
    folder: Path, results: dict[str, Any], recipe_dict: dict[str, Any], metrics: Mapping[str, Metric]
) -> _CardInputs:
    base = results.get("base") or {}
    comp = results.get("compressed") or {}
    steps = list(results.get("steps") or [])
    config_file = folder / "config.json"
    marker = (json.loads(config_file.read_text()).get("hfcompress") or {}) if config_file.is_file() else {}
    model = str(results.get("model") or recipe_dict.get("model") or "")
    data_name = _eval_spec_name(_data_spec(results, recipe_dict))
    return _CardInputs(
        folder=folder,
        results=results,
        recipe=recipe_dict,
        metrics=metrics,
        base=base,
        comp=comp,
        comparison=results.get("comparison") or compare_blocks(base, comp),
        steps=steps,
        model=model,
        task=str(results.get("task") or marker.get("task") or recipe_dict.get("task") or "feature-extraction"),
        output_format=marker.get("format") or (steps[-1].get("format") if steps else "pytorch"),
        base_id=base_model_id(model),
        repo=(recipe_dict.get("push") or {}).get("repo_id"),
        name=_model_name(folder, recipe_dict),
        data_name=data_name,
        source_prefix=data_name.split(":", 1)[0] if ":" in data_name else None,
        data_info=results.get("data") or {},
        techniques=[str(s.get("technique")) for s in steps if s.get("technique")],
    )


def _front_matter(c: _CardInputs) -> Any:
    """The metadata: base model, relation, license, tags, pipeline tag and the model-index."""
    from huggingface_hub import EvalResult, ModelCardData

    eval_results = [
        EvalResult(
            task_type=c.task,
            dataset_type=c.data_name,
            dataset_name=f"{c.data_name} (held-out split)",
            dataset_split="held-out",
            metric_type=metric,
            metric_value=value,
            metric_name=_metric_label(metric, c.metrics),
        )
        for metric, value in _model_index_metrics(c.comp)
    ]
    tags = ["hfcompress", "compressed", *c.techniques]
    if c.output_format and c.output_format != "pytorch":
        tags.append(str(c.output_format))
    relation = base_model_relation(c.steps, c.output_format)
    extra: dict[str, Any] = {"base_model_relation": relation} if c.base_id and relation else {}
    own_dataset = c.source_prefix is None and base_model_id(c.data_name) and not Path(c.data_name).exists()
    return ModelCardData(
        base_model=c.base_id,
        license=base_license(c.model, c.recipe.get("revision")),
        library_name="transformers" if c.output_format in ("pytorch", "quanto") else None,
        pipeline_tag=c.task,
        tags=list(dict.fromkeys(tags)),
        model_name=c.name,
        eval_results=eval_results or None,
        datasets=[c.data_name] if own_dataset else None,
        **extra,
    )


def _results_section(c: _CardInputs, version: Any, plot: Path | None) -> list[str]:
    """The title, what was done, the base-vs-compressed table, the plot and the gate's verdict."""
    base_link = f"[{c.base_id}](https://huggingface.co/{c.base_id})" if c.base_id else f"`{c.model}`"
    chain = " → ".join(c.techniques) if c.techniques else "no steps"
    lines = [
        f"# {c.name}",
        "",
        f"{base_link} compressed with [hfcompress](https://pypi.org/project/hfcompress/) {version}: {chain}. "
        "The base and the compressed model were measured by the same code, on the same held-out data, "
        "threads, batch and sequence length; every number below is copied from `results.json`.",
        "",
        "## Base vs compressed",
        "",
        *_comparison_table(c.base, c.comp, c.comparison, c.metrics),
        "",
        "Fidelity compares the compressed model's outputs with the base model's on each held-out sample, "
        "so it has no base value. Change = compressed − base (relative change in parentheses).",
        "",
    ]
    if plot is not None:
        lines += [f"![Quality vs latency and size, base and compressed]({plot.name})", ""]
    return lines + _gate_lines(c.results.get("gate"))


def _gate_lines(gate: Any) -> list[str]:
    if gate and gate.get("config") is None and gate.get("passed"):
        gate = None  # no gate was configured: nothing to report
    if not gate:
        return []
    if gate.get("passed"):
        return ["Quality gate: **passed** (`" + json.dumps(gate.get("config"), sort_keys=True) + "`).", ""]
    return ["Quality gate: **failed**:", "", *[f"- {f}" for f in gate.get("failures") or []], ""]


def _evaluation_section(c: _CardInputs, before: list[str]) -> list[str]:
    """The data (with its source's description and license) and the settings, each listed once.

    ``before``: the card's lines so far; a settings line already on the card is not repeated.
    """
    # the conditions the evaluators declare as settings: identical for both models by construction
    settings = c.comp.get("settings") or c.base.get("settings") or {}
    lines = ["## Evaluation data and settings", ""]
    data_source = _data_source(c.source_prefix)
    about = [data_source.description, f"license: {data_source.license}" if data_source.license else ""] \
        if data_source is not None else []
    lines.append(f"- data: `{c.data_name}`" + "".join(f", {part}" for part in about if part))
    for key, label in (("train_samples", "training/calibration samples"), ("eval_samples", "held-out samples"),
                       ("evaluated_samples", "held-out samples evaluated")):
        if c.data_info.get(key) is not None:
            lines.append(f"- {label}: {fmt(c.data_info[key])}")
    lines += _train_source_lines(c)
    if c.data_info.get("fingerprint"):
        lines.append(f"- data fingerprint: `{c.data_info['fingerprint']}`")
    declared_order = list(c.metrics)
    for key, value in sorted(settings.items(), key=lambda kv: (
            declared_order.index(kv[0]) if kv[0] in declared_order else len(declared_order), kv[0])):
        line = f"- {_metric_label(key, c.metrics)}: {fmt(value)}"
        # "held-out samples evaluated" is in the data lines already
        if value is not None and line not in before and line not in lines:
            lines.append(line)
    return lines + [
        "- evaluation never sees a sample used for training or calibration (the split is by a hash of each text)",
        "",
    ]


def _train_source_lines(c: _CardInputs) -> list[str]:
    """With ``data.extra_train``: the texts per source, and which reported metrics are then in-domain.

    An evaluator that names a data set in a metric's label (the transfer probes do) scores data the
    model was told is unseen; when that set was trained on, the card says so next to the number's name.
    """
    sources = c.data_info.get("train_sources") or {}
    if not sources:
        return []
    lines = ["- training text (text only) from: " + ", ".join(f"`{s}` {fmt(n)}" for s, n in sources.items())]
    reported = set(c.comp.get("metrics") or {})
    for source in list(sources)[1:]:
        spec = source.split(" (")[0]  # "stsb:train (sentence2)": the set is stsb:train
        named = [m.label for key, m in c.metrics.items() if key in reported and spec in m.label]
        if named:
            lines.append(f"- `{source}` was trained on, so read as in-domain: " + "; ".join(named))
    return lines


def _environment_section(c: _CardInputs) -> list[str]:
    return ["## Hardware and software", "", *_environment_lines(c.results.get("environment") or {}), ""]


def _steps_section(c: _CardInputs) -> list[str]:
    return ["## Steps", "", *_steps_table(c.steps), "", *_candidates_tables(c.steps)]


def _recipe_section(c: _CardInputs) -> list[str]:
    return [
        "## Recipe",
        "",
        "The resolved recipe, saved next to this card as `hfcompress.yaml`:",
        "",
        "```yaml",
        yaml.safe_dump(c.recipe, sort_keys=False, allow_unicode=True).rstrip(),
        "```",
        "",
    ]


def _usage_section(c: _CardInputs) -> list[str]:
    return ["## How to use", "", *_snippet(c.folder, c.task, c.repo, _folder_name(c.folder)), ""]


def card_for_repo(folder: str | Path, repo_id: str) -> str | None:
    """The folder's card with its "How to use" snippet loading from ``repo_id``, or None if it does already.

    A folder compressed without ``push.repo_id`` has a card whose snippet loads the local folder;
    ``push`` publishes this text instead. Only that section is rendered again: every other line,
    the numbers included, stays as the run wrote it.
    """
    import yaml

    folder = Path(folder)
    text = (folder / "README.md").read_text(encoding="utf-8")
    start = text.find("\n## How to use\n")
    end = text.find("\n## ", start + 1)
    if start < 0 or end < 0:
        return None  # not a card hfcompress wrote: publish it as it is
    results = json.loads((folder / "results.json").read_text())
    recipe = yaml.safe_load((folder / "hfcompress.yaml").read_text()) or {}
    c = replace(_card_inputs(folder, results, recipe, _recipe_declarations(recipe)), repo=repo_id)
    section = "\n".join(_usage_section(c))
    updated = text[: start + 1] + section + text[end:]
    return None if updated == text else updated


def _reproduce_section(version: Any) -> list[str]:
    return [
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


def write_card(
    folder: str | Path,
    results: dict[str, Any],
    recipe_dict: dict[str, Any],
    metrics: Mapping[str, Metric] | None = None,
    repo_id: str | None = None,
) -> Path:
    """Write ``folder/README.md`` (and ``folder/evaluation.png``) from results.json and the resolved recipe.

    ``metrics``: name → :class:`Metric` as the evaluators that ran declare them (labels, units,
    directions); by default, the declarations of the evaluators in the recipe's ``evaluate``.
    ``repo_id``: the repo the folder is pushed to (the snippet loads it); default the recipe's ``push.repo_id``.
    """
    from huggingface_hub import ModelCard

    from .. import __version__

    folder = Path(folder)
    metrics = _recipe_declarations(recipe_dict) if metrics is None else metrics
    c = _card_inputs(folder, results, recipe_dict, metrics)
    if repo_id:
        c = replace(c, repo=repo_id)
    card_data = _front_matter(c)
    plot = write_plot(folder, results, metrics)
    version = results.get("hfcompress_version") or (recipe_dict.get("provenance") or {}).get("packages", {}).get(
        "hfcompress", __version__
    )
    lines = _results_section(c, version, plot)
    lines += search_lines(results.get("search"), metrics, plot)
    lines += _evaluation_section(c, lines)
    lines += [
        *_environment_section(c),
        *_steps_section(c),
        *_recipe_section(c),
        *_usage_section(c),
        *_reproduce_section(version),
    ]
    body = "\n".join(lines)
    card = ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n{body}")
    path = folder / "README.md"
    card.save(path)
    return path
