"""The entry point, :func:`check_technique`: every check, in order, on one technique class."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ...plugin import ModelTarget, Technique
from .cases import _run_case, _train_data, make_tiny_models
from .contract import _as_dict, _check_bad_config, check_class, check_configs, check_light_import, registered
from .end_to_end import _cache_env, _end_to_end
from .report import FAMILIES, FAMILY_TASKS, ConformanceError, ConformanceReport


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
        _check_config_answers(technique_cls, technique, validated)
        targets = _targets(model_dirs, families)
        for bad in bad_configs:
            bad_dict = _as_dict(bad)
            report.bad_configs.append((bad_dict, _check_bad_config(technique, bad_dict, targets)))
        _run_cases(report, technique_cls, technique, validated, families, model_dirs, tmp_path, atol)
        if end_to_end:
            case = report.accepted()[0]
            report.end_to_end = _end_to_end(technique, case, model_dirs[case.family], tmp_path)
    return report


def _check_config_answers(technique_cls: type[Technique[Any]], technique: Technique[Any], validated: list[Any]) -> None:
    """``data_requirement`` and ``output_format`` answer sensibly for every good config."""
    for config in validated:
        requirement = technique.data_requirement(config)
        if requirement not in ("none", "text", "labels"):
            raise ConformanceError(technique_cls, f"data_requirement() returned {requirement!r}",
                                   "return 'none', 'text' or 'labels'")
        fmt = technique.output_format(config)
        if not isinstance(fmt, str) or not fmt:
            raise ConformanceError(technique_cls, f"output_format() returned {fmt!r}; return e.g. 'pytorch'")


def _targets(model_dirs: Mapping[str, Path], families: tuple[str, ...]) -> dict[str, ModelTarget]:
    """What ``check`` sees for each tiny model family."""
    from ...models import ModelSource, load_config

    return {
        family: ModelTarget(config=load_config(ModelSource(str(model_dirs[family]), str(model_dirs[family]))),
                            task=FAMILY_TASKS[family], format="pytorch", has_labels=True, has_data=True)
        for family in families
    }


def _run_cases(
    report: ConformanceReport, technique_cls: type[Technique[Any]], technique: Technique[Any], validated: list[Any],
    families: tuple[str, ...], model_dirs: Mapping[str, Path], tmp_path: Path, atol: float,
) -> None:
    """Every good config on every family, into ``report.cases``; each config must be accepted on at least one."""
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
