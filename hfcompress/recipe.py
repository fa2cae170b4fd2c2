"""Recipes: which model, which data, which techniques in which order, how to evaluate and gate.

    model: builtin:all-MiniLM-L6-v2
    data: vader:movie
    steps:
      - head-pruning: {ratio: 0.33}
      - distillation: {max_steps: 300}
      - quantization: {backend: auto}

Every step config is validated by its technique's typed config; errors name the step, the
field and the allowed values. ``Recipe.dump`` writes the resolved recipe (defaults filled in,
package versions) and ``Recipe.load`` reads it back to an equal recipe.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .data import DataConfig
from .errors import BadInputError
from .plugin import TASKS, EvalSettings, TechniqueConfig
from .recipe_search.config import SearchConfig, parse_search

Device = Literal["auto", "cpu", "cuda", "xla"]


def describe_validation_error(exc: ValidationError, where: str, model: type[BaseModel]) -> str:
    """One readable paragraph from a pydantic error: field, problem, allowed fields/values."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            allowed = ", ".join(model.model_fields)
            lines.append(f"{where}: unknown field {loc!r}; allowed fields: {allowed}")
        else:
            got = err.get("input")
            got_text = "" if isinstance(got, dict) else f" (got {got!r})"
            lines.append(f"{where}.{loc}: {err['msg']}{got_text}")
    return "; ".join(lines)


