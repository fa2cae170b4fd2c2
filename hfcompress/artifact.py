"""Saving a model state as a Hub-loadable folder, and ``hfcompress.load`` for any such folder.

``config.json`` carries an ``"hfcompress"`` block: the format, the technique that can load it
(``loader``) and what the techniques recorded (``info``). Plain PyTorch folders need no loader:
the transformers Auto class for the task restores them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import BadInputError
from .plugin import ModelState

CONFIG_KEY = "hfcompress"
ONNX_FILE = "model.onnx"


def save_state(state: ModelState, path: Path, pipeline_from: Path | None = None) -> None:
    """Write weights, config and tokenizer of ``state`` into ``path`` (created).

    ``pipeline_from``: the base model's folder when it is a sentence-transformers model; its pipeline
    files (modules.json, 1_Pooling/, ...) are copied first, so that savers lay the weights out the way
    sentence-transformers loads them (ONNX: ``onnx/model.onnx``).

    Why a folder argument and not something carried in the state: techniques build new states
    freely (a third-party one may not copy ``info``), module folders can hold weights (Dense
    layers) that do not belong in config.json, and the pipeline, which knows the model source,
    writes every folder a user gets (the output and the base it is measured against) through here.
    Intermediate step-cache folders need no pipeline: the final save adds it to whichever state,
    computed or cached, comes out of the last step.
    """
    path.mkdir(parents=True, exist_ok=True)
    if pipeline_from is not None:
        from .sentence_pipeline import copy_pipeline

        copy_pipeline(Path(pipeline_from), path)
    if state.saver is not None:
        state.saver(state, path)
    else:
        state.model.save_pretrained(path)
    if state.tokenizer is not None:
        state.tokenizer.save_pretrained(path)
    config_file = path / "config.json"
    config = json.loads(config_file.read_text()) if config_file.exists() else {}
    config[CONFIG_KEY] = {"format": state.format, "loader": state.loader, "task": state.task, "info": state.info}
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def onnx_file_for(folder: Path) -> Path:
    """Where a saver writes the ONNX graph in ``folder``: ``onnx/model.onnx`` in a sentence-transformers
    folder (where its ONNX backend looks), ``model.onnx`` otherwise."""
    from .sentence_pipeline import ONNX_SUBFOLDER, is_sentence_transformers

    return folder / ONNX_SUBFOLDER / ONNX_FILE if is_sentence_transformers(folder) else folder / ONNX_FILE


def find_onnx_file(folder: Path) -> Path | None:
    """The ONNX graph of an output folder, wherever :func:`onnx_file_for` put it (every reader uses this)."""
    from .sentence_pipeline import ONNX_SUBFOLDER

    for candidate in (folder / ONNX_FILE, folder / ONNX_SUBFOLDER / ONNX_FILE):
        if candidate.is_file():
            return candidate
    found = sorted(folder.glob("*.onnx")) or sorted(folder.glob(f"{ONNX_SUBFOLDER}/*.onnx"))
    return found[0] if found else None


def read_marker(path: Path) -> dict[str, Any]:
    config_file = path / "config.json"
    if not config_file.exists():
        raise BadInputError(f"{path}: no config.json; give an hfcompress output folder or a Hugging Face model folder")
    return dict(json.loads(config_file.read_text()).get(CONFIG_KEY) or {})


def load_state(path: str | Path, task: str | None = None) -> ModelState:
    """Load an output folder (or any HF model folder / Hub id) as a :class:`ModelState`."""
    from .models import infer_task, load_config, load_model, resolve_model

    folder = Path(path)
    if folder.is_dir():
        marker = read_marker(folder)
        if marker.get("loader"):
            from .registry import get_registry

            technique_cls = get_registry().technique(marker["loader"]).__class__
            state: ModelState = technique_cls.load_artifact(folder, marker)
            return state
        if marker.get("task") and task is None:
            task = marker["task"]
    source = resolve_model(str(path))
    loaded = load_model(source, infer_task(load_config(source), task))
    if folder.is_dir():  # keep what earlier steps recorded (e.g. pruned heads) across a reload
        loaded.info = dict(read_marker(folder).get("info") or {})
    return loaded


def load(path: str | Path, task: str | None = None) -> Any:
    """Load a compressed model folder (or any model) ready for inference, whatever its format.

    Returns the model: a transformers model for PyTorch formats (pruned, bf16, quanto), an
    ONNX Runtime-backed object with the same call signature for ONNX. The tokenizer files are in
    the folder: ``AutoTokenizer.from_pretrained(path)``. :func:`load_state` returns both.
    """
    return load_state(path, task).model
