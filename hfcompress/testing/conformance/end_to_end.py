"""The end-to-end run through :func:`hfcompress.compress` (check 6)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ...plugin import Technique
from .report import CaseResult, ConformanceError


@contextlib.contextmanager
def _cache_env(default: Path) -> Iterator[None]:
    """Keep the pipeline's caches out of the user's home during a test unless one is configured."""
    if os.environ.get("HFCOMPRESS_CACHE"):
        yield
        return
    os.environ["HFCOMPRESS_CACHE"] = str(default)
    try:
        yield
    finally:
        os.environ.pop("HFCOMPRESS_CACHE", None)


def _end_to_end(technique: Technique[Any], case: CaseResult, model_dir: Path, tmp_path: Path) -> dict[str, Any]:
    from ...pipeline import compress
    from ..samples import write_jsonl

    data_file = write_jsonl(tmp_path / "data" / "sample.jsonl")
    output = tmp_path / "end-to-end-output"
    recipe = {
        "model": str(model_dir),
        "data": str(data_file),
        "steps": [{technique.name: case.config}],
        "evaluate": {"max_samples": 16, "batch_size": 8, "sequence_length": 32, "warmup": 1, "repeats": 2},
    }
    try:
        result = compress(recipe=recipe, output_dir=output, use_cache=False, device="cpu")
    except Exception as exc:
        raise ConformanceError(technique, f"compress() failed end to end with {case.config} on the tiny "
                               f"{case.family} model: {type(exc).__name__}: {exc}") from exc
    steps = result.results.get("steps", [])
    if [s.get("technique") for s in steps] != [technique.name]:
        raise ConformanceError(technique, f"results.json steps are {steps!r}, expected one {technique.name!r} step")
    for name in ("config.json", "results.json", "hfcompress.yaml", "README.md"):
        if not (output / name).exists():
            raise ConformanceError(technique, f"the end-to-end output folder has no {name}")
    return dict(result.results)
