"""Checks 1–4: registration, the class, a light import, good and bad configs."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import types
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from ...errors import BadInputError
from ...plugin import ModelTarget, Technique, TechniqueConfig, hookimpl
from .report import HEAVY_MODULES, NAME_PATTERN, UNKNOWN_FIELD, ConformanceError

# -- registration ----------------------------------------------------------------------------


@contextlib.contextmanager
def registered(technique_cls: type[Technique[Any]]) -> Iterator[None]:
    """Make ``technique_cls`` resolvable by name (recipes, ``load_state``) inside the block.

    An installed plugin is already registered through its entry point; a technique that is not
    installed (a test, a notebook) is added for the duration of the block.
    """
    from ...registry import extra_plugins, get_registry

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
    from ...recipe import Recipe

    return Recipe.from_dict({"model": "builtin:all-MiniLM-L6-v2", "steps": [{name: config}]})


def check_configs(technique_cls: type[Technique[Any]], configs: list[dict[str, Any]]) -> list[Any]:
    """Each config validates through a recipe and survives ``dump`` → YAML → ``load`` unchanged.

    Must run inside :func:`registered`. Returns the validated config objects.
    """
    import yaml

    from ...recipe import Recipe

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
