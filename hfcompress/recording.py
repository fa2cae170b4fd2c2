"""What results.json records about a run: both evaluation blocks, the environment, the verification.

:func:`evaluate_and_record` is the pipeline's last measuring step: the base and the saved output
are evaluated the same way on the held-out split, and the verification block that a push re-checks
is recorded beside them. :func:`package_versions` is also the provenance written to hfcompress.yaml.
"""

from __future__ import annotations

import logging
import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__
from .artifact import load_state, save_state
from .cache import cache_dir, fingerprint
from .models import load_model, model_fingerprint

if TYPE_CHECKING:  # pragma: no cover
    from .pipeline import Plan
    from .recipe import Recipe

__all__ = ["PACKAGES", "VERIFY_TEXTS", "cpu_name", "environment", "evaluate_and_record", "package_versions"]

log = logging.getLogger("hfcompress")

PACKAGES = ("torch", "transformers", "accelerate", "datasets", "evaluate", "optimum", "optimum-quanto",
            "onnx", "onnxruntime", "onnxruntime-genai", "openvino", "nncf", "huggingface_hub", "pluggy", "pydantic")
VERIFY_TEXTS = 3
"""Held-out texts whose outputs results.json records for the pre-push verification."""


def evaluate_and_record(p: Plan, artifact_dir: Path, accelerator: Any, reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Evaluate base and compressed the same way on the held-out split; return results.json."""
    from .evaluation import compare_blocks, evaluate_state

    recipe = p.recipe
    settings = recipe.evaluate
    with_pipeline = ["sentence-transformers pipeline"] if p.pipeline_dir is not None else []
    base_dir = cache_dir("base", fingerprint([model_fingerprint(p.source), p.task, __version__, *with_pipeline]))
    base = load_model(p.source, p.task)
    if not (base_dir / "config.json").exists():
        save_state(base, base_dir, pipeline_from=p.pipeline_dir)  # measured with the same files as the output
    log.info("evaluating the base model on %d held-out samples", min(len(p.splits.eval), settings.max_samples))
    base_block, base_ctx = evaluate_state(base, p.splits.eval, settings, base_dir)
    compressed = load_state(artifact_dir)  # evaluate what is shipped, as it reloads
    log.info("evaluating the compressed model")
    comp_block, _ = evaluate_state(compressed, p.splits.eval, settings, artifact_dir, reference=base_ctx)
    from .hub import record_verification

    verification = record_verification(compressed, artifact_dir, list(p.splits.eval["text"][:VERIFY_TEXTS]))
    if p.pipeline_dir is not None:
        from .sentence_pipeline import verification_embeddings

        # The base pipeline (pooling, normalization) on the compressed model: what
        # SentenceTransformer(DIR).encode must reproduce; the push verification checks it.
        embeddings = verification_embeddings(compressed, verification["texts"], p.pipeline_dir,
                                             verification["sequence_length"])
        if embeddings is not None:
            verification["sentence_embeddings"] = embeddings
    return {
        "hfcompress_version": __version__,
        "model": recipe.model,
        "task": p.task,
        "data": {
            "spec": recipe.data.model_dump(exclude_none=True) if recipe.data else None,
            "train_samples": len(p.splits.train),
            "eval_samples": len(p.splits.eval),
            "evaluated_samples": min(len(p.splits.eval), settings.max_samples),
            "fingerprint": p.splits.fingerprint,
            **({"label_names": p.splits.label_names} if p.splits.label_names else {}),
            **({"train_sources": p.splits.train_sources} if p.splits.train_sources else {}),
        },
        "base": base_block,
        "compressed": comp_block,
        "comparison": compare_blocks(base_block, comp_block),
        "steps": reports,
        "environment": environment(recipe, accelerator),
        "verification": verification,
    }


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "hfcompress": __version__}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(recipe: Recipe, accelerator: Any) -> dict[str, Any]:
    """results.json ``environment``: versions, device, threads, batch x sequence length, processes."""
    import torch

    s = recipe.evaluate
    return {
        "packages": package_versions(),
        "device": str(accelerator.device),
        "device_name": torch.cuda.get_device_name(0) if accelerator.device.type == "cuda" else cpu_name(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "threads": s.threads,
        "batch_size": s.batch_size,
        "sequence_length": s.sequence_length,
        "num_processes": accelerator.num_processes,
    }
