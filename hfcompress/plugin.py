"""The public plugin API: everything a technique, evaluator or data-source plugin needs.

Built-in plugins (``plugins/``) import only from here, which proves this surface is enough
for third-party authors. Nothing here imports torch or transformers at import time, so that
``hfcompress plugins`` and ``hfcompress --help`` stay fast; plugins follow the same rule and
import heavy libraries inside their methods.

Stability: names exported in ``__all__`` follow semantic versioning from 1.0; before that,
breaking changes are announced in the changelog.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict

from .errors import BadInputError, GateFailedError, HfCompressError
from .hookspecs import hookimpl

if TYPE_CHECKING:  # pragma: no cover
    import datasets
    from accelerate import Accelerator

    from .artifact import find_onnx_file, load_state, onnx_file_for, save_state
    from .cache import cache_dir
    from .data import load_spec
    from .evaluation import collect_outputs, load_metric
    from .generation import (
        continuations,
        decode_speed,
        decode_speeds,
        greedy_agreement,
        pad_id,
        perplexity,
        prompt_ids,
    )
    from .model_io import (
        fixed_threads,
        forward,
        mean_pool,
        model_device,
        reduce_output,
        sentence_embeddings,
        tokenize,
    )
    from .models import AUTO_CLASSES, load_config, load_model, load_tokenizer, num_parameters, resolve_model
    from .sentence_pipeline import is_sentence_transformers

# Helpers a plugin legitimately needs, by the module that defines them. They are resolved on first
# use (PEP 562 ``__getattr__`` below): those modules import this one for its types, and several
# import torch lazily, so importing them here would both loop and slow down `hfcompress plugins`.
HELPERS = {
    "tokenize": "model_io", "forward": "model_io", "reduce_output": "model_io", "mean_pool": "model_io",
    "model_device": "model_io", "fixed_threads": "model_io", "sentence_embeddings": "model_io",
    "load_tokenizer": "models", "load_model": "models", "load_config": "models", "resolve_model": "models",
    "num_parameters": "models", "AUTO_CLASSES": "models",
    "save_state": "artifact", "load_state": "artifact", "find_onnx_file": "artifact", "onnx_file_for": "artifact",
    "collect_outputs": "evaluation", "load_metric": "evaluation", "load_spec": "data",
    "cache_dir": "cache", "is_sentence_transformers": "sentence_pipeline",
    # causal LMs: greedy generation measured the same way everywhere (hfcompress.generation)
    "prompt_ids": "generation", "pad_id": "generation", "continuations": "generation",
    "greedy_agreement": "generation", "decode_speed": "generation", "decode_speeds": "generation",
    "perplexity": "generation",
}


def __getattr__(name: str) -> Any:
    if name in HELPERS:
        import importlib

        return getattr(importlib.import_module(f"{__package__}.{HELPERS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AUTO_CLASSES",
    "TASKS",
    "BadInputError",
    "DataSource",
    "EvalContext",
    "EvalSettings",
    "Evaluator",
    "GateFailedError",
    "HfCompressError",
    "Metric",
    "ModelState",
    "ModelTarget",
    "StepContext",
    "StepResult",
    "Technique",
    "TechniqueConfig",
    "cache_dir",
    "collect_outputs",
    "continuations",
    "decode_speed",
    "decode_speeds",
    "find_onnx_file",
    "fixed_threads",
    "forward",
    "greedy_agreement",
    "hookimpl",
    "is_sentence_transformers",
    "load_config",
    "load_metric",
    "load_model",
    "load_spec",
    "load_state",
    "load_tokenizer",
    "mean_pool",
    "model_device",
    "num_parameters",
    "onnx_file_for",
    "pad_id",
    "perplexity",
    "prompt_ids",
    "reduce_output",
    "resolve_model",
    "save_state",
    "sentence_embeddings",
    "tokenize",
]

TASKS: tuple[str, ...] = ("feature-extraction", "text-classification", "text-generation")


class TechniqueConfig(BaseModel):
    """Base for technique configs: typed, validated, and a misspelled field is an error."""

    model_config = ConfigDict(extra="forbid", frozen=False, validate_assignment=True)


ConfigT = TypeVar("ConfigT", bound=TechniqueConfig)


@dataclass
class ModelTarget:
    """What ``check`` sees: the model's config and task, before any weights are loaded."""

    config: Any  # transformers.PretrainedConfig
    task: str
    format: str = "pytorch"
    has_labels: bool = False
    has_data: bool = False

    @property
    def model_type(self) -> str:
        return str(getattr(self.config, "model_type", "unknown"))

    @property
    def architecture(self) -> str:
        archs = getattr(self.config, "architectures", None) or [self.model_type]
        return str(archs[0])


