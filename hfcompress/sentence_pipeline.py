"""Sentence-transformers models through compression: their pipeline files, and that pipeline.

A sentence-transformers model is a transformers model plus a pipeline described by files beside
it: ``modules.json`` lists the modules (the Transformer, whose files are the folder root, then for
example ``1_Pooling/`` and ``2_Normalize``), ``sentence_bert_config.json`` configures the Transformer
(``max_seq_length``, ``do_lower_case``) and ``config_sentence_transformers.json`` holds prompts and the
similarity function. Compression changes only the transformers model, so these files are copied
unchanged from the base model into the output folder (``save_state(..., pipeline_from=...)``), and
``SentenceTransformer(DIR)`` runs the base model's pipeline on the compressed weights.

The loader arguments an output needs (:func:`loader_kwargs`): ``trust_remote_code=True`` when the
folder ships modeling code (head-pruned BERT), ``backend="onnx"`` for ONNX outputs, whose graph
then lives at ``onnx/model.onnx``, where that backend looks for it.

:func:`embed` applies the pipeline's Pooling and Normalize modules to any model hfcompress loads,
without sentence-transformers installed: the pipeline results recorded at compression time (and
re-checked before a push) come from it, and tests compare ``SentenceTransformer(DIR).encode`` with it.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .models import ModelSource
    from .plugin import ModelState

log = logging.getLogger("hfcompress")

MODULES_FILE = "modules.json"
ROOT_FILES = (MODULES_FILE, "sentence_bert_config.json", "config_sentence_transformers.json")
ONNX_SUBFOLDER = "onnx"
"""Where sentence-transformers' ONNX backend looks for ``model.onnx`` (and where it saves one)."""
TRANSFORMER_TYPES = ("sentence_transformers.models.Transformer",
                     "sentence_transformers.base.modules.transformer.Transformer")
POOLING_TYPES = ("sentence_transformers.models.Pooling",
                 "sentence_transformers.sentence_transformer.modules.pooling.Pooling")
NORMALIZE_TYPES = ("sentence_transformers.models.Normalize",
                   "sentence_transformers.sentence_transformer.modules.normalize.Normalize")
# sentence-transformers' legacy boolean Pooling keys, and the mode each one selects.
LEGACY_POOLING_KEYS = {"pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max",
                       "pooling_mode_mean_tokens": "mean", "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens"}


class UnsupportedPipeline(ValueError):
    """The pipeline has a module :func:`embed` does not reimplement (Dense, LayerNorm, ...)."""


def modules(folder: str | Path) -> list[dict[str, Any]] | None:
    """``modules.json`` of ``folder``, or None when it is no sentence-transformers folder."""
    file = Path(folder) / MODULES_FILE
    if not file.is_file():
        return None
    data = json.loads(file.read_text())
    return [dict(m) for m in data] if isinstance(data, list) else None


def is_sentence_transformers(folder: str | Path) -> bool:
    return modules(folder) is not None


def _module_dirs(mods: list[dict[str, Any]]) -> list[str]:
    """The module folders to carry: every module's ``path`` except the Transformer's (the folder root,
    whose model files compression rewrites)."""
    return [str(m.get("path") or "") for m in mods if m.get("path") and m.get("type") not in TRANSFORMER_TYPES]


def _transformer_at_root(mods: list[dict[str, Any]]) -> bool:
    return any(m.get("type") in TRANSFORMER_TYPES and not m.get("path") for m in mods)


def pipeline_folder(source: ModelSource) -> Path | None:
    """A local folder holding the base model's pipeline files, or None for a plain transformers model.

    A local model is its own folder. For a Hub model only the pipeline files are downloaded (a few
    KB, into the Hugging Face cache): transformers' ``from_pretrained`` fetches none of them. A
    Transformer module outside the folder root (a layout hfcompress cannot rewrite) counts as none.
    """
    if source.is_local:
        folder: Path | None = Path(source.path)
    else:
        folder = _download_pipeline(source)
    mods = modules(folder) if folder is not None else None
    if mods is None:
        return None
    if not _transformer_at_root(mods):
        log.warning("%s: sentence-transformers modules.json has no Transformer module at the folder root; "
                    "the output keeps only the transformers model", source.name)
        return None
    return folder


