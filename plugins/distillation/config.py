"""The recipe side of distillation: its typed config and the decisions made from config alone.

Everything here runs before any weights load (``Distillation.check``) and again in the trainer,
so check() and apply() cannot disagree about defaults, modes or layer maps.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hfcompress.plugin import BadInputError, TechniqueConfig

__all__ = [
    "DistillationConfig",
    "LossConfig",
    "StudentConfig",
    "check_layer_map",
    "default_layer_map",
    "default_losses",
    "num_heads",
    "num_layers",
    "resolve_losses",
    "resolve_mode",
]


class LossConfig(BaseModel):
    """Loss weights (0 switches a loss off) and their settings."""

    model_config = ConfigDict(extra="forbid")

    kl: float = Field(0.0, ge=0.0)
    """KL(teacher || student) on temperature-softened logits, scaled by T^2 (classifiers, causal LMs)."""
    ce: float = Field(0.0, ge=0.0)
    """Cross-entropy on the data's labels (classifiers) or next-token cross-entropy (causal LMs)."""
    hidden_mse: float = Field(0.0, ge=0.0)
    """MSE between mapped hidden states (a learned projection when widths differ)."""
    attention: float = Field(0.0, ge=0.0)
    """KL between attention distributions of mapped layers (MiniLM-style); needs equal head counts."""
    cosine: float = Field(0.0, ge=0.0)
    """1 - cosine between mean-pooled last hidden states (sentence encoders)."""
    relational: float = Field(0.0, ge=0.0)
    """Sentence encoders: KL(teacher || student) between each sentence's softmax over its cosine
    similarities to the other sentences of the batch (at ``relational_temperature``): the in-batch
    neighbourhood structure, which the per-sentence cosine loss does not constrain."""
    relational_temperature: float = Field(0.05, gt=0.0, le=10.0)
    temperature: float = Field(2.0, gt=0.0, le=100.0)
    layer_map: dict[int, int] | None = None
    """Student layer -> teacher layer (0-based) for hidden_mse/attention. Default: identity when the
    layer counts match, else uniform (student layer i -> teacher layer round((i+1)*Lt/Ls)-1)."""

    def active(self) -> dict[str, float]:
        return {k: w for k in ("kl", "ce", "hidden_mse", "attention", "cosine", "relational")
                if (w := getattr(self, k)) > 0}

    @model_validator(mode="after")
    def _some_loss(self) -> LossConfig:
        if not self.active():
            raise ValueError("losses: every weight is 0; give at least one of kl, ce, hidden_mse, attention, cosine, "
                             "relational > 0")
        return self


class StudentConfig(BaseModel):
    """How to build the student instead of taking the current pipeline model. Give exactly one field."""

    model_config = ConfigDict(extra="forbid")

    layers: list[int] | None = Field(None, min_length=1)
    """Copy the teacher and keep these layers (0-based, in this order)."""
    model: str | None = None
    """A model id, local folder or builtin: alias (same tokenizer as the teacher)."""
    config: dict[str, Any] | None = None
    """Overrides applied to the teacher's config; the student is randomly initialised from it."""

    @model_validator(mode="after")
    def _exactly_one(self) -> StudentConfig:
        given = [k for k in ("layers", "model", "config") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"student: give exactly one of layers, model, config (got {given or 'none'})")
        return self