@dataclass
class ModelState:
    """The current model as it flows through the pipeline.

    ``model`` is called like a transformers model (``model(input_ids=..., attention_mask=...)``)
    and returns an object with ``last_hidden_state`` (feature-extraction) or ``logits``; an ONNX
    model is wrapped to behave the same way. ``format`` only moves forward (pytorch first).

    ``saver`` writes the weights/config/modeling files into a folder (``None``: transformers
    ``save_pretrained``); ``loader`` names the technique whose ``load_artifact`` restores it
    (``None``: the transformers Auto class). ``info`` is recorded under ``"hfcompress"`` in
    ``config.json`` (for example which heads were pruned).
    """

    model: Any
    tokenizer: Any
    task: str
    format: str = "pytorch"
    saver: Callable[[ModelState, Path], None] | None = None
    loader: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def config(self) -> Any:
        return getattr(self.model, "config", None)


@dataclass
class StepContext:
    """What a technique's ``apply`` gets besides the model and its config."""

    teacher: Callable[[], ModelState]
    """Loads a fresh copy of the original (uncompressed) model: the default teacher."""
    train_data: datasets.Dataset | None
    """Training/calibration split (column ``text``, and ``label`` when labelled); never evaluation data."""
    accelerator: Accelerator
    seed: int
    work_dir: Path
    """Scratch space for this step (checkpoints, exports); never pushed."""

    @property
    def device(self) -> Any:
        return self.accelerator.device


@dataclass
class StepResult:
    """What ``apply`` returns: the next state and a JSON-able report of what changed."""

    state: ModelState
    changes: dict[str, Any] = field(default_factory=dict)


class Technique(Generic[ConfigT]):
    """A compression technique. Subclass, set ``name``/``summary``/``Config``, implement ``apply``.

    ``check`` must reject an incompatible model or config *before* any work, raising
    :class:`BadInputError` with a message that says what is supported.
    """

    name: ClassVar[str]
    summary: ClassVar[str] = ""
    Config: ClassVar[type[TechniqueConfig]] = TechniqueConfig
    accepts_formats: ClassVar[tuple[str, ...]] = ("pytorch",)
    produces_formats: ClassVar[tuple[str, ...]] = ("pytorch",)
    """Every format ``output_format`` can return, whatever the config (shown by ``hfcompress plugins``)."""

    def output_format(self, config: ConfigT) -> str:
        """The format ``apply`` produces for ``config``, one of ``produces_formats``; ``"pytorch"`` unless overridden."""
        return "pytorch"

    def data_requirement(self, config: ConfigT) -> Literal["none", "text", "labels"]:
        """Whether ``apply`` needs training/calibration data (and labels)."""
        return "none"

    def check(self, config: ConfigT, target: ModelTarget) -> None:
        """Raise :class:`BadInputError` when this model/config cannot work. Default: accept."""

    def apply(self, state: ModelState, config: ConfigT, ctx: StepContext) -> StepResult:
        raise NotImplementedError

    @classmethod
    def load_artifact(cls, path: Path, info: dict[str, Any]) -> ModelState:
        """Restore a saved output folder whose ``config.json`` names this technique as loader."""
        raise NotImplementedError(f"technique {cls.name!r} does not define load_artifact")

    @classmethod
    def usage_snippet(cls, path: Path, info: dict[str, Any], where: str) -> str | None:
        """Python code the card shows for a folder this technique saved (``config.json`` names it as
        loader): how to run it with its runtime's own library. ``where`` is a Python expression for
        the local folder (``"./out"``, or ``snapshot_download("org/name")`` for a Hub repo, imported
        by the card). ``None``: the card's snippets for standard formats."""
        return None


