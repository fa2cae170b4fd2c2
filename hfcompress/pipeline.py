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
from .errors import BadInputError, GateFailedError, HfCompressError
from .models import ModelSource, infer_task, load_config, load_model, model_fingerprint, resolve_model
from .plugin import ModelState, ModelTarget, StepContext, StepResult
from .recipe import Recipe
from .recording import evaluate_and_record, package_versions
from .registry import get_registry

log = logging.getLogger("hfcompress")

DEFAULT_DATA = "vader:movie"


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


def _resolve_recipe(model: str | None, recipe: Recipe | str | Path | dict[str, Any] | None, data: Any) -> Recipe:
    if recipe is None:
        from .models import infer_task, load_config, resolve_model

        name = model or "builtin:all-MiniLM-L6-v2"
        resolved = Recipe.default(name, infer_task(load_config(resolve_model(name))))
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
    id2label: dict[int, str] | None = None
    """Class names from the data for a classifier whose config has none; written to config.json."""
    pipeline_dir: Path | None = None
    """The base model's sentence-transformers pipeline files (modules.json, 1_Pooling/...), copied into
    every folder written for a user; None for a plain transformers model."""


def _label_mapping(config: Any, task: str, splits: DataSplits) -> dict[int, str] | None:
    """Reconcile class names in the data with a classifier's labels, before any work.

    Names the model knows (case-insensitive) map to the model's ids; a model with generic labels
    (``LABEL_0``...) and as many classes takes the data's names, recorded as ``id2label``.
    """
    names = splits.label_names
    if not names or task != "text-classification":
        return None
    model_labels = {int(k): str(v) for k, v in (getattr(config, "id2label", None) or {}).items()}
    by_name = {v.lower(): k for k, v in model_labels.items()}
    if all(n.lower() in by_name for n in names):
        import datasets

        ids = [by_name[n.lower()] for n in names]
        for part in ("train", "eval"):  # plain ids: the data's ClassLabel order is not the model's
            if "label" not in getattr(splits, part).column_names:
                continue  # a text-only training split (data.extra_train)
            ds = getattr(splits, part).cast_column("label", datasets.Value("int64"))
            setattr(splits, part, ds.map(lambda x: {"label": ids[x]}, input_columns="label"))
        return None
    generic = all(v == f"LABEL_{k}" for k, v in model_labels.items())
    if generic and len(model_labels) == len(names):
        return dict(enumerate(names))
    raise BadInputError(
        f"data: the class names {names} do not match the model's labels {list(model_labels.values())}. "
        "Use the model's label names (or integer ids) in the data, or a model with as many classes."
    )


def plan(recipe: Recipe, eval_part: str | None = None) -> Plan:
    """Every check that can fail, before any heavy work: model config, data, each step's ``check``.

    ``eval_part`` (``search`` or ``final``): evaluate on that half of the held-out split only
    (:mod:`hfcompress.recipe_search.split`); the data fingerprint, and so the step cache, is that of
    the whole split."""
    from .evaluation import check_metrics, evaluator_declarations
    from .gate import check_gate_metrics

    registry = get_registry()
    check_metrics(recipe.evaluate)
    # The evaluators exist, and the gate (recipe or --max-drop) names only metrics they declare:
    # otherwise the run would end, after all the work, with a gate that cannot pass.
    declared = evaluator_declarations(recipe.evaluate)
    if recipe.gate is not None:
        check_gate_metrics(recipe.gate.model_dump(), declared)
    source = resolve_model(recipe.model, recipe.revision)
    config = load_config(source)
    task = infer_task(config, recipe.task)
    assert recipe.data is not None
    splits = load_data(recipe.data)
    if eval_part is not None:
        from .recipe_search.split import select_eval_part

        splits.eval = select_eval_part(splits.eval, eval_part)
    fmt = "pytorch"
    for i, step in enumerate(recipe.steps):
        technique = registry.technique(step.technique)
        need = technique.data_requirement(step.config)
        if need == "labels" and not splits.has_labels:
            why = ("data.extra_train makes the training split text only; drop extra_train"
                   if recipe.data.extra_train else "set data.label_column")
            raise BadInputError(
                f"steps[{i}] ({step.technique}) needs labelled data, but the training data has no 'label' "
                f"column; {why} or use a task-agnostic configuration"
            )
        target = ModelTarget(config=config, task=task, format=fmt, has_labels=splits.has_labels, has_data=True)
        try:
            technique.check(step.config, target)
        except BadInputError as exc:
            raise BadInputError(f"steps[{i}] ({step.technique}): {exc}") from None
        fmt = technique.output_format(step.config)
    from .sentence_pipeline import pipeline_folder

    return Plan(recipe=recipe, source=source, task=task, splits=splits,
                id2label=_label_mapping(config, task, splits), pipeline_dir=pipeline_folder(source))


