"""The recipe's ``search`` section, and how its knobs map onto the recipe's steps.

    search:
      knobs:
        head-pruning.ratio: [0.25, 0.5, 0.67]           # a list: categorical
        distillation.max_steps: {low: 200, high: 1200}   # a range: int when both ends are ints
      objective: latency_ms        # or size_bytes, or a list of metrics for a Pareto search
      constraints: {max_drop: {probe_accuracy: 0.005}, min: {fidelity_cosine_mean: 0.9}}
      max_trials: 24
      max_minutes: 45

A knob is ``STEP.FIELD``: a step of the recipe by its technique's name (or ``steps[i]`` when a
technique appears twice) and a top-level field of that technique's typed config. Every candidate
value is validated by that config before any work (:func:`resolve_knobs`, called when the recipe
is parsed), so a typo exits 2 naming the step and the field.

``STEP.enabled: [true, false]`` switches a whole step on or off (unless the technique's config
has a field of that name): a search can then find that a technique costs more quality than the
constraints allow (pruning and distillation move an embedding space; quantization alone may be
the only way to keep an index's neighbours). The other knobs of a step that is off do not count:
two trials that differ only there are the same candidate.
"""

from __future__ import annotations

import copy
import difflib
import itertools
import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import BadInputError

if TYPE_CHECKING:  # pragma: no cover
    from ..recipe import Recipe

Scalar = str | int | float | bool | None
_SCALARS = (str, int, float, bool, type(None))


class RangeKnob(BaseModel):
    """``{low, high[, step, log]}``: integers when ``low``, ``high`` (and ``step``) are integers."""

    model_config = ConfigDict(extra="forbid")

    low: int | float
    high: int | float
    step: int | float | None = Field(None, gt=0)
    log: bool = False

    @model_validator(mode="after")
    def _sane(self) -> RangeKnob:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("log: true needs low > 0")
        if self.log and self.step is not None:
            raise ValueError("give step or log: true, not both")
        return self

    @property
    def is_int(self) -> bool:
        return all(isinstance(v, int) and not isinstance(v, bool) for v in (self.low, self.high)) and (
            self.step is None or isinstance(self.step, int)
        )


class Constraints(BaseModel):
    """The gate's syntax: ``max_drop`` (largest allowed loss vs the base) and ``min`` (floors)."""

    model_config = ConfigDict(extra="forbid")

    max_drop: dict[str, float] = Field(default_factory=dict)
    min: dict[str, float] = Field(default_factory=dict)