class Step(BaseModel):
    """One recipe step: a technique name and its validated config."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    technique: str
    config: TechniqueConfig

    def to_yaml_obj(self) -> dict[str, Any]:
        return {self.technique: self.config.model_dump(mode="json")}


class GateConfig(BaseModel):
    """Quality gate: ``max_drop`` (metric → largest allowed drop from base) and ``min`` (absolute floors)."""

    model_config = ConfigDict(extra="forbid")

    max_drop: dict[str, float] = Field(default_factory=dict)
    min: dict[str, float] = Field(default_factory=dict)


class PushConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    repo_id: str
    private: bool = False
    revision: str | None = None
    create_pr: bool = False


def parse_step(index: int, raw: Any) -> Step:
    from .registry import get_registry

    where = f"steps[{index}]"
    if not isinstance(raw, dict) or len(raw) != 1:
        raise BadInputError(
            f"{where}: each step must be a one-key mapping, technique name → config, "
            f"for example '- head-pruning: {{ratio: 0.33}}'; got {raw!r}"
        )
    name, cfg = next(iter(raw.items()))
    if isinstance(cfg, TechniqueConfig):
        cfg = cfg.model_dump()
    technique = get_registry().technique(str(name))
    try:
        config = technique.Config.model_validate(cfg or {})
    except ValidationError as exc:
        raise BadInputError(describe_validation_error(exc, f"{where} ({name})", technique.Config)) from None
    return Step(technique=str(name), config=config)


# The embedded default recipe (techniques that are not installed are left out). Why these values:
# the measurements are in README.md (Benchmarks), benchmarks/results/2026-12-03-encoder.md and
# docs/techniques/head-pruning.md ("The default's FFN ratio"): 75% of the FFN neurons is the
# smallest tried that is 8x PyTorch fp32 and 2x OpenVINO int8 at batch 8 x 128.
DEFAULT_STEPS: list[dict[str, Any]] = [
    {"head-pruning": {"ratio": 0.5, "ffn_ratio": 0.75}},
    {"distillation": {"max_steps": 600, "learning_rate": 3e-4}},
    {"quantization": {"backend": "auto"}},
]
# For causal LMs (text-generation): quantization alone, chosen on decode speed, perplexity and
# greedy agreement. Structured pruning of a decoder needs a distillation budget far beyond a
# CPU run (docs/techniques/head-pruning.md); measurements in docs/techniques/quantization.md.
DEFAULT_DECODER_STEPS: list[dict[str, Any]] = [
    {"quantization": {"backend": "auto"}},
]


class Recipe(BaseModel):
    """A validated recipe. Build with :meth:`load`, :meth:`from_dict` or the constructor."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    model: str = "builtin:all-MiniLM-L6-v2"
    revision: str | None = None
    task: Literal["feature-extraction", "text-classification", "text-generation"] | None = None
    data: DataConfig | None = None
    steps: list[Step] = Field(default_factory=list)
    evaluate: EvalSettings = Field(default_factory=EvalSettings)
    gate: GateConfig | None = None
    search: SearchConfig | None = None
    """Search over step settings (knobs), objective, constraints and budget: docs/search.md."""
    push: PushConfig | None = None
    seed: int = 0
    device: Device = "auto"
    provenance: dict[str, Any] | None = None
    """Written by hfcompress into a resolved recipe: its version and the package versions used."""

    @field_validator("steps", mode="before")
    @classmethod
    def _parse_steps(cls, value: Any) -> Any:
        if value is None:
            return []
        if not isinstance(value, list):
            raise BadInputError("steps: must be a list of one-key mappings (technique name → config)")
        return [v if isinstance(v, Step) else parse_step(i, v) for i, v in enumerate(value)]

    @field_validator("search", mode="before")
    @classmethod
    def _parse_search(cls, value: Any) -> Any:
        return parse_search(value)

    @model_validator(mode="after")
    def _formats_move_forward(self) -> Recipe:
        from .registry import get_registry

        registry = get_registry()
        fmt, producer = "pytorch", "the model"
        for i, step in enumerate(self.steps):
            technique = registry.technique(step.technique)
            if fmt not in technique.accepts_formats:
                raise BadInputError(
                    f"steps[{i}] ({step.technique}) needs a {' or '.join(technique.accepts_formats)} model, but "
                    f"{producer} produces {fmt!r}. Formats only move forward (pytorch → quantized/onnx): "
                    f"move {step.technique} before the step that changes the format."
                )
            fmt, producer = technique.output_format(step.config), f"steps[{i}] ({step.technique})"
        return self

    @model_validator(mode="after")
    def _search_knobs(self) -> Recipe:
        if self.search is not None:  # each knob names a step and a field of it, with valid values
            from .recipe_search.config import resolve_knobs, resolve_requires

            resolve_knobs(self)
            resolve_requires(self)
        return self

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recipe:
        if not isinstance(data, dict):
            raise BadInputError(f"recipe: expected a mapping at the top level, got {type(data).__name__}")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            # A BadInputError raised inside a validator arrives wrapped; unwrap it unchanged.
            for err in exc.errors():
                inner = (err.get("ctx") or {}).get("error")
                if isinstance(inner, BadInputError):
                    raise inner from None
            raise BadInputError(describe_validation_error(exc, "recipe", cls)) from None

    @classmethod
    def load(cls, path: str | Path) -> Recipe:
        file = Path(path)
        if not file.is_file():
            raise BadInputError(f"recipe {str(path)!r}: no such file")
        try:
            data = yaml.safe_load(file.read_text())
        except yaml.YAMLError as exc:
            raise BadInputError(f"recipe {str(path)!r}: not valid YAML: {exc}") from None
        if data is None:
            # An empty file is a mistake (a truncated copy, the wrong path), never "use the defaults":
            # running the embedded default on the user's behalf would waste minutes and mislead.
            raise BadInputError(
                f"recipe {str(path)!r}: the file is empty. Give at least `model:` and `steps:` (see the README's "
                "recipe reference), or run `hfcompress run` without a recipe for the embedded default."
            )
        return cls.from_dict(data)

    @classmethod
    def default(cls, model: str = "builtin:all-MiniLM-L6-v2", task: str | None = None) -> Recipe:
        """The embedded default recipe: prune heads and FFN → distil → quantize (measured choice);
        for a causal LM (``task`` text-generation), quantization alone."""
        from .registry import get_registry

        available = get_registry().techniques
        chosen = DEFAULT_DECODER_STEPS if task == "text-generation" else DEFAULT_STEPS
        steps = [copy.deepcopy(step) for step in chosen if next(iter(step)) in available]
        return cls.from_dict({"model": model, "data": "vader:movie", "steps": steps})

    # -- serialization ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out = self.model_dump(mode="json", exclude={"steps"}, exclude_none=True)
        out["steps"] = [s.to_yaml_obj() for s in self.steps]
        order = ["model", "revision", "task", "data", "steps", "evaluate", "gate", "search", "push", "seed", "device",
                 "provenance"]
        return {k: out[k] for k in order if k in out}

    def dump(self, path: str | Path | None = None) -> str:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)
        if path is not None:
            Path(path).write_text(text)
        return text


__all__ = ["TASKS", "GateConfig", "PushConfig", "Recipe", "SearchConfig", "Step"]
