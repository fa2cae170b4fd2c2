"""Conformance checks for technique plugins: run them in your plugin's own test suite.

    from hfcompress.testing.conformance import check_technique
    from my_plugin import MyTechnique

    def test_my_technique_conforms(tmp_path):
        check_technique(
            MyTechnique,
            configs=[{"ratio": 0.5}, {"ratio": 0.25, "mode": "fast"}],
            bad_configs=[{"ratio": 2.0}, {"mode": "nope"}],
            tmp_path=tmp_path,
        )

What is checked (each failure raises :class:`ConformanceError`, an ``AssertionError`` whose
message names the technique, the config, the model family and what to fix):

1. the class: ``name`` (lower-case, hyphenated), ``summary``, ``Config`` a
   :class:`~hfcompress.plugin.TechniqueConfig` subclass with ``extra="forbid"``; the technique
   instantiates without arguments; ``data_requirement``/``output_format`` answer sensibly;
2. the module imports without torch, transformers, datasets or onnx (``hfcompress plugins``
   imports every plugin just to list it);
3. every config round-trips through recipe YAML (:class:`hfcompress.recipe.Recipe` dumps and
   loads back an equal recipe); a config with a misspelled field is rejected;
4. every bad config fails with :class:`~hfcompress.errors.BadInputError` (exit code 2) when the
   recipe is validated, or else in ``check`` on every tiny model;
5. for every config and every tiny model family (BERT encoder, BERT classifier, Llama causal LM):
   ``check`` either accepts, or rejects with a ``BadInputError`` that names the model; at least
   one family accepts each config; then ``apply`` returns a :class:`~hfcompress.plugin.StepResult`
   whose ``changes`` are strict JSON, whose state has the promised format and produces finite
   outputs; the state saves with :func:`hfcompress.artifact.save_state` and reloads with
   :func:`hfcompress.artifact.load_state` giving the same outputs (within ``atol``);
6. optionally (``end_to_end=True``) the first accepted case runs through
   :func:`hfcompress.compress` with a small local data file.

Everything runs on CPU with tiny random models and a small real text sample (no network).
This module imports no heavy library at import time.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import subprocess
import sys
import time
import types
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BadInputError
from ..plugin import ModelState, ModelTarget, StepContext, StepResult, Technique, TechniqueConfig, hookimpl

__all__ = [
    "FAMILIES",
    "HEAVY_MODULES",
    "CaseResult",
    "ConformanceError",
    "ConformanceReport",
    "check_class",
    "check_configs",
    "check_light_import",
    "check_technique",
    "make_tiny_models",
    "registered",
]

FAMILIES: tuple[str, ...] = ("bert", "bert-classifier", "llama")
"""Tiny model families every technique is tried on: (task) feature-extraction BERT, a BERT
sequence classifier, and a Llama causal LM with grouped-query attention."""

FAMILY_TASKS = {"bert": "feature-extraction", "bert-classifier": "text-classification", "llama": "text-generation"}

HEAVY_MODULES: tuple[str, ...] = ("torch", "transformers", "datasets", "onnx", "onnxruntime", "accelerate",
                                  "optimum", "evaluate")
"""Modules a plugin must not import at import time (import them inside ``apply``)."""

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
UNKNOWN_FIELD = "no_such_field_conformance"
OUTPUT_TEXTS = 4
OUTPUT_SEQUENCE_LENGTH = 32


class ConformanceError(AssertionError):
    """A technique plugin breaks the plugin contract; the message says what and how to fix it."""

    def __init__(self, technique: Any, problem: str, fix: str = "") -> None:
        cls = technique if isinstance(technique, (type, str)) else type(technique)
        name = getattr(cls, "name", None) or getattr(cls, "__name__", repr(cls))
        where = f"{getattr(cls, '__module__', '?')}.{getattr(cls, '__qualname__', '?')}"
        message = f"technique {name!r} ({where}): {problem}"
        if fix:
            message += f"\n  fix: {fix}"
        super().__init__(message)
        self.problem = problem


@dataclass
class CaseResult:
    """One (config, model family) pair: whether ``check`` accepted it and what ``apply`` did."""

    config: dict[str, Any]
    family: str
    accepted: bool
    rejection: str | None = None
    changes: dict[str, Any] | None = None
    format: str | None = None
    max_abs_diff: float | None = None
    """Largest difference between the in-memory outputs and the outputs after save/reload."""
    seconds: float = 0.0


@dataclass
class ConformanceReport:
    technique: str
    cases: list[CaseResult] = field(default_factory=list)
    bad_configs: list[tuple[dict[str, Any], str]] = field(default_factory=list)
    """(bad config, the BadInputError message it produced)."""
    end_to_end: dict[str, Any] | None = None
    """results.json of the ``compress`` run, when ``end_to_end`` was requested."""

    def accepted(self, family: str | None = None) -> list[CaseResult]:
        return [c for c in self.cases if c.accepted and (family is None or c.family == family)]

    def summary(self) -> str:
        lines = [f"conformance of {self.technique!r}:"]
        for c in self.cases:
            if c.accepted:
                lines.append(f"  {c.family:<16} {json.dumps(c.config)}: ok, format {c.format}, "
                             f"reload max |diff| {c.max_abs_diff:.3g}, {c.seconds:.2f} s")
            else:
                lines.append(f"  {c.family:<16} {json.dumps(c.config)}: rejected by check: {c.rejection}")
        for bad, message in self.bad_configs:
            lines.append(f"  bad {json.dumps(bad)}: rejected: {message.splitlines()[0][:120]}")
        return "\n".join(lines)


# -- registration ----------------------------------------------------------------------------


@contextlib.contextmanager
def registered(technique_cls: type[Technique[Any]]) -> Iterator[None]:
    """Make ``technique_cls`` resolvable by name (recipes, ``load_state``) inside the block.

    An installed plugin is already registered through its entry point; a technique that is not
    installed (a test, a notebook) is added for the duration of the block.
    """
    from ..registry import extra_plugins, get_registry

    existing = get_registry().techniques.get(technique_cls.name)
    if existing is not None:
        if existing.cls is not technique_cls:
            raise ConformanceError(
                technique_cls,
                f"the name {technique_cls.name!r} is already registered by distribution "
                f"{existing.plugin.distribution!r} ({existing.cls.__module__}.{existing.cls.__qualname__})",
                "choose another name, or block the installed plugin with "
                f"HFCOMPRESS_BLOCK_PLUGINS={existing.plugin.name} while testing this copy",
            )
        yield
        return

    plugin = types.ModuleType(f"conformance:{technique_cls.name}")

    def hfcompress_register_techniques(register: Any) -> None:
        register(technique_cls)

    plugin.hfcompress_register_techniques = hookimpl(hfcompress_register_techniques)  # type: ignore[attr-defined]
    with extra_plugins(plugin, distribution="conformance-under-test"):
        yield


# -- 1. the class ------------------------------------------------------------------------------


def check_class(technique_cls: Any) -> Technique[Any]:
    """Static contract of a technique class; returns an instance."""
    if not (isinstance(technique_cls, type) and issubclass(technique_cls, Technique)):
        raise ConformanceError(technique_cls, "is not a subclass of hfcompress.plugin.Technique",
                               "class MyTechnique(Technique[MyConfig]): ...")
    name = getattr(technique_cls, "name", None)
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ConformanceError(technique_cls, f"name {name!r} is not a lower-case hyphenated identifier",
                               "set a class attribute like name = 'layer-drop' (it is what recipes write)")
    if not isinstance(technique_cls.summary, str) or not technique_cls.summary.strip():
        raise ConformanceError(technique_cls, "summary is empty",
                               "set summary = '<one line>': `hfcompress plugins` shows it")
    config_cls = technique_cls.Config
    if not (isinstance(config_cls, type) and issubclass(config_cls, TechniqueConfig)):
        raise ConformanceError(technique_cls, f"Config {config_cls!r} is not a TechniqueConfig subclass",
                               "class MyConfig(TechniqueConfig): ...; Config = MyConfig")
    if config_cls.model_config.get("extra") != "forbid":
        raise ConformanceError(
            technique_cls,
            f"Config {config_cls.__name__} has extra={config_cls.model_config.get('extra')!r}, so a misspelled "
            "field in a recipe would be silently ignored",
            "inherit model_config from TechniqueConfig (extra='forbid') instead of overriding it",
        )
    formats = getattr(technique_cls, "accepts_formats", None)
    if not formats or not all(isinstance(f, str) for f in formats):
        raise ConformanceError(technique_cls, f"accepts_formats {formats!r} is not a non-empty tuple of str")
    try:
        technique = technique_cls()
    except Exception as exc:
        raise ConformanceError(technique_cls, f"cannot be instantiated without arguments: {exc!r}",
                               "the registry instantiates techniques as Technique(); take no __init__ arguments") from exc
    return technique


def check_light_import(module: str, heavy: Iterable[str] = HEAVY_MODULES, technique: Any = None) -> None:
    """Import ``module`` in a fresh interpreter and fail if that imported a heavy library."""
    code = (
        "import sys, json; import importlib; importlib.import_module(sys.argv[1]); "
        "print(json.dumps([m for m in sys.argv[2:] if m in sys.modules]))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = subprocess.run([sys.executable, "-c", code, module, *heavy], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise ConformanceError(technique or module, f"module {module!r} fails to import on its own:\n{proc.stderr[-2000:]}")
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    if loaded:
        raise ConformanceError(
            technique or module,
            f"importing {module!r} imports {', '.join(loaded)}; `hfcompress plugins` and `--help` would pay for it",
            "import heavy libraries inside apply()/check() and use `if TYPE_CHECKING:` for type hints",
        )


# -- 3./4. configs -------------------------------------------------------------------------------


def _as_dict(config: Any) -> dict[str, Any]:
    if isinstance(config, TechniqueConfig):
        return config.model_dump(mode="json")
    if isinstance(config, Mapping):
        return dict(config)
    raise TypeError(f"a config must be a dict or a TechniqueConfig, got {type(config).__name__}")


def _recipe(name: str, config: dict[str, Any]) -> Any:
    from ..recipe import Recipe

    return Recipe.from_dict({"model": "builtin:all-MiniLM-L6-v2", "steps": [{name: config}]})


def check_configs(technique_cls: type[Technique[Any]], configs: list[dict[str, Any]]) -> list[Any]:
    """Each config validates through a recipe and survives ``dump`` → YAML → ``load`` unchanged.

    Must run inside :func:`registered`. Returns the validated config objects.
    """
    import yaml

    from ..recipe import Recipe

    name = technique_cls.name
    validated = []
    for config in configs:
        try:
            recipe = _recipe(name, config)
        except BadInputError as exc:
            raise ConformanceError(technique_cls, f"good config {config} is rejected by recipe validation: {exc}",
                                   "fix the config passed to configs=, or the Config class") from exc
        text = recipe.dump()
        try:
            again = Recipe.from_dict(yaml.safe_load(text))
        except BadInputError as exc:
            raise ConformanceError(
                technique_cls,
                f"config {config} does not survive a YAML round trip: the dumped recipe\n{text}\nfails to load: {exc}",
                "make every field serialize to plain JSON types that validate back (model_dump(mode='json'))",
            ) from exc
        if again.to_dict() != recipe.to_dict() or again.steps[0].config != recipe.steps[0].config:
            raise ConformanceError(
                technique_cls,
                f"config {config} changes in a YAML round trip: {recipe.steps[0].config!r} became "
                f"{again.steps[0].config!r}",
                "fields must dump (mode='json') to values that validate back to the same value",
            )
        validated.append(recipe.steps[0].config)

    # extra="forbid" on the class is not enough if a validator swallows unknown keys: prove it.
    probe = {**(configs[0] if configs else {}), UNKNOWN_FIELD: 1}
    try:
        _recipe(name, probe)
    except BadInputError as exc:
        if UNKNOWN_FIELD not in str(exc):
            raise ConformanceError(technique_cls, f"the error for a misspelled field does not name it: {exc}") from exc
    else:
        raise ConformanceError(technique_cls, f"a config with an unknown field {UNKNOWN_FIELD!r} was accepted",
                               "keep Config's extra='forbid' and do not drop unknown keys in a validator")
    return validated


def _check_bad_config(
    technique: Technique[Any], config: dict[str, Any], targets: Mapping[str, ModelTarget]
) -> str:
    """A bad config must fail with BadInputError: in recipe validation, or else in ``check`` for every model."""
    try:
        recipe = _recipe(technique.name, config)
    except BadInputError as exc:
        if not str(exc).strip():
            raise ConformanceError(technique, f"bad config {config} fails with an empty message") from exc
        return str(exc)
    except Exception as exc:
        raise ConformanceError(
            technique, f"bad config {config} raises {type(exc).__name__} instead of BadInputError (exit 2): {exc}",
            "raise ValueError in pydantic validators (hfcompress turns them into BadInputError), or BadInputError "
            "in check()",
        ) from exc
    messages = []
    for family, target in targets.items():
        try:
            technique.check(recipe.steps[0].config, target)
        except BadInputError as exc:
            messages.append(str(exc))
            continue
        except Exception as exc:
            raise ConformanceError(
                technique, f"check() raises {type(exc).__name__} (not BadInputError) for bad config {config} on "
                f"{family}: {exc}", "raise hfcompress.plugin.BadInputError for incompatible configs") from exc
        raise ConformanceError(
            technique,
            f"bad config {config} is accepted by recipe validation and by check() on the tiny {family} model",
            "reject it in Config (pydantic Field bounds / validators) or in check(), or remove it from bad_configs",
        )
    return messages[0]


# -- 5. check / apply / save / reload ------------------------------------------------------------


def make_tiny_models(root: Path, families: Iterable[str] = FAMILIES) -> dict[str, Path]:
    """Build (once) a tiny random model folder for each family under ``root``."""
    from .models import make_tiny_bert, make_tiny_llama

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

    from ..model_io import forward, tokenize

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

    from .samples import rows

    records = rows()
    return datasets.Dataset.from_dict({"text": [r["text"] for r in records], "label": [r["label"] for r in records]})


def _run_case(
    technique: Technique[Any], config: Any, family: str, model_dir: Path, work: Path, atol: float,
    accelerator: Any, train_data: Any,
) -> CaseResult:
    import torch

    from ..artifact import load_state, read_marker, save_state
    from ..cache import fingerprint
    from ..models import ModelSource, load_config, load_model

    cfg_json = config.model_dump(mode="json")
    label = f"config {json.dumps(cfg_json)} on the tiny {family} model"
    source = ModelSource(str(model_dir), str(model_dir))
    model_config = load_config(source)
    task = FAMILY_TASKS[family]
    target = ModelTarget(config=model_config, task=task, format="pytorch", has_labels=True, has_data=True)
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
        return CaseResult(config=cfg_json, family=family, accepted=False, rejection=message)
    except Exception as exc:
        raise ConformanceError(technique, f"check() raised {type(exc).__name__} on {label}: {exc}",
                               "check() may only raise BadInputError") from exc

    state = load_model(source, task)
    state.model.to(accelerator.device)
    step_dir = work / f"{family}-{fingerprint(cfg_json)}"
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
    seconds = time.perf_counter() - start
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

    texts = [str(r) for r in train_data["text"][:OUTPUT_TEXTS]]
    try:
        before = _outputs(new, texts)
    except Exception as exc:
        raise ConformanceError(technique, f"the model returned by apply() cannot be called like a transformers "
                               f"model on {label}: {type(exc).__name__}: {exc}",
                               "state.model(input_ids=..., attention_mask=...) must return .last_hidden_state "
                               "or .logits") from exc
    if not torch.isfinite(before).all():
        raise ConformanceError(technique, f"the model returned by apply() gives NaN/inf outputs on {label}")

    out_dir = step_dir / "saved"
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
    return CaseResult(config=cfg_json, family=family, accepted=True, changes=result.changes, format=new.format,
                      max_abs_diff=diff, seconds=round(seconds, 3))


# -- 6. end to end -------------------------------------------------------------------------------


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
    from ..pipeline import compress
    from .samples import write_jsonl

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


# -- the entry point -----------------------------------------------------------------------------


def check_technique(
    technique_cls: type[Technique[Any]],
    *,
    configs: Sequence[Any],
    bad_configs: Sequence[Any] = (),
    tmp_path: Path,
    families: Iterable[str] = FAMILIES,
    models: Mapping[str, Path] | None = None,
    atol: float = 1e-4,
    light_import: bool = True,
    end_to_end: bool = False,
) -> ConformanceReport:
    """Run every conformance check on ``technique_cls``; raise :class:`ConformanceError` on the first failure.

    ``configs``: dicts (or Config instances) that must work; each must be accepted by ``check`` on
    at least one of ``families``. ``bad_configs``: dicts that must fail with ``BadInputError``
    (in recipe validation, or in ``check`` on every family). ``models``: prebuilt tiny model
    folders by family (the pytest fixtures), else they are built under ``tmp_path``.
    ``light_import``: also check, in a fresh interpreter, that the technique's module imports
    no heavy library. ``end_to_end``: also run :func:`hfcompress.compress` once.
    Returns a :class:`ConformanceReport` (``print(report.summary())`` shows every case).
    """
    if not configs:
        raise ValueError("check_technique needs at least one good config in configs=[...]")
    technique = check_class(technique_cls)
    if light_import and technique_cls.__module__ != "__main__":
        check_light_import(technique_cls.__module__, technique=technique_cls)
    tmp_path = Path(tmp_path)
    families = tuple(families)
    model_dirs = dict(models or {})
    missing = [f for f in families if f not in model_dirs]
    model_dirs.update(make_tiny_models(tmp_path / "tiny-models", missing))
    report = ConformanceReport(technique=technique_cls.name)

    with registered(technique_cls), _cache_env(tmp_path / "hfcompress-cache"):
        validated = check_configs(technique_cls, [_as_dict(c) for c in configs])
        for config in validated:
            requirement = technique.data_requirement(config)
            if requirement not in ("none", "text", "labels"):
                raise ConformanceError(technique_cls, f"data_requirement() returned {requirement!r}",
                                       "return 'none', 'text' or 'labels'")
            fmt = technique.output_format(config)
            if not isinstance(fmt, str) or not fmt:
                raise ConformanceError(technique_cls, f"output_format() returned {fmt!r}; return e.g. 'pytorch'")

        from ..models import ModelSource, load_config

        targets = {
            family: ModelTarget(config=load_config(ModelSource(str(model_dirs[family]), str(model_dirs[family]))),
                                task=FAMILY_TASKS[family], format="pytorch", has_labels=True, has_data=True)
            for family in families
        }
        for bad in bad_configs:
            bad_dict = _as_dict(bad)
            report.bad_configs.append((bad_dict, _check_bad_config(technique, bad_dict, targets)))

        from accelerate import Accelerator

        # CPU on purpose: tiny models, deterministic numbers, the same on a laptop and in CI.
        accelerator = Accelerator(cpu=True)
        train_data = _train_data()
        for config in validated:
            cases = [
                _run_case(technique, config, family, model_dirs[family], tmp_path / "cases", atol, accelerator,
                          train_data)
                for family in families
            ]
            report.cases.extend(cases)
            if not any(c.accepted for c in cases):
                reasons = "; ".join(f"{c.family}: {c.rejection}" for c in cases)
                raise ConformanceError(
                    technique_cls,
                    f"config {json.dumps(config.model_dump(mode='json'))} is rejected by check() on every tiny "
                    f"model ({reasons})",
                    "a good config must work on at least one of the tiny BERT / Llama models",
                )
        if end_to_end:
            case = report.accepted()[0]
            report.end_to_end = _end_to_end(technique, case, model_dirs[case.family], tmp_path)
    return report
