"""Check 5: each (config, tiny model) case through check, apply, outputs, save and reload."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ...errors import BadInputError
from ...plugin import ModelState, ModelTarget, StepContext, StepResult, Technique
from .report import FAMILIES, FAMILY_TASKS, OUTPUT_SEQUENCE_LENGTH, OUTPUT_TEXTS, CaseResult, ConformanceError


def make_tiny_models(root: Path, families: Iterable[str] = FAMILIES) -> dict[str, Path]:
    """Build (once) a tiny random model folder for each family under ``root``."""
    from ..models import make_tiny_bert, make_tiny_llama

    out = {}
    for family in families:
        path = Path(root) / family
        if not (path / "config.json").exists():
            if family == "bert":
                make_tiny_bert(path)
            elif family == "bert-classifier":
                make_tiny_bert(path, task="text-classification")
            elif family == "llama":
                make_tiny_llama(path)
            else:
                raise ValueError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")
        out[family] = path
    return out


def _primary_output(output: Any) -> Any:
    for attr in ("logits", "last_hidden_state"):
        value = getattr(output, attr, None)
        if value is not None:
            return value
    if isinstance(output, (tuple, list)) and output:
        return output[0]
    raise TypeError(f"the model returned {type(output).__name__} without .logits or .last_hidden_state")


def _outputs(state: ModelState, texts: list[str]) -> Any:
    import torch

    from ...model_io import forward, tokenize

    batch = tokenize(state, texts, OUTPUT_SEQUENCE_LENGTH)
    with torch.no_grad():
        return _primary_output(forward(state, batch)).detach().float().cpu()


def _json_problem(value: Any, path: str = "changes") -> str | None:
    """Where ``value`` stops being strict JSON (NaN/inf are not JSON either)."""
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{path} = {value!r} (NaN/inf is not valid JSON)"
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            problem = _json_problem(item, f"{path}[{i}]")
            if problem:
                return problem
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{path} has a non-string key {key!r} ({type(key).__name__})"
            problem = _json_problem(item, f"{path}[{key!r}]")
            if problem:
                return problem
        return None
    return f"{path} is a {type(value).__module__}.{type(value).__name__} ({value!r:.80})"


def _train_data() -> Any:
    import datasets

    from ..samples import rows

    records = rows()
    return datasets.Dataset.from_dict({"text": [r["text"] for r in records], "label": [r["label"] for r in records]})


def _run_case(
    technique: Technique[Any], config: Any, family: str, model_dir: Path, work: Path, atol: float,
    accelerator: Any, train_data: Any,
) -> CaseResult:
    from ...cache import fingerprint
    from ...models import ModelSource, load_config

    cfg_json = config.model_dump(mode="json")
    label = f"config {json.dumps(cfg_json)} on the tiny {family} model"
    source = ModelSource(str(model_dir), str(model_dir))
    model_config = load_config(source)
    task = FAMILY_TASKS[family]
    target = ModelTarget(config=model_config, task=task, format="pytorch", has_labels=True, has_data=True)
    rejection = _check_phase(technique, config, target, label)
    if rejection is not None:
        return CaseResult(config=cfg_json, family=family, accepted=False, rejection=rejection)

    step_dir = work / f"{family}-{fingerprint(cfg_json)}"
    result, seconds = _apply_phase(technique, config, source, task, step_dir, accelerator, train_data, label)
    new = _check_step_result(technique, config, result, task, label)
    texts = [str(r) for r in train_data["text"][:OUTPUT_TEXTS]]
    before = _output_phase(technique, new, texts, label)
    reloaded = _save_reload_phase(technique, new, step_dir / "saved", label)
    diff = _compare_phase(technique, reloaded, texts, before, atol, label)
    return CaseResult(config=cfg_json, family=family, accepted=True, changes=result.changes, format=new.format,
                      max_abs_diff=diff, seconds=round(seconds, 3))


def _check_phase(technique: Technique[Any], config: Any, target: ModelTarget, label: str) -> str | None:
    """``check``: None when it accepts, the message when it rejects with one that names the model."""
    try:
        technique.check(config, target)
    except BadInputError as exc:
        message = str(exc)
        names = {target.model_type.lower(), target.architecture.lower()}
        if not any(n in message.lower() for n in names):
            raise ConformanceError(
                technique, f"check() rejects {label} with a message that does not name the model: {message!r}",
                f"say what is unsupported, e.g. include {target.architecture!r} or {target.model_type!r} and what "
                "is supported",
            ) from exc
        return message
    except Exception as exc:
        raise ConformanceError(technique, f"check() raised {type(exc).__name__} on {label}: {exc}",
                               "check() may only raise BadInputError") from exc
    return None


def _apply_phase(
    technique: Technique[Any], config: Any, source: Any, task: str, step_dir: Path, accelerator: Any,
    train_data: Any, label: str,
) -> tuple[Any, float]:
    """Load the tiny model, run ``apply`` on it (seeded); the result and the seconds it took."""
    import torch

    from ...models import load_model

    state = load_model(source, task)
    state.model.to(accelerator.device)
    ctx = StepContext(
        teacher=lambda: load_model(source, task), train_data=train_data, accelerator=accelerator, seed=0,
        work_dir=step_dir / "work",
    )
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    start = time.perf_counter()
    try:
        result = technique.apply(state, config, ctx)
    except Exception as exc:
        raise ConformanceError(technique, f"apply() raised {type(exc).__name__} on {label} after check() "
                               f"accepted it: {exc}", "reject unsupported cases in check(), before any work") from exc
    return result, time.perf_counter() - start


def _check_step_result(technique: Technique[Any], config: Any, result: Any, task: str, label: str) -> ModelState:
    """What ``apply`` returned: a StepResult with JSON changes and the promised format, task and loader."""
    if not isinstance(result, StepResult) or not isinstance(result.state, ModelState):
        raise ConformanceError(technique, f"apply() returned {type(result).__name__} on {label}",
                               "return StepResult(state, changes) with a ModelState")
    new = result.state
    if not isinstance(result.changes, dict):
        raise ConformanceError(technique, f"apply() changes is a {type(result.changes).__name__}, not a dict")
    problem = _json_problem(result.changes)
    if problem:
        raise ConformanceError(technique, f"apply() changes are not JSON-serializable on {label}: {problem}",
                               "report plain int/float/str/bool/list/dict values (call float()/int()/.tolist())")
    expected_format = technique.output_format(config)
    if new.format != expected_format:
        raise ConformanceError(technique, f"apply() produced format {new.format!r} on {label}, but "
                               f"output_format() promised {expected_format!r}",
                               "set state.format, or return the right value from output_format()")
    if new.task != task:
        raise ConformanceError(technique, f"apply() changed the task from {task!r} to {new.task!r} on {label}")
    if new.loader is not None and new.loader != technique.name:
        raise ConformanceError(technique, f"state.loader is {new.loader!r}; it must be this technique's name",
                               f"set state.loader = {technique.name!r} and implement load_artifact")
    return new


def _output_phase(technique: Technique[Any], new: ModelState, texts: list[str], label: str) -> Any:
    """The output model runs like a transformers model and gives finite outputs; returns them."""
    import torch

    try:
        before = _outputs(new, texts)
    except Exception as exc:
        raise ConformanceError(technique, f"the model returned by apply() cannot be called like a transformers "
                               f"model on {label}: {type(exc).__name__}: {exc}",
                               "state.model(input_ids=..., attention_mask=...) must return .last_hidden_state "
                               "or .logits") from exc
    if not torch.isfinite(before).all():
        raise ConformanceError(technique, f"the model returned by apply() gives NaN/inf outputs on {label}")
    return before


def _save_reload_phase(technique: Technique[Any], new: ModelState, out_dir: Path, label: str) -> ModelState:
    """``save_state`` then ``load_state``, in the same format; returns the reloaded state."""
    from ...artifact import load_state, read_marker, save_state

    try:
        save_state(new, out_dir)
    except Exception as exc:
        raise ConformanceError(technique, f"save_state() failed for the output of {label}: {type(exc).__name__}: {exc}",
                               "set state.saver to a function (state, path) that writes the model") from exc
    marker = read_marker(out_dir)
    try:
        reloaded = load_state(out_dir)
    except Exception as exc:
        hint = ("implement load_artifact(cls, path, info)" if new.loader else
                "the folder must load with the transformers Auto class for the task, or set state.saver, "
                "state.loader and load_artifact")
        raise ConformanceError(technique, f"the saved output of {label} does not reload with load_state "
                               f"({type(exc).__name__}: {exc}); config.json marker: {marker}", hint) from exc
    if reloaded.format != new.format:
        raise ConformanceError(technique, f"reloading {label} gives format {reloaded.format!r}, saved {new.format!r}",
                               "set state.format in load_artifact")
    return reloaded


def _compare_phase(
    technique: Technique[Any], reloaded: ModelState, texts: list[str], before: Any, atol: float, label: str
) -> float:
    """The reloaded model's outputs match the in-memory ones within ``atol``; returns the largest difference."""
    after = _outputs(reloaded, texts)
    if after.shape != before.shape:
        raise ConformanceError(technique, f"reloaded outputs have shape {tuple(after.shape)}, in memory "
                               f"{tuple(before.shape)} on {label}")
    diff = float((after - before).abs().max())
    if not diff <= atol:
        raise ConformanceError(
            technique,
            f"the reloaded model's outputs differ from the in-memory result by up to {diff:.3g} (atol {atol}) on {label}",
            "the saved folder must capture everything apply() changed (weights, config fields, buffers); "
            "use a custom state.saver/loader if save_pretrained is not enough",
        )
    return diff