class EvalSettings(BaseModel):
    """How evaluation runs; identical for base and compressed models."""

    model_config = ConfigDict(extra="forbid")

    batch_size: int = 8
    sequence_length: int = 128
    threads: int = 1
    warmup: int = 2
    repeats: int = 10
    max_samples: int = 512
    evaluators: list[str] | None = None
    """Evaluator names to run (default: every registered evaluator that applies)."""
    metrics: list[str] = []
    """Extra `evaluate` metric names or local paths, for users online or with local modules."""


@dataclass
class EvalContext:
    """What an evaluator gets: the model, the held-out data, settings, and the base's run."""

    state: ModelState
    data: datasets.Dataset | None
    settings: EvalSettings
    artifact_dir: Path | None = None
    """The saved folder (for sizes on disk); None for the in-memory base model."""
    reference: EvalContext | None = None
    """The base model's context when evaluating the compressed model, else None."""
    cache: dict[str, Any] = field(default_factory=dict)
    """Shared between evaluators of one model: computed outputs, so the model runs once."""

    @property
    def is_base(self) -> bool:
        return self.reference is None


@dataclass(frozen=True)
class Metric:
    """What an evaluator declares about one value it returns.

    The card, the quality gate, ``--max-drop`` and the plot take a metric's label and direction
    from here, and a recipe's ``gate`` may only name declared metrics (checked before any work).

    ``higher_is_better``: the direction of quality (False for error rates, latency, sizes, KL).
    ``unit``: printed after the label, e.g. ``"ms"``. ``setting``: a condition of the measurement
    (batch size, threads, samples evaluated), not a result: results.json keeps it in the block's
    ``settings``, never in ``metrics``, and the card lists it under the evaluation settings.
    ``perfect``: the value the base model gets against itself, for metrics that compare with the
    base by construction (fidelity: 1.0 for cosine, 0.0 for KL); the gate's ``max_drop`` measures
    from it, since such a metric has no base value.
    ``role``: ``"quality"`` for the model's own task quality (accuracy, perplexity): listed first on
    the card, and the first declared one that both models have is the plot's quality axis;
    ``"fidelity"`` for the headline agreement with the base, the plot's axis when no quality metric
    was measured.
    """

    name: str
    label: str = ""
    higher_is_better: bool = True
    unit: str = ""
    setting: bool = False
    perfect: float | None = None
    role: Literal["", "quality", "fidelity"] = ""

    @property
    def title(self) -> str:
        """The label with its unit, as the card prints it: ``Latency, median (ms)``."""
        text = self.label or self.name
        return f"{text} ({self.unit})" if self.unit else text


class Evaluator:
    """Measures one aspect of a model. Return ``{metric_name: value}``; empty when not applicable.

    Declare every name ``evaluate`` can return in ``metrics`` (a returned name that is not declared
    is logged as a warning, and counts as higher-is-better); override ``declared_metrics`` when
    the names depend on the settings.
    """

    name: ClassVar[str]
    summary: ClassVar[str] = ""
    metrics: ClassVar[tuple[Metric, ...]] = ()

    def declared_metrics(self, settings: EvalSettings) -> tuple[Metric, ...]:
        """Everything ``evaluate`` may return under ``settings``. Default: ``metrics``."""
        return self.metrics

    def applies_to(self, ctx: EvalContext) -> bool:
        return True

    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        raise NotImplementedError


class DataSource:
    """A built-in data source addressed as ``<name>:<subset>`` in a data spec."""

    name: ClassVar[str]
    summary: ClassVar[str] = ""
    subsets: ClassVar[tuple[str, ...]] = ()
    description: ClassVar[str] = ""
    """What the data is, in a phrase the evaluation card prints after the data spec (with citation)."""
    license: ClassVar[str] = ""
    """The data's licence (an SPDX id such as ``MIT`` when there is one), printed on the card."""

    def load(self, subset: str) -> datasets.Dataset:
        """Return a dataset with a ``text`` column (and ``label`` when labelled)."""
        raise NotImplementedError
