"""The pipeline: validate everything, load the model once, run the steps, evaluate, write, push.

Order matters for users: every check that can fail (recipe, model config, data spec and columns,
each technique's ``check``) runs before any weights are loaded or any training starts, and the
output folder appears only complete (written next to its final place, then renamed).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from .artifact import load_state, save_state
from .cache import cache_dir, fingerprint
from .data import DataConfig, DataSplits, load_data
from .errors import BadInputError, GateFailedError
from .models import ModelSource, infer_task, load_config, load_model, resolve_model
from .plugin import ModelState, ModelTarget, StepContext, StepResult
from .recipe import Recipe
from .registry import get_registry

log = logging.getLogger("hfcompress")

DEFAULT_DATA = "vader:movie"
PACKAGES = ("torch", "transformers", "accelerate", "datasets", "evaluate", "optimum", "optimum-quanto",
            "onnx", "onnxruntime", "huggingface_hub", "pluggy", "pydantic")
VERIFY_TEXTS = 3


@dataclass
class Result:
    """What :func:`compress` returns: the output folder, results.json as a dict, the model."""

    output_dir: Path | None
    results: dict[str, Any]
    recipe: Recipe
    state: ModelState | None = None
    push: dict[str, Any] | None = None
    gate_failures: list[str] = field(default_factory=list)

    @property
    def base(self) -> dict[str, Any]:
        return dict(self.results.get("base", {}))

    @property
    def compressed(self) -> dict[str, Any]:
        return dict(self.results.get("compressed", {}))


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "hfcompress": __version__}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def make_accelerator(device: str) -> Any:
    """One Accelerator per process (AcceleratorState is a singleton); the device is checked first."""
    import torch
    from accelerate import Accelerator

    if device == "cuda" and not torch.cuda.is_available():
        raise BadInputError("--device cuda: no CUDA GPU is visible to PyTorch; use --device cpu or auto")
    if device == "xla":
        try:
            import torch_xla  # noqa: F401
        except ImportError:
            raise BadInputError("--device xla: torch_xla is not installed; install it on a TPU host or use cpu/auto") from None
    return Accelerator(cpu=device == "cpu")


def _model_fingerprint(source: ModelSource) -> str:
    """Identifies the model's exact weights: file sizes and mtimes for folders, id@revision for the Hub."""
    if source.is_local:
        files = sorted((p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in Path(source.path).iterdir() if p.is_file())
        return fingerprint([source.path, files])
    return fingerprint([source.path, source.revision])


def _resolve_recipe(model: str | None, recipe: Recipe | str | Path | dict[str, Any] | None, data: Any) -> Recipe:
    if recipe is None:
        resolved = Recipe.default(model or "builtin:all-MiniLM-L6-v2")
    elif isinstance(recipe, Recipe):
        resolved = recipe.model_copy(deep=True)
    elif isinstance(recipe, dict):
        resolved = Recipe.from_dict(recipe)
    else:
        resolved = Recipe.load(recipe)
    if model is not None:
        resolved.model = model
    if data is not None:
        resolved.data = data if isinstance(data, DataConfig) else DataConfig.model_validate(data)
    if resolved.data is None:  # evaluation always needs held-out text; say which in the resolved recipe
        resolved.data = DataConfig.model_validate(DEFAULT_DATA)
    return resolved


@dataclass
class Plan:
    recipe: Recipe
    source: ModelSource
    task: str
    splits: DataSplits


def plan(recipe: Recipe) -> Plan:
    """Every check that can fail, before any heavy work: model config, data, each step's ``check``."""
    from .evaluation import check_metrics

    registry = get_registry()
    check_metrics(recipe.evaluate)
    source = resolve_model(recipe.model, recipe.revision)
    config = load_config(source)
    task = infer_task(config, recipe.task)
    assert recipe.data is not None
    splits = load_data(recipe.data)
    fmt = "pytorch"
    for i, step in enumerate(recipe.steps):
        technique = registry.technique(step.technique)
        need = technique.data_requirement(step.config)
        if need == "labels" and not splits.has_labels:
            raise BadInputError(
                f"steps[{i}] ({step.technique}) needs labelled data, but the data has no 'label' column; "
                "set data.label_column or use a task-agnostic configuration"
            )
        target = ModelTarget(config=config, task=task, format=fmt, has_labels=splits.has_labels, has_data=True)
        try:
            technique.check(step.config, target)
        except BadInputError as exc:
            raise BadInputError(f"steps[{i}] ({step.technique}): {exc}") from None
        fmt = technique.output_format(step.config)
    return Plan(recipe=recipe, source=source, task=task, splits=splits)


def _check_output_dir(output_dir: Path) -> None:
    if output_dir.exists() and any(output_dir.iterdir()) and not (output_dir / "hfcompress.yaml").exists():
        raise BadInputError(
            f"--output {output_dir}: the folder exists, is not empty and is not an hfcompress output folder; "
            "choose another folder or empty it (hfcompress only replaces its own output folders)"
        )


def _run_steps(p: Plan, state: ModelState, accelerator: Any, use_cache: bool) -> tuple[ModelState, list[dict[str, Any]]]:
    registry = get_registry()
    recipe = p.recipe
    base_key = [__version__, _model_fingerprint(p.source), p.task, p.splits.fingerprint, recipe.seed]
    reports: list[dict[str, Any]] = []

    def teacher() -> ModelState:
        return load_model(p.source, p.task)

    for i, step in enumerate(recipe.steps):
        technique = registry.technique(step.technique)
        plugin_version = registry.techniques[step.technique].plugin.version
        # The plugin's source is part of the key too: an editable install changes code, not versions.
        source_file = inspect.getsourcefile(type(technique))
        code = hashlib.sha256(Path(source_file).read_bytes()).hexdigest() if source_file else ""
        key = fingerprint(base_key + [[s.to_yaml_obj() for s in recipe.steps[: i + 1]], plugin_version, code])
        cached = cache_dir("steps") / key
        label = f"[{i + 1}/{len(recipe.steps)}] {step.technique}"
        if use_cache and (cached / "step.json").exists():
            log.info("%s: unchanged inputs, reusing %s", label, cached)
            state = load_state(cached)
            report = json.loads((cached / "step.json").read_text())
            report["cached"] = True
            reports.append(report)
            continue
        log.info("%s: %s", label, json.dumps(step.config.model_dump(mode="json")))
        work_dir = cache_dir("work", key)
        ctx = StepContext(
            teacher=teacher, train_data=p.splits.train, accelerator=accelerator, seed=recipe.seed,
            work_dir=work_dir, step_index=i, model_id=recipe.model,
        )
        start = time.perf_counter()
        result: StepResult = technique.apply(state, step.config, ctx)
        seconds = time.perf_counter() - start
        state = result.state
        report = {
            "technique": step.technique,
            "config": step.config.model_dump(mode="json"),
            "seconds": round(seconds, 3),
            "format": state.format,
            "changes": result.changes,
        }
        reports.append({**report, "cached": False})
        log.info("%s: done in %.1f s", label, seconds)
        if use_cache and accelerator.is_main_process:
            tmp = cached.with_name(f".{key}.{os.getpid()}.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            save_state(state, tmp)
            (tmp / "step.json").write_text(json.dumps(report, indent=2, default=str))
            shutil.rmtree(cached, ignore_errors=True)
            tmp.rename(cached)
        accelerator.wait_for_everyone()
    return state, reports


def _environment(recipe: Recipe, accelerator: Any) -> dict[str, Any]:
    import torch

    s = recipe.evaluate
    return {
        "packages": package_versions(),
        "device": str(accelerator.device),
        "device_name": torch.cuda.get_device_name(0) if accelerator.device.type == "cuda" else _cpu_name(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "threads": s.threads,
        "batch_size": s.batch_size,
        "sequence_length": s.sequence_length,
        "num_processes": accelerator.num_processes,
    }


def _write_atomically(tmp_dir: Path, output_dir: Path) -> None:
    """Swap the finished folder into place; an old output folder is removed only after the swap."""
    old = output_dir.with_name(f".{output_dir.name}.old-{os.getpid()}")
    if output_dir.exists():
        output_dir.rename(old)
    tmp_dir.rename(output_dir)
    shutil.rmtree(old, ignore_errors=True)


def compress(
    model: str | None = None,
    recipe: Recipe | str | Path | dict[str, Any] | None = None,
    *,
    data: str | dict[str, Any] | DataConfig | None = None,
    output_dir: str | Path | None = None,
    push_to: str | None = None,
    device: str | None = None,
    use_cache: bool = True,
) -> Result:
    """Compress ``model`` with ``recipe``, evaluate it against the original, write ``output_dir``.

    ``recipe`` may be a :class:`Recipe`, a YAML path, a dict, or None for the default recipe;
    ``model`` and ``data`` override the recipe's. Raises :class:`BadInputError` (before any heavy
    work) for bad input and :class:`GateFailedError` when a quality gate fails (the folder is
    written, nothing is pushed).
    """
    resolved = _resolve_recipe(model, recipe, data)
    if device is not None:
        resolved.device = device  # type: ignore[assignment]
    out = Path(output_dir or "hfcompress-output").resolve()
    _check_output_dir(out)
    p = plan(resolved)
    accelerator = make_accelerator(resolved.device)
    resolved.provenance = {"packages": package_versions(), "seed": resolved.seed}

    from accelerate.utils import set_seed

    set_seed(resolved.seed)
    log.info("loading %s (%s)", resolved.model, p.task)
    state = load_model(p.source, p.task)
    state.model.to(accelerator.device)
    state, reports = _run_steps(p, state, accelerator, use_cache)
    if not accelerator.is_main_process:  # DDP: only the main process evaluates and writes
        return Result(output_dir=None, results={"steps": reports}, recipe=resolved, state=state)

    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    save_state(state, tmp)
    del state
    results = evaluate_and_record(p, tmp, accelerator, reports)
    resolved.dump(tmp / "hfcompress.yaml")
    from .card import write_card
    from .gate import check_gate

    failures = check_gate(results, resolved.gate.model_dump()) if resolved.gate else []
    results["gate"] = {"passed": not failures, "failures": failures, "config": resolved.gate.model_dump() if resolved.gate else None}
    (tmp / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    write_card(tmp, results, resolved.to_dict())
    _write_atomically(tmp, out)
    log.info("wrote %s", out)
    result = Result(output_dir=out, results=results, recipe=resolved, gate_failures=failures)
    if failures:
        raise GateFailedError("quality gate failed: " + "; ".join(failures) + f" (see {out / 'results.json'})", failures)
    push_to = push_to or (resolved.push.repo_id if resolved.push else None)
    if push_to:
        from .hub import push_to_hub

        push_cfg = resolved.push
        result.push = push_to_hub(
            out, push_to, private=bool(push_cfg and push_cfg.private),
            revision=push_cfg.revision if push_cfg else None, create_pr=bool(push_cfg and push_cfg.create_pr),
        )
    return result


def evaluate_and_record(p: Plan, artifact_dir: Path, accelerator: Any, reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Evaluate base and compressed the same way on the held-out split; return results.json."""
    from .evaluation import compare_blocks, evaluate_state
    from .runner import verification_outputs

    recipe = p.recipe
    settings = recipe.evaluate
    base_dir = cache_dir("base", fingerprint([_model_fingerprint(p.source), p.task, __version__]))
    base = load_model(p.source, p.task)
    if not (base_dir / "config.json").exists():
        save_state(base, base_dir)
    log.info("evaluating the base model on %d held-out samples", min(len(p.splits.eval), settings.max_samples))
    base_block, base_ctx = evaluate_state(base, p.splits.eval, settings, base_dir)
    compressed = load_state(artifact_dir)  # evaluate what is shipped, as it reloads
    log.info("evaluating the compressed model")
    comp_block, _ = evaluate_state(compressed, p.splits.eval, settings, artifact_dir, reference=base_ctx)
    texts = list(p.splits.eval["text"][:VERIFY_TEXTS])
    import torch

    with torch.no_grad():
        outputs = verification_outputs(compressed, texts, 32)
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
        },
        "base": base_block,
        "compressed": comp_block,
        "comparison": compare_blocks(base_block, comp_block),
        "steps": reports,
        "environment": _environment(recipe, accelerator),
        "verification": {"texts": texts, "sequence_length": 32, "outputs": outputs, "atol": 1e-3},
    }


def configure_logging(verbose: bool = True) -> None:
    """CLI logging: our progress lines on stderr; the libraries' per-request and per-file noise off."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr, format="hfcompress: %(message)s"
    )
    for noisy in ("httpx", "httpx2", "httpcore", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    import datasets
    import transformers

    datasets.disable_progress_bars()  # "Filter"/"Saving the dataset" bars say nothing useful here
    transformers.utils.logging.disable_progress_bar()