def _download_pipeline(source: ModelSource) -> Path | None:
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        modules_file = Path(hf_hub_download(source.path, MODULES_FILE, revision=source.revision))
    except EntryNotFoundError as exc:
        if not isinstance(exc, LocalEntryNotFoundError):
            return None  # the Hub says the repo has no modules.json: a plain transformers model
        log.warning("%s: %s is not in the local Hugging Face cache and the Hub cannot be reached; if this is "
                    "a sentence-transformers model, the output will lack its pipeline files", source.name, MODULES_FILE)
        return None
    except Exception as exc:  # a network error, a gated repo...
        log.warning("%s: could not fetch %s (%s: %s); if this is a sentence-transformers model, the output "
                    "will lack its pipeline files", source.name, MODULES_FILE, type(exc).__name__, exc)
        return None
    mods = json.loads(modules_file.read_text())
    patterns = [*ROOT_FILES, *(f"{d}/*" for d in _module_dirs(mods)), *(f"{d}/**" for d in _module_dirs(mods))]
    return Path(snapshot_download(source.path, revision=source.revision, allow_patterns=patterns))


def copy_pipeline(src: Path, dst: Path) -> list[str]:
    """Copy the pipeline files of the sentence-transformers folder ``src`` into ``dst``; returns
    their paths (relative, POSIX), none when ``src`` has no ``modules.json``."""
    mods = modules(src)
    if mods is None:
        return []
    copied = []
    for name in ROOT_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)
            copied.append(name)
    for rel in _module_dirs(mods):
        # A module folder may not exist at all: Normalize has no files, and the Hub stores no empty
        # folders (the published all-MiniLM-L6-v2 has no 2_Normalize/); sentence-transformers loads it.
        if (src / rel).is_dir():
            shutil.copytree(src / rel, dst / rel, dirs_exist_ok=True)
            copied += [p.relative_to(dst).as_posix() for p in sorted((dst / rel).rglob("*")) if p.is_file()]
    return copied


def loader_kwargs(folder: str | Path) -> dict[str, Any]:
    """What ``SentenceTransformer(folder, ...)`` needs besides the path: ``trust_remote_code=True``
    for a folder that ships modeling code, ``backend="onnx"`` / ``"openvino"`` for ONNX / OpenVINO outputs."""
    config = json.loads((Path(folder) / "config.json").read_text())
    kwargs: dict[str, Any] = {}
    if "AutoModel" in (config.get("auto_map") or {}):
        kwargs["trust_remote_code"] = True
    fmt = (config.get("hfcompress") or {}).get("format")
    if fmt in ("onnx", "openvino"):
        kwargs["backend"] = fmt
    return kwargs


def _pooling_mode(config: dict[str, Any]) -> str:
    mode = config.get("pooling_mode")
    if mode is None:
        active = [m for key, m in LEGACY_POOLING_KEYS.items() if config.get(key)]
        unknown = [k for k, v in config.items() if k.startswith("pooling_mode_") and v and k not in LEGACY_POOLING_KEYS]
        if unknown or len(active) > 1:
            raise UnsupportedPipeline(f"pooling modes {unknown or active}: only single cls/max/mean/mean_sqrt_len pooling")
        mode = active[0] if active else "mean"
    if not isinstance(mode, str) or mode not in LEGACY_POOLING_KEYS.values():
        raise UnsupportedPipeline(f"pooling mode {mode!r}: only cls, max, mean and mean_sqrt_len_tokens")
    return mode


def _pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """sentence-transformers' Pooling, for one mode (float32; its padding rules)."""
    import torch

    m = mask.unsqueeze(-1).to(hidden.dtype)
    if mode == "cls":
        return hidden[:, 0]
    if mode == "max":
        return hidden.masked_fill(m == 0, torch.finfo(hidden.dtype).min).max(dim=1).values
    total, count = (hidden * m).sum(1), m.sum(1).clamp(min=1e-9)
    return total / (count.sqrt() if mode == "mean_sqrt_len_tokens" else count)