class DistillationConfig(TechniqueConfig):
    teacher: str | None = None
    """Teacher model id/folder; default: the original model of the pipeline."""
    student: StudentConfig | None = None
    """Default: the current pipeline model (for example after pruning)."""
    mode: Literal["auto", "task-agnostic", "task-specific"] = "auto"
    """task-agnostic: text only; task-specific: needs labels; auto: task-specific when labels exist."""
    losses: LossConfig | None = None
    """Default depends on the task (see the module docstring)."""
    max_steps: int | None = Field(None, gt=0)
    """Optimizer steps; default 200 when neither max_steps nor epochs is given."""
    epochs: float | None = Field(None, gt=0)
    batch_size: int = Field(16, gt=0, le=4096)
    """Per process and per micro-step; the global batch is batch_size * processes * accumulation."""
    sequence_length: int = Field(128, gt=1, le=32768)
    gradient_accumulation_steps: int = Field(1, gt=0, le=1024)
    learning_rate: float = Field(1e-4, gt=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0, lt=1.0)
    lr_scheduler: Literal[
        "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup", "inverse_sqrt"
    ] = "linear"
    warmup_ratio: float = Field(0.1, ge=0.0, lt=1.0)
    max_grad_norm: float | None = Field(1.0, gt=0.0)
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    """auto: bf16 on CUDA with bf16 support and on XLA, else fp32; fp16 needs an fp16 Accelerator."""
    seed: int | None = None
    """Default: the pipeline seed."""
    checkpoint_every: int = Field(50, ge=0)
    """Save a checkpoint every N optimizer steps into the step's work folder (0: never)."""
    keep_checkpoints: int = Field(2, gt=0)
    resume: bool = True
    """Resume from the last matching checkpoint in the work folder."""
    dropout: bool = True
    """Keep the student's dropout active while training. Forced off when the attention loss is on:
    dropout zeroes attention probabilities, which would make the attention KL meaningless."""
    log_every: int = Field(10, gt=0)
    progress_bar: bool = True

    @model_validator(mode="after")
    def _default_length(self) -> DistillationConfig:
        if self.max_steps is None and self.epochs is None:
            # validate_assignment would re-run this validator; set the raw attribute instead
            object.__setattr__(self, "max_steps", 200)
        return self


# ---------------------------------------------------------------------------------------------
# Config-level decisions shared by check() and apply()


def num_layers(config: Any) -> int:
    """The transformer block count of a transformers config, whatever the architecture calls it."""
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    raise BadInputError(f"distillation: cannot tell the layer count of {type(config).__name__}")


def num_heads(config: Any) -> int | None:
    value = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", None)
    return int(value) if value else None


def resolve_mode(config: DistillationConfig, task: str, has_labels: bool) -> str:
    if config.mode != "auto":
        return config.mode
    return "task-specific" if has_labels and task == "text-classification" else "task-agnostic"


def default_losses(task: str, mode: str) -> LossConfig:
    """Per-task defaults: what a user without a data scientist would want."""
    if task == "feature-extraction":
        return LossConfig.model_validate({"cosine": 1.0, "hidden_mse": 1.0})
    if task == "text-classification":
        return LossConfig.model_validate({"kl": 1.0, "ce": 1.0 if mode == "task-specific" else 0.0})
    return LossConfig.model_validate({"kl": 1.0})


def resolve_losses(config: DistillationConfig, task: str, mode: str) -> LossConfig:
    return config.losses if config.losses is not None else default_losses(task, mode)


def default_layer_map(student_layers: int, teacher_layers: int) -> dict[int, int]:
    """Identity for equal depth, else uniform: every student layer imitates the end of its block,
    so the last student layer always maps to the last teacher layer (DistilBERT/TinyBERT style)."""
    if student_layers == teacher_layers:
        return {i: i for i in range(student_layers)}
    return {i: max(0, round((i + 1) * teacher_layers / student_layers) - 1) for i in range(student_layers)}


def check_layer_map(layer_map: dict[int, int], n_student: int, n_teacher: int, arch: str) -> None:
    for s, t in layer_map.items():
        if not 0 <= s < n_student:
            raise BadInputError(
                f"distillation losses.layer_map: student layer {s} is out of range for the student "
                f"({arch}) with {n_student} layers; use 0..{n_student - 1}"
            )
        if not 0 <= t < n_teacher:
            raise BadInputError(
                f"distillation losses.layer_map: teacher layer {t} is out of range for the teacher "
                f"({arch}) with {n_teacher} layers; use 0..{n_teacher - 1}"
            )