def _check_output_dir(output_dir: Path) -> None:
    if output_dir.exists() and not output_dir.is_dir():
        raise BadInputError(
            f"--output {output_dir}: a file of that name exists, and the output is a folder; choose another "
            "path (hfcompress never replaces a file that is not its own output folder)"
        )
    if not output_dir.parent.is_dir():
        raise BadInputError(
            f"--output {output_dir}: the parent folder {output_dir.parent} does not exist (or is not a folder); "
            "create it first or choose another path"
        )
    if output_dir.exists() and any(output_dir.iterdir()) and not (output_dir / "hfcompress.yaml").exists():
        raise BadInputError(
            f"--output {output_dir}: the folder exists, is not empty and is not an hfcompress output folder; "
            "choose another folder or empty it (hfcompress only replaces its own output folders)"
        )


def _code_digest(cls: type) -> str:
    """sha256 of the source a technique runs: its whole package when it lives in one (a technique
    split into config/trainer/... modules), else its module file. Part of the step cache key,
    because an editable install changes code without changing versions."""
    source = inspect.getsourcefile(cls)
    if not source:
        return ""
    file = Path(source)
    package = cls.__module__.rpartition(".")[0]
    # hfcompress_plugins holds every built-in: only a technique's own sub-package counts.
    in_own_package = package not in ("", "hfcompress_plugins") and (file.parent / "__init__.py").is_file()
    digest = hashlib.sha256()
    for path in sorted(file.parent.rglob("*.py")) if in_own_package else [file]:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _run_steps(p: Plan, state: ModelState, accelerator: Any, use_cache: bool) -> tuple[ModelState, list[dict[str, Any]]]:
    registry = get_registry()
    recipe = p.recipe
    base_key = [__version__, model_fingerprint(p.source), p.task, p.splits.fingerprint, recipe.seed]
    reports: list[dict[str, Any]] = []

    def teacher() -> ModelState:
        return load_model(p.source, p.task)

    for i, step in enumerate(recipe.steps):
        technique = registry.technique(step.technique)
        plugin_version = registry.techniques[step.technique].plugin.version
        # The plugin's source is part of the key too: an editable install changes code, not versions.
        code = _code_digest(type(technique))
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
            work_dir=work_dir,
        )
        start = time.perf_counter()
        try:
            result: StepResult = technique.apply(state, step.config, ctx)
        except HfCompressError as exc:  # its own exit code (2, 3, ...), but say which step raised it
            if step.technique not in str(exc):
                exc.args = (f"steps[{i}] ({step.technique}): {exc}", *exc.args[1:])
            raise
        except Exception as exc:
            # A bare traceback from deep inside a plugin names neither the technique nor who ships
            # it; users need both to report the bug to the right project. The cause stays chained
            # (`hfcompress run --verbose` prints it).
            plugin = registry.techniques[step.technique].plugin
            raise HfCompressError(
                f"steps[{i}]: technique {step.technique!r} (distribution {plugin.distribution} {plugin.version}) "
                f"failed in apply: {type(exc).__name__}: {exc}"
            ) from exc
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
    eval_part: str | None = None,
) -> Result:
    """Compress ``model`` with ``recipe``, evaluate it against the original, write ``output_dir``.

    ``recipe`` may be a :class:`Recipe`, a YAML path, a dict, or None for the default recipe;
    ``model`` and ``data`` override the recipe's. Raises :class:`BadInputError` (before any heavy
    work) for bad input and :class:`GateFailedError` when a quality gate fails (the folder is
    written, nothing is pushed).

    A recipe with a ``search`` section runs the search (:func:`hfcompress.search`, docs/search.md).
    ``eval_part`` (used by the search's trials): evaluate on the ``search`` or ``final`` half of
    the held-out split only.
    """
    resolved = _resolve_recipe(model, recipe, data)
    if resolved.search is not None:
        from .recipe_search import search

        return search(recipe=resolved, output_dir=output_dir, push_to=push_to, device=device, use_cache=use_cache)
    if device is not None:
        resolved.device = device  # type: ignore[assignment]
    out = Path(output_dir or "hfcompress-output").resolve()
    _check_output_dir(out)
    push_to = push_to or (resolved.push.repo_id if resolved.push else None)
    if push_to:
        from .hub import check_repo_id

        check_repo_id(push_to)  # a bad id fails now, not after the whole run
    p = plan(resolved, eval_part)
    accelerator = make_accelerator(resolved.device)
    resolved.provenance = {"packages": package_versions(), "seed": resolved.seed}

    from accelerate.utils import set_seed

    set_seed(resolved.seed)
    log.info("loading %s (%s)", resolved.model, p.task)
    state = load_model(p.source, p.task)
    if p.id2label:  # the data's class names become the model's, as transformers records them
        state.model.config.id2label = dict(p.id2label)
        state.model.config.label2id = {name: i for i, name in p.id2label.items()}
    state.model.to(accelerator.device)
    state, reports = _run_steps(p, state, accelerator, use_cache)
    if not accelerator.is_main_process:  # DDP: only the main process evaluates and writes
        return Result(output_dir=None, results={"steps": reports}, recipe=resolved, state=state)

    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        save_state(state, tmp, pipeline_from=p.pipeline_dir)
        del state
        results = evaluate_and_record(p, tmp, accelerator, reports)
        resolved.dump(tmp / "hfcompress.yaml")
        from .card import write_card
        from .evaluation import metric_declarations
        from .gate import check_gate

        declared = metric_declarations(resolved.evaluate)  # labels and directions, as the evaluators that ran declare them
        failures = check_gate(results, resolved.gate.model_dump(), declared) if resolved.gate else []
        results["gate"] = {"passed": not failures, "failures": failures,
                           "config": resolved.gate.model_dump() if resolved.gate else None}
        (tmp / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
        write_card(tmp, results, resolved.to_dict(), metrics=declared, repo_id=push_to)
        _write_atomically(tmp, out)
    except BaseException:
        # A run that fails (or is interrupted) while writing leaves no half-written folder behind.
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote %s", out)
    result = Result(output_dir=out, results=results, recipe=resolved, gate_failures=failures)
    if failures:
        raise GateFailedError("quality gate failed: " + "; ".join(failures) + f" (see {out / 'results.json'})", failures)
    if push_to:
        from .hub import push_to_hub

        push_cfg = resolved.push
        result.push = push_to_hub(
            out, push_to, private=bool(push_cfg and push_cfg.private),
            revision=push_cfg.revision if push_cfg else None, create_pr=bool(push_cfg and push_cfg.create_pr),
        )
    return result


def _is_ours(record: logging.LogRecord) -> bool:
    """hfcompress, the built-in plugins (hfcompress_plugins) and plugins named hfcompress_*."""
    return record.name.partition(".")[0].startswith("hfcompress")


class _OriginFilter(logging.Filter):
    """Our records from ``ours`` up, everyone else's from ``others`` up.

    A filter on our handler rather than levels on loggers: onnxruntime's quantizer logs each
    tensor it visits with ``logging.info`` on the *root* logger, and plugins name their loggers
    freely (``hfcompress_layerdrop``), which a level on the ``hfcompress`` logger would not reach.
    """

    def __init__(self, ours: int, others: int) -> None:
        super().__init__()
        self.ours, self.others = ours, others

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= (self.ours if _is_ours(record) else self.others)


class _OriginFormatter(logging.Formatter):
    """``hfcompress: message`` for our lines; other libraries' lines carry their logger's name."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return f"hfcompress: {text}" if _is_ours(record) else f"{record.name}: {record.levelname.lower()}: {text}"


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time of the record (pytest swaps it per test)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def configure_logging(progress: bool = True, verbose: bool = False) -> None:
    """CLI logging on stderr: our progress lines (INFO) unless ``progress`` is off; other libraries
    only from WARNING, unless ``verbose`` (then everything from INFO, ours from DEBUG).

    Calling it again replaces the handler it installed; handlers others installed are left alone.
    """
    ours = logging.DEBUG if verbose else logging.INFO if progress else logging.WARNING
    others = logging.INFO if verbose else logging.WARNING
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(old)
    handler = _StderrHandler()
    handler.addFilter(_OriginFilter(ours, others))
    handler.setFormatter(_OriginFormatter("%(message)s"))
    root.addHandler(handler)
    root.setLevel(min(ours, others))
    for noisy in ("httpx", "httpx2", "httpcore", "urllib3", "filelock"):  # per-request / per-file lines
        logging.getLogger(noisy).setLevel(logging.NOTSET if verbose else logging.WARNING)
    import datasets
    import transformers

    datasets.disable_progress_bars()  # "Filter"/"Saving the dataset" bars say nothing useful here
    transformers.utils.logging.disable_progress_bar()