def steps(folder: str | Path) -> list[tuple[str, Any]]:
    """The pipeline after the Transformer, as ``(kind, setting)`` pairs :func:`embed` applies:
    ``("pool", mode)`` and ``("normalize", None)``; :class:`UnsupportedPipeline` for other modules."""
    folder = Path(folder)
    mods = modules(folder)
    if mods is None:
        raise UnsupportedPipeline(f"{folder} has no {MODULES_FILE}")
    out: list[tuple[str, Any]] = []
    for m in sorted(mods, key=lambda m: int(m.get("idx", 0))):
        kind = m.get("type")
        if kind in TRANSFORMER_TYPES:
            continue
        if kind in POOLING_TYPES:
            config_file = folder / str(m.get("path") or "") / "config.json"
            out.append(("pool", _pooling_mode(json.loads(config_file.read_text()) if config_file.is_file() else {})))
        elif kind in NORMALIZE_TYPES:
            out.append(("normalize", None))
        else:
            raise UnsupportedPipeline(f"module {kind!r} ({m.get('path')!r}) is not one hfcompress reimplements")
    if not out or out[0][0] != "pool":
        raise UnsupportedPipeline("the pipeline does not start with a Pooling module")
    return out


def max_seq_length(folder: str | Path) -> int | None:
    file = Path(folder) / "sentence_bert_config.json"
    value = json.loads(file.read_text()).get("max_seq_length") if file.is_file() else None
    return int(value) if isinstance(value, int) else None


def embed(state: ModelState, texts: list[str], pipeline: str | Path, max_length: int | None = None,
          batch_size: int = 32) -> torch.Tensor:
    """Sentence embeddings of ``texts``: the model of ``state`` (any format hfcompress loads) run
    through the pipeline described in the folder ``pipeline`` (its modules.json, Pooling config and
    ``max_seq_length``, unless ``max_length`` is given), tokenized as sentence-transformers does
    (padded to the longest text of each batch, truncated). float32, on CPU."""
    import torch

    from .model_io import MODEL_INPUTS, forward

    plan = steps(pipeline)
    limit = max_length or max_seq_length(pipeline) or getattr(state.tokenizer, "model_max_length", 512)
    config_file = Path(pipeline) / "sentence_bert_config.json"
    lower = config_file.is_file() and bool(json.loads(config_file.read_text()).get("do_lower_case"))
    outs = []
    for start in range(0, len(texts), batch_size):
        chunk = [t.lower() for t in texts[start: start + batch_size]] if lower else texts[start: start + batch_size]
        enc = state.tokenizer(chunk, padding=True, truncation=True, max_length=limit, return_tensors="pt")
        batch = {k: v for k, v in enc.items() if k in MODEL_INPUTS}
        output = forward(state, batch)
        hidden = (output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]).float().cpu()
        vectors = hidden
        for kind, setting in plan:
            if kind == "pool":
                vectors = _pool(hidden, batch["attention_mask"], setting)
            else:
                vectors = torch.nn.functional.normalize(vectors, p=2, dim=1)
        outs.append(vectors)
    return torch.cat(outs)


def verification_embeddings(state: ModelState, texts: list[str], pipeline: Path, sequence_length: int) -> list[list[float]] | None:
    """The pipeline's sentence embeddings (first 64 dimensions, 6 decimals) recorded in results.json
    beside the model's outputs, so a push can check ``SentenceTransformer(DIR)`` against them; None
    when the pipeline has modules :func:`embed` does not reimplement."""
    import torch

    try:
        with torch.no_grad():
            vectors = embed(state, texts, pipeline, max_length=sequence_length, batch_size=max(1, len(texts)))
    except UnsupportedPipeline as exc:
        log.info("sentence-transformers pipeline not recorded for verification: %s", exc)
        return None
    return [[round(float(x), 6) for x in row[:64]] for row in vectors]


__all__ = [
    "MODULES_FILE",
    "ONNX_SUBFOLDER",
    "UnsupportedPipeline",
    "copy_pipeline",
    "embed",
    "is_sentence_transformers",
    "loader_kwargs",
    "modules",
    "pipeline_folder",
    "steps",
    "verification_embeddings",
]
