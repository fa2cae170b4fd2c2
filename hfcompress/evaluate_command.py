"""``hfcompress evaluate DIR_OR_MODEL --data SPEC``: measure any model the way a run measures its output.

The data is split exactly as the pipeline splits it and only the held-out part is evaluated, with
the same evaluators and settings (:func:`hfcompress.evaluation.evaluate_state`), so the numbers
compare with an output folder's results.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import BadInputError
from .evaluation import check_metrics, evaluate_state
from .plugin import EvalSettings

__all__ = ["evaluate_path"]


def _environment(settings: EvalSettings) -> dict[str, Any]:
    import os
    import platform
    from importlib.metadata import PackageNotFoundError, version

    from . import __version__

    packages = {"python": platform.python_version(), "hfcompress": __version__}
    for name in ("torch", "transformers", "evaluate", "optimum-quanto", "onnxruntime"):
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            continue
    return {
        "packages": packages,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "threads": settings.threads,
        "batch_size": settings.batch_size,
        "sequence_length": settings.sequence_length,
    }


def evaluate_path(
    path: str | Path, data_spec: str | dict[str, Any] | None = None, settings: EvalSettings | None = None
) -> dict[str, Any]:
    """Evaluate anything loadable (an output folder, a model folder, a Hub id, a ``builtin:`` alias).

    The data is split exactly as the pipeline splits it and only the held-out part is used. For
    an hfcompress output folder, ``data_spec`` and ``settings`` default to the ones in its
    ``hfcompress.yaml``, so the numbers are comparable with its results.json. Returns
    ``{"source", "task", "data", "settings", "environment", "model": <results.json block>}``.
    """
    import tempfile

    import yaml

    from .artifact import load_state, save_state
    from .data import DataConfig, load_data

    folder = Path(path)
    if not folder.is_dir():
        from .models import resolve_model

        resolve_model(str(path))  # a missing folder is named before the data is questioned
    recipe: dict[str, Any] = {}
    if folder.is_dir() and (folder / "hfcompress.yaml").is_file():
        recipe = yaml.safe_load((folder / "hfcompress.yaml").read_text()) or {}
    if data_spec is None:
        data_spec = recipe.get("data")
    if data_spec is None:
        raise BadInputError(
            f"evaluate {str(path)!r}: no data to evaluate on; give --data SPEC (for example vader:movie, a "
            "csv/json/jsonl/parquet/txt file or a Hub dataset id)"
        )
    if settings is None:
        settings = EvalSettings.model_validate(recipe.get("evaluate") or {})
    check_metrics(settings)
    try:
        data_cfg = DataConfig.model_validate(data_spec)
    except Exception as exc:
        raise BadInputError(f"--data {data_spec!r}: {exc}") from None
    splits = load_data(data_cfg)  # the same deterministic split the pipeline uses
    state = load_state(path, recipe.get("task"))
    with tempfile.TemporaryDirectory(prefix="hfcompress-eval-") as tmp:
        artifact_dir = folder if folder.is_dir() else Path(tmp)
        if not folder.is_dir():  # a Hub id or alias: measure it as saved, like the pipeline does
            save_state(state, artifact_dir)
        block, _ = evaluate_state(state, splits.eval, settings, artifact_dir)
    return {
        "source": str(path),
        "task": state.task,
        "data": {
            "spec": data_cfg.model_dump(exclude_none=True),
            "eval_samples": len(splits.eval),
            "evaluated_samples": min(len(splits.eval), settings.max_samples),
            "fingerprint": splits.fingerprint,
        },
        "settings": settings.model_dump(),
        "environment": _environment(settings),
        "model": block,
    }