class Screening(BaseModel):
    """The cheap first level of each trial: training fields scaled down, fewer evaluation samples."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    fraction: float = Field(default=0.25, gt=0.0, le=1.0)
    """Training-length fields (``fields``) of every step are multiplied by this at screening."""
    fields: list[str] = Field(default_factory=lambda: ["max_steps", "epochs"])
    max_samples: int = Field(default=128, gt=0)
    """Held-out samples scored at screening (at most the recipe's ``evaluate.max_samples``)."""
    slack: float = Field(default=0.05, ge=0.0)
    """A screened candidate goes to the full level when it meets the constraints loosened by this
    much (each ``max_drop`` allowance + slack, each ``min`` floor - slack): short training loses quality."""
    tolerance: float = Field(default=0.1, ge=0.0)
    """Single objective only: a screened candidate whose objective is worse than the best passing
    full-level trial's by more than this fraction cannot become the best and is not promoted."""


class SearchConfig(BaseModel):
    """The recipe's ``search`` section (see the module docstring and docs/search.md)."""

    model_config = ConfigDict(extra="forbid")

    knobs: dict[str, list[Scalar] | RangeKnob]
    objective: str | list[str] = "latency_ms"
    constraints: Constraints = Field(default_factory=Constraints)
    max_trials: int | None = Field(None, gt=0)
    max_minutes: float | None = Field(None, gt=0)
    screening: Screening = Field(default_factory=lambda: Screening())
    requires: dict[str, str | list[str]] = Field(default_factory=dict)
    """``STEP: OTHER`` (or a list): STEP runs only in trials where OTHER runs, so a switched-off
    OTHER (``OTHER.enabled: false``) switches STEP off too. For example ``{distillation:
    head-pruning}``: distilling a model that nothing made smaller is a copy learning from itself."""

    @field_validator("knobs", mode="before")
    @classmethod
    def _knobs(cls, value: Any) -> Any:
        example = "for example {head-pruning.ratio: [0.25, 0.5], distillation.max_steps: {low: 200, high: 1200}}"
        if not isinstance(value, dict) or not value:
            raise BadInputError(f"search.knobs: give at least one knob, STEP.FIELD → a list of values or a range; {example}")
        out: dict[str, Any] = {}
        for key, spec in value.items():
            where = f"search.knobs.{key}"
            if isinstance(spec, RangeKnob):
                out[str(key)] = spec
            elif isinstance(spec, (list, tuple)):
                if not spec:
                    raise BadInputError(f"{where}: the list of values is empty; give at least one value")
                bad = [v for v in spec if not isinstance(v, _SCALARS)]
                if bad:
                    raise BadInputError(f"{where}: values must be numbers, strings, booleans or null, got {bad[0]!r}")
                seen: list[Any] = []
                for v in spec:
                    if any(type(v) is type(s) and v == s for s in seen):
                        raise BadInputError(f"{where}: the value {v!r} is listed twice")
                    seen.append(v)
                out[str(key)] = list(spec)
            elif isinstance(spec, dict):
                try:
                    out[str(key)] = RangeKnob.model_validate(spec)
                except ValidationError as exc:
                    from ..recipe import describe_validation_error

                    raise BadInputError(describe_validation_error(exc, where, RangeKnob)) from None
            else:
                raise BadInputError(
                    f"{where}: give a list of values ([0.25, 0.5]) or a range ({{low: 200, high: 1200}}); got {spec!r}"
                )
        return out

    @field_validator("screening", mode="before")
    @classmethod
    def _screening(cls, value: Any) -> Any:
        if isinstance(value, bool):  # `screening: false` switches it off
            return {"enabled": value}
        return value

    @model_validator(mode="after")
    def _budget(self) -> SearchConfig:
        if self.max_trials is None and self.max_minutes is None:
            raise BadInputError("search: give a budget, max_trials and/or max_minutes (for example max_trials: 24)")
        if not self.objectives:
            raise BadInputError("search.objective: give a metric (latency_ms, size_bytes) or a list of them")
        return self

    @property
    def objectives(self) -> list[str]:
        return [self.objective] if isinstance(self.objective, str) else list(self.objective)


def parse_search(value: Any) -> SearchConfig | None:
    """The ``search`` section as :class:`SearchConfig`; errors name the field (``search.…``)."""
    if value is None or isinstance(value, SearchConfig):
        return value
    if not isinstance(value, dict):
        raise BadInputError(f"search: expected a mapping (knobs, objective, constraints, max_trials...), got {value!r}")
    try:
        return SearchConfig.model_validate(value)
    except ValidationError as exc:
        for err in exc.errors():
            inner = (err.get("ctx") or {}).get("error")
            if isinstance(inner, BadInputError):
                raise inner from None
        raise BadInputError(_describe(exc)) from None


def _describe(exc: ValidationError) -> str:
    """Like ``recipe.describe_validation_error``, listing the allowed fields of the nested section."""
    sections: dict[str, type[BaseModel]] = {"screening": Screening, "constraints": Constraints}
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        if err["type"] == "extra_forbidden":
            model = sections.get(loc[0], SearchConfig) if len(loc) > 1 else SearchConfig
            lines.append(f"search: unknown field {'.'.join(loc)!r}; allowed fields: {', '.join(model.model_fields)}")
        else:
            got = err.get("input")
            got_text = "" if isinstance(got, dict) else f" (got {got!r})"
            lines.append(f"search.{'.'.join(loc)}: {err['msg']}{got_text}")
    return "; ".join(lines)


# -- knobs against the recipe's steps ---------------------------------------------------------------

@dataclass(frozen=True)
class Knob:
    """One resolved knob: which step and field it sets, and its values (choices or a range)."""

    name: str
    index: int
    technique: str
    field: str
    choices: tuple[Any, ...] | None = None
    range: RangeKnob | None = None
    toggle: bool = False
    """``STEP.enabled``: the value switches the whole step on (true) or off (false)."""

    def suggest(self, trial: Any) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(self.name, list(self.choices))
        r = self.range
        assert r is not None
        if r.is_int:
            return trial.suggest_int(self.name, int(r.low), int(r.high), step=int(r.step or 1), log=r.log)
        return trial.suggest_float(self.name, float(r.low), float(r.high), step=r.step, log=r.log)


_INDEXED = re.compile(r"^steps\[(\d+)\]\.(.+)$")


def _steps_listing(recipe: Recipe) -> str:
    return ", ".join(f"steps[{i}] {s.technique}" for i, s in enumerate(recipe.steps)) or "none (the recipe has no steps)"


def _locate(name: str, recipe: Recipe) -> tuple[int, str]:
    where = f"search.knobs.{name}"
    indexed = _INDEXED.match(name)
    if indexed:
        index, field = int(indexed.group(1)), indexed.group(2)
        if index >= len(recipe.steps):
            raise BadInputError(f"{where}: the recipe has no steps[{index}]; its steps: {_steps_listing(recipe)}")
        return index, field
    step, dot, field = name.partition(".")
    if not dot or not step or not field:
        raise BadInputError(
            f"{where}: a knob is STEP.FIELD, a step of the recipe and a field of its config (for example "
            f"head-pruning.ratio); the recipe's steps: {_steps_listing(recipe)}"
        )
    return _named_step(step, recipe, where, example_suffix=f".{field}"), field


def _named_step(step: str, recipe: Recipe, where: str, example_suffix: str = "") -> int:
    """The index of the one step that runs technique ``step``; errors list the recipe's steps."""
    found = [i for i, s in enumerate(recipe.steps) if s.technique == step]
    if not found:
        names = [s.technique for s in recipe.steps]
        close = difflib.get_close_matches(step, names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise BadInputError(
            f"{where}: the recipe has no step {step!r}{hint}; its steps: {_steps_listing(recipe)}. "
            "The search can only refer to a step the recipe runs: add the step to `steps`, or fix the name."
        )
    if len(found) > 1:
        listing = ", ".join(f"steps[{i}]" for i in found)
        raise BadInputError(
            f"{where}: the recipe has {len(found)} {step!r} steps ({listing}); name one, e.g. "
            f"steps[{found[-1]}]{example_suffix}"
        )
    return found[0]


def resolve_knobs(recipe: Recipe) -> list[Knob]:
    """Check every knob against the recipe and return them resolved; :class:`BadInputError` otherwise.

    The step must be one of the recipe's, the field a top-level field of its technique's config,
    and every value (each listed value, both ends of a range) must validate in that config, with
    the recipe's formats still moving forward (a ``quantization.backend`` value that produces ONNX
    before a PyTorch-only step is refused).
    """
    from ..recipe import describe_validation_error
    from ..registry import get_registry

    search = recipe.search
    if search is None:
        return []
    registry = get_registry()
    knobs: list[Knob] = []
    targets: dict[tuple[int, str], str] = {}
    for name, spec in search.knobs.items():
        where = f"search.knobs.{name}"
        index, field = _locate(name, recipe)
        step = recipe.steps[index]
        config_cls = registry.technique(step.technique).Config
        label = f"steps[{index}] ({step.technique})"
        if field == TOGGLE and field not in config_cls.model_fields:
            if (index, field) in targets:
                raise BadInputError(f"{where}: switches the same step as search.knobs.{targets[index, field]}; keep one")
            targets[index, field] = name
            knobs.append(_toggle_knob(recipe, name, index, spec, where))
            continue
        if "." in field:
            raise BadInputError(
                f"{where}: {field!r} is nested; a knob sets a top-level field of {label}'s config: "
                f"{', '.join(config_cls.model_fields)}"
            )
        if field not in config_cls.model_fields:
            close = difflib.get_close_matches(field, list(config_cls.model_fields), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise BadInputError(
                f"{where}: {label} has no field {field!r}{hint}; its fields: {', '.join(config_cls.model_fields)}"
            )
        if (index, field) in targets:
            raise BadInputError(f"{where}: sets the same field as search.knobs.{targets[index, field]}; keep one")
        targets[index, field] = name
        values = list(spec) if isinstance(spec, list) else [spec.low, spec.high]
        base = step.config.model_dump(mode="json")
        for value in values:
            try:
                config_cls.model_validate({**base, field: value})
            except ValidationError as exc:
                message = describe_validation_error(exc, f"{label}", config_cls)
                raise BadInputError(f"{where}: the value {value!r} is not valid for {label}.{field}: {message}") from None
        if isinstance(spec, list):
            for value in values:
                check_formats(recipe, index, field, value, where)
        knobs.append(Knob(name=name, index=index, technique=step.technique, field=field,
                          choices=tuple(spec) if isinstance(spec, list) else None,
                          range=spec if isinstance(spec, RangeKnob) else None))
    return knobs


TOGGLE = "enabled"
"""The pseudo-field of every step that a knob turns on or off."""


def _toggle_knob(recipe: Recipe, name: str, index: int, spec: Any, where: str) -> Knob:
    step = recipe.steps[index]
    if not isinstance(spec, list) or any(not isinstance(v, bool) for v in spec):
        raise BadInputError(f"{where}: `enabled` switches steps[{index}] ({step.technique}) on or off; "
                            f"give a list of booleans, [true, false]")
    if False in spec:
        check_formats(recipe, index, TOGGLE, False, where)
    return Knob(name=name, index=index, technique=step.technique, field=TOGGLE, choices=tuple(spec), toggle=True)


def check_formats(recipe: Recipe, index: int, field: str, value: Any, where: str) -> None:
    """The recipe with this one value still has formats moving forward (pytorch → onnx...).

    ``field`` ``enabled`` with ``False`` checks the recipe without that step."""
    from ..registry import get_registry

    registry = get_registry()
    fmt, producer = "pytorch", "the model"
    toggled_off = field == TOGGLE and value is False
    for i, step in enumerate(recipe.steps):
        technique = registry.technique(step.technique)
        config = step.config
        if i == index and toggled_off and TOGGLE not in technique.Config.model_fields:
            continue
        if i == index:
            config = technique.Config.model_validate({**config.model_dump(mode="json"), field: value})
        if fmt not in technique.accepts_formats:
            raise BadInputError(
                f"{where}: with {recipe.steps[index].technique}.{field} = {value!r}, steps[{i}] ({step.technique}) "
                f"needs a {' or '.join(technique.accepts_formats)} model but {producer} produces {fmt!r}; "
                "drop that value or reorder the steps"
            )
        fmt, producer = technique.output_format(config), f"steps[{i}] ({step.technique})"


Requires = dict[int, tuple[int, ...]]
"""Step index -> the step indices it runs only with (the search's ``requires``, resolved)."""


def resolve_requires(recipe: Recipe) -> Requires:
    """The search's ``requires`` as step indices; a step the recipe does not run is an error."""
    search = recipe.search
    out: Requires = {}
    for name, needed in (search.requires if search else {}).items():
        where = f"search.requires.{name}"
        index = _step_index(name, recipe, where)
        others = [needed] if isinstance(needed, str) else list(needed)
        indices = tuple(_step_index(other, recipe, where) for other in others)
        if index in indices:
            raise BadInputError(f"{where}: a step cannot require itself")
        out[index] = indices
    return out


def _step_index(name: str, recipe: Recipe, where: str) -> int:
    indexed = re.match(r"^steps\[(\d+)\]$", name)
    if indexed and int(indexed.group(1)) < len(recipe.steps):
        return int(indexed.group(1))
    return _named_step(name, recipe, where)


def steps_off(knobs: list[Knob], overrides: dict[str, Any], requires: Requires | None = None) -> set[int]:
    """The step indices a trial does not run: switched off by a toggle, or requiring one that is off."""
    off = {k.index for k in knobs if k.toggle and overrides.get(k.name) is False}
    changed = True
    while changed:  # a chain (a needs b, b needs c) settles in a few rounds
        more = {i for i, needed in (requires or {}).items() if i not in off and off.intersection(needed)}
        off |= more
        changed = bool(more)
    return off


def effective_overrides(knobs: list[Knob], overrides: dict[str, Any], requires: Requires | None = None) -> dict[str, Any]:
    """``overrides`` as they act: the knobs of steps that are off dropped (they change nothing),
    and a step switched off by ``requires`` shown as its toggle set to false."""
    off = steps_off(knobs, overrides, requires)
    out = {}
    for knob in knobs:
        if knob.name not in overrides:
            continue
        if knob.toggle:
            out[knob.name] = False if knob.index in off else overrides[knob.name]
        elif knob.index not in off:
            out[knob.name] = overrides[knob.name]
    return out


def distinct_candidates(knobs: list[Knob], requires: Requires | None = None) -> int | None:
    """How many different candidates an all-lists space holds (None with a range)."""
    if any(k.choices is None for k in knobs):
        return None
    points = itertools.product(*(k.choices or () for k in knobs))
    return len({json.dumps(effective_overrides(knobs, dict(zip([k.name for k in knobs], point, strict=True)), requires),
                           sort_keys=True) for point in points})


def apply_overrides(recipe_dict: dict[str, Any], knobs: list[Knob], overrides: dict[str, Any],
                    requires: Requires | None = None) -> dict[str, Any]:
    """A copy of ``recipe.to_dict()`` with each knob's value written into its step's config and
    the steps that are off (:func:`steps_off`) removed."""
    out = copy.deepcopy(recipe_dict)
    off = steps_off(knobs, overrides, requires)
    for knob in knobs:
        if knob.name in overrides and not knob.toggle and knob.index not in off:
            out["steps"][knob.index][knob.technique][knob.field] = overrides[knob.name]
    out["steps"] = [step for i, step in enumerate(out["steps"]) if i not in off]
    return out


def screened_steps(steps: list[dict[str, Any]], screening: Screening) -> tuple[list[dict[str, Any]], bool]:
    """``steps`` with the training-length fields scaled by ``screening.fraction``; whether any changed.

    A scaled value that its config refuses (a lower bound) keeps the full value.
    """
    from ..registry import get_registry

    registry = get_registry()
    out, changed = copy.deepcopy(steps), False
    for step in out:
        name, config = next(iter(step.items()))
        config_cls = registry.technique(name).Config
        for field in screening.fields:
            value = config.get(field)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            scaled: int | float = max(1, round(value * screening.fraction)) if isinstance(value, int) else value * screening.fraction
            if scaled == value:
                continue
            try:
                config_cls.model_validate({**config, field: scaled})
            except ValidationError:
                continue
            config[field] = scaled
            changed = True
    return out, changed
